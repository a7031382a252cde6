"""Every script in benchmarks/ still imports against the package (a moved module must not
silently break a measurement script that no test runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # scripts import their shared _common
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # defines functions; main() runs only as __main__
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in {"deltapatch", "_common"}:
            raise
        pytest.skip(f"{script.name} needs the optional package {err.name}")
    finally:
        sys.modules.pop(spec.name, None)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def _script(name: str, monkeypatch):
    """A benchmarks/ script loaded as a module (its main() does not run)."""
    monkeypatch.syspath_prepend(str(BENCH))  # scripts import their shared _common
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_queue_model_follows_the_batcher(monkeypatch):
    """The simulated batcher: a lone request waits max_wait then is served alone; a burst leaves
    as soon as max_batch requests are queued; later ones wait for the running batch."""
    qm = _script("queue_model", monkeypatch)
    lone = qm.simulate(rate=1e-3, c=0.01, s=0.001, max_batch=4, max_wait=0.005, n=5, seed=0)
    assert lone == pytest.approx([0.016] * 5)
    burst = qm.simulate(rate=1e6, c=0.01, s=0.001, max_batch=4, max_wait=0.005, n=8, seed=0)
    assert burst[:4] == pytest.approx([0.014] * 4, abs=1e-4)  # full at once: no wait, 4 rows
    assert burst[4:] == pytest.approx([0.028] * 4, abs=1e-4)  # queued behind the first batch


def test_lr_edge_probe_writes_a_loadable_one_rate_suite(monkeypatch, tmp_path):
    """The probe's suite is the shipped one cut to the chosen cells, at one rate and seed 0, so
    its records are comparable with the suite's own (same defaults, tasks and variants)."""
    from deltapatch.bench.suite import load_suite
    probe = _script("lr_edge_probe", monkeypatch)
    path = tmp_path / "probe.toml"
    path.write_text(probe.probe_suite("cpu", ["resnet20"], ["dtd10"], ["linear", "delta1"], 0.1))
    suite, shipped = load_suite(str(path)), load_suite("cpu")
    assert suite.defaults["lr_grid"] == [0.1] and shipped.defaults["lr_grid"] != [0.1]
    assert suite.seeds == 1
    assert [s["variants"] for s in suite.scenarios] == [["linear", "delta1"]]
    assert suite.tasks["dtd10"] == shipped.tasks["dtd10"]
    assert {k: v for k, v in suite.defaults.items() if k != "lr_grid"} == \
        {k: v for k, v in shipped.defaults.items() if k != "lr_grid"}


def test_protocol4_suite_is_the_shipped_one_with_lr_extend_and_its_seeds(monkeypatch, tmp_path):
    from deltapatch.bench.runner import build_jobs
    from deltapatch.bench.suite import load_suite
    probe = _script("lr_edge_probe", monkeypatch)
    path = tmp_path / "p4.toml"
    path.write_text(probe.derived_suite("cpu", "cpu-p4", ["resnet20"], ["gtsrb"], ["delta1"],
                                        {"lr_extend": "3"}, seeds=3))
    suite, shipped = load_suite(str(path)), load_suite("cpu")
    assert suite.defaults == {**shipped.defaults, "lr_extend": 3} and suite.seeds == 3
    jobs = build_jobs(suite)
    assert [j.key for j in jobs] == [f"single/resnet20/gtsrb/delta1/seed{s}" for s in range(3)]
    assert {j.lr_extend for j in jobs} == {3}


def test_protocol4_edges_only_reruns_the_edge_cells_and_nothing_else(monkeypatch, tmp_path):
    """A scenario is a product: the edge cells of several tasks need one scenario each, or the
    interior cells between them would be retrained for nothing; every kind with a grid of its
    own (joint, ZSDA, transfer) and every backbone asked for takes part, a shared cell once."""
    import json

    from deltapatch.bench.runner import build_jobs
    from deltapatch.bench.suite import load_suite
    p4 = _script("protocol4", monkeypatch)

    def rec(cell, chosen):
        return {"key": f"{cell}/seed0", "status": "ok", "label": cell, "seed": 0, "result": {
            "lr_search": {"chosen": chosen, "val_score": {"0.001": 0.1, "0.01": 0.2,
                                                           "0.03": 0.3}}}}
    edge_cells = ["single/resnet20/gtsrb/delta1", "single/resnet20/dtd10/delta2",
                  "single/resnet20/dtd10/fixed", "single/resnet56/dtd10/delta1",
                  "joint/resnet20/mnist+gtsrb+dtd10/delta1", "zsda/resnet20/mnist-usps/linear",
                  "transfer/resnet20/gtsrb/ft-plain"]
    records = tmp_path / "results.json"
    records.write_text(json.dumps({"runs": [
        *(rec(c, 0.03 if i % 2 else 0.001) for i, c in enumerate(edge_cells)),
        rec("single/resnet20/gtsrb/delta2", 0.01), rec("single/resnet20/dtd10/delta3", 0.01)]}))
    edges = p4.edge_keys(records)
    assert edges == set(edge_cells)
    variants = ["linear", "delta1", "delta2", "delta3", "fixed", "ft-plain"]
    path = tmp_path / "p4.toml"

    def keys(backbones, tasks):
        path.write_text(p4.edge_suite("cpu", "cpu-p4", edges, backbones, tasks, variants,
                                      {"lr_extend": "3"}, seeds=1))
        return sorted(j.key.removesuffix("/seed0") for j in build_jobs(load_suite(str(path))))
    assert keys(["resnet20", "resnet56"], ["mnist", "gtsrb", "dtd10", "usps"]) == \
        sorted(edge_cells)
    assert keys(["resnet20"], ["gtsrb", "dtd10"]) == [
        "single/resnet20/dtd10/delta2", "single/resnet20/dtd10/fixed",
        "single/resnet20/gtsrb/delta1", "transfer/resnet20/gtsrb/ft-plain"]
    assert load_suite(str(path)).defaults["lr_extend"] == 3


@pytest.mark.parametrize("suite", ["cpu", "imagenet"])
def test_frontier_suite_reuses_the_published_cells_it_shares(suite, monkeypatch, tmp_path):
    """The frontier's suite is the shipped one plus more sizes: a published seed-0 cell keeps
    its fingerprint there, so bench reuses its record instead of training it again."""
    import json

    from deltapatch.bench.runner import build_jobs
    from deltapatch.bench.suite import load_suite
    front = _script("frontier", monkeypatch)
    probe = _script("lr_edge_probe", monkeypatch)
    extra, variants = front.plan(suite)
    path = tmp_path / "f.toml"
    path.write_text(probe.derived_suite(suite, "f", [front.SUITES[suite]["backbone"]], ["dtd10"],
                                        variants, {}, seeds=1, extra=extra))
    jobs = build_jobs(load_suite(str(path)))
    assert len(jobs) == len(variants) and {j.seed for j in jobs} == {0}
    published = BENCH.parent / "docs" / "results" / suite / "runs"
    shared = [(j, published / f"{j.key}.json") for j in jobs if (published / f"{j.key}.json").exists()]
    assert len(shared) >= 6
    assert all(json.loads(f.read_text())["config"] == j.config for j, f in shared)


def test_frontier_shard_reaches_bench_unchanged(monkeypatch, tmp_path):
    """--shard reaches bench unchanged (bench splits the cells); without it every cell runs."""
    front = _script("frontier", monkeypatch)
    calls = []
    monkeypatch.setattr(front, "run_bench", lambda toml, out, threads, *flags: calls.append(flags))
    monkeypatch.setattr(front, "report", lambda *a: ([], []))
    for shard in (["--shard", "1/2"], []):
        monkeypatch.setattr("sys.argv", ["frontier.py", "--suite", "cpu", "--tasks", "dtd10",
                                         "--out", str(tmp_path / "o"), "--report",
                                         str(tmp_path / "r"), *shard])
        front.main()
    assert calls == [("--shard", "1/2"), ()]


def test_frontier_protocol4_records_replace_their_cells_and_a_turned_verdict_is_said(
        monkeypatch, tmp_path):
    """A protocol-4 seed-0 record replaces the same cell's point (other cells and seeds are
    left alone); the verdict protocol 3 alone gave is compared, so a rerun that pushed Δ off
    (or onto) the frontier is said, with the old statement."""
    import json
    front = _script("frontier", monkeypatch)

    def rec(variant, params, hm, delta, seed=0):
        return {"key": f"single/bb/t/{variant}/seed{seed}", "status": "ok", "scenario": "single",
                "task": "t", "seed": seed, "variant": variant, "label": variant,
                "method": {"name": "delta" if delta else "linear"},
                "result": {"trainable_params": params, "harmonic_mean": hm}}
    runs = [rec("fc", 10, 0.5, False), rec("d1", 20, 0.6, True)]
    later = tmp_path / "p4.json"
    later.write_text(json.dumps({"runs": [rec("fc", 10, 0.7, False), rec("x", 5, 0.1, False),
                                          rec("d1", 20, 0.9, True, seed=1)]}))
    assert [r["result"]["harmonic_mean"] for r in front.swap(runs, [later])] == [0.7, 0.6]
    lines = front.recheck(runs, [later], ["t"])
    assert lines[0].endswith("(HM moves +20.0 to +20.0)") and lines[0].startswith("1 points")
    assert lines[1] == ("t: VERDICT CHANGED, protocol 3 alone said: t: Δ **on the frontier**: "
                        "d1 (0.0k, 60.0) (compared with: fc)")
    later.write_text(json.dumps({"runs": [rec("fc", 10, 0.55, False)]}))
    assert front.recheck(runs, [later], ["t"])[1] == "t: protocol 3 alone gives the same verdict"
    assert front.protocol_note(runs, [], ["t"]) == []


def test_frontier_note_names_the_points_still_at_an_edge(monkeypatch, tmp_path):
    """After protocol 4 the note counts the drawn points whose rate is still the highest or
    lowest tried: a rerun that stopped at its extension limit is named, not hidden."""
    import json
    front = _script("frontier", monkeypatch)

    def rec(variant, scores, chosen):
        return {"key": f"single/bb/t/{variant}/seed0", "status": "ok", "scenario": "single",
                "task": "t", "seed": 0, "variant": variant, "label": variant,
                "method": {"name": "delta"},
                "result": {"trainable_params": 10, "harmonic_mean": 0.5,
                           "lr_search": {"chosen": chosen, "val_score": scores}}}
    edge = rec("d1", {"0.01": 0.4, "0.03": 0.5}, 0.03)
    later = tmp_path / "p4.json"
    later.write_text(json.dumps({"runs": [
        rec("d1", {"0.01": 0.4, "0.03": 0.5, "0.1": 0.6, "0.3": 0.7}, 0.3)]}))
    inner = rec("d2", {"0.01": 0.4, "0.03": 0.6, "0.1": 0.5}, 0.03)
    note = front.protocol_note([edge, inner], [later], ["t"])[0]
    assert note.endswith("still the highest or lowest of the rates tried: 1 of 2 (single/bb/t/d1).")
    later.write_text(json.dumps({"runs": [
        rec("d1", {"0.01": 0.4, "0.03": 0.5, "0.1": 0.6}, 0.03)]}))
    assert front.protocol_note([edge, inner], [later], ["t"])[0].endswith(": 0 of 2.")


def test_protocol4_cost_prices_edge_cells_only(monkeypatch):
    times = _script("suite_times", monkeypatch)

    def rec(chosen, seed=0):
        grid = {"0.001": 0.1, "0.01": 0.2, "0.03": 0.3}
        return {"seed": seed, "result": {"wall_seconds": 10.0, "lr_search": (
            {"wall_seconds": 30.0, "chosen": chosen, "val_score": grid} if seed == 0 else {})}}
    done = {"a/seed0": rec(0.03), "a/seed1": rec(0.03, 1), "a/seed2": rec(0.03, 2),
            "b/seed0": rec(0.01)}
    assert times.protocol4_cost(done, extend=3) == (10.0, 10.0 * (3 + 2), 1)


def test_grid_edges_finds_the_edge_among_the_rates_tried(monkeypatch, tmp_path):
    import json
    edges = _script("grid_edges", monkeypatch)
    runs = [{"key": f"single/bb/t/{v}/seed0", "label": v, "status": "ok", "result": {
        "lr_search": {"grid": [0.001, 0.03], "chosen": c, "val_score": s}}}
        for v, c, s in [("top", 0.03, {"0.001": 0.1, "0.03": 0.2}),
                        ("moved", 0.03, {"0.001": 0.1, "0.03": 0.3, "0.1": 0.2})]]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    lines = edges.report(path)
    assert any(line.startswith("single/bb/t/top | top | 0.03 | highest") for line in lines)
    assert any(line.startswith("single/bb/t/moved | moved | 0.03 | interior") for line in lines)
    assert lines[-1].startswith("summary: 1 of 2 cells on a grid edge")


def test_suite_times_counts_every_rate_a_tuned_cell_trained(monkeypatch):
    times = _script("suite_times", monkeypatch)
    tuned = {"lr_search": {"wall_seconds": 400.0, "val_score": {"0.001": 0.5, "0.01": 0.6}},
             "wall_seconds": 150.0}
    assert times.per_run_seconds(tuned) == (200.0, 2)
    assert times.per_run_seconds({"lr_search": {"chosen": 0.01}, "wall_seconds": 90.0}) == (90.0, 1)
    assert times.cell("single/lite0/usps/paint/seed2") == "single/lite0/usps/paint"


def test_gpu_bench_reads_serve_load_and_judges_each_goal(monkeypatch):
    """gpu_check.sh's summary: req/s and open-loop p99/p50 read off serve_load's output, each
    ratio judged against its goal in the right direction."""
    gpu = _script("gpu_bench", monkeypatch)
    text = ("| 1 | uniform over 1 | 40 (40) | 20.0 | 201 | 232 | 4.0 | 815 | 865 |\n"
            "#   open loop at 0.7 ... p50 128 ms, p99 329 ms, p99/p50 2.58; codes {200: 31}\n"
            "| 128 | uniform over 128 | 36 (36) | 19.0 | 222 | 246 | 4.0 | 817 | 886 |\n"
            "#   open loop at 0.7 ... p50 117 ms, p99 176 ms, p99/p50 1.50; codes {200: 29}\n")
    got = gpu.parse_load(text, ["1", "128"])
    assert got["server_128_vs_1_throughput"] == 0.95
    assert got["server_p99_over_p50_at_70pct"] == 1.5
    assert gpu.verdict("server_p99_over_p50_at_70pct", 1.5).endswith("met)")
    assert "NOT met" in gpu.verdict("mixed64_vs_base", 1.31)
    assert gpu.verdict("delta_cache_vs_lora", None) == "not measured"


def test_dense_claim_pairs_seeds_from_the_records_and_says_when_it_cannot(monkeypatch, tmp_path):
    claims = _script("claim_intervals", monkeypatch)
    pytest.importorskip("scipy")

    def record(variant: str, seed: int, box_map: float) -> None:
        path = tmp_path / "efficientnet_lite0" / "detection" / variant / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{{"seed": {seed}, "box_map": {box_map}}}')

    record("heads", 0, 0.40)
    record("delta_all", 0, 0.45)
    assert "fewer than two paired seeds" in claims.dense_line(tmp_path)
    record("heads", 1, 0.42)
    record("delta_all", 1, 0.46)
    record("heads", 2, 0.41)
    record("delta_all", 2, 0.47)  # differences 5, 4, 6 points: mean 5, sd 1
    assert "+5.0 [+2.5, +7.5] points, holds" in claims.dense_line(tmp_path)
    record("delta_all", 2, 0.31)  # 5, 4, −10: the interval now spans zero
    assert "within noise" in claims.dense_line(tmp_path)


def test_dense_publish_copies_records_only_where_the_report_reads_them(monkeypatch, tmp_path):
    dense = _script("dense_table7", monkeypatch)
    out = tmp_path / "out"
    rec = dense.record_path(out, "cifar_resnet20", "detection", "heads", 0)
    rec.parent.mkdir(parents=True)
    rec.write_text("{}")
    patch = out / "patches" / "cifar_resnet20" / "detection" / "heads" / "seed0" / "p.safetensors"
    patch.parent.mkdir(parents=True)
    patch.write_bytes(b"x")
    assert dense.publish(out, tmp_path / "docs") == 1
    assert dense.record_path(tmp_path / "docs", "cifar_resnet20", "detection", "heads", 0).exists()
    assert not (tmp_path / "docs" / "patches").exists()


def test_dense_run_times_come_from_the_records_and_end_only_where_every_one_is_stamped(
        monkeypatch, tmp_path):
    import json
    dense = _script("dense_table7", monkeypatch)
    for variant, seed, extra in (("heads", 0, {}), ("delta_all", 0, {}),
                                 ("heads", 1, {"finished": "2026-12-06 21:30:00"}),
                                 ("delta_all", 1, {"finished": "2026-12-06 21:40:00"})):
        rec = dense.record_path(tmp_path, "cifar_resnet20", "detection", variant, seed)
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.write_text(json.dumps({"seed": seed, "wall_seconds": 90, **extra}))
    assert dense.run_times(tmp_path) == (
        "Run time (sum of the records' wall_seconds): cifar_resnet20 seed 0: 2 runs, 3 min; "
        "cifar_resnet20 seed 1: 2 runs, 3 min, last finished 2026-12-06 21:40:00 UTC.")


def test_a_claim_named_for_one_backbone_pairs_only_its_cells(monkeypatch):
    claims = _script("claim_intervals", monkeypatch)

    def run(acc: float) -> dict:
        return {0: {"label": "x", "result": {"patch_top1": acc, "n_test": 100}}}

    records = {("single", v): {(bb, "gtsrb"): run(acc) for bb, acc in (("resnet20", 0.5),
                                                                        ("resnet56", 0.6))}
               for v in ("delta1", "linear")}
    pooled = claims.Claim("cpu", "single", "delta1", "linear", "top1")
    only56 = claims.Claim("cpu", "single", "delta1", "linear", "top1", "resnet56")
    assert sorted(claims.cells(pooled, records)) == [("resnet20", "gtsrb"), ("resnet56", "gtsrb")]
    assert list(claims.cells(only56, records)) == [("resnet56", "gtsrb")]
    assert "cpu ResNet-56 · single" in claims.title(only56, records)
    assert claims.title(pooled, records).startswith("cpu · single")


def test_protocol4_rerun_noise_counts_only_cells_that_kept_their_rate(monkeypatch):
    p4 = _script("protocol4", monkeypatch)

    def cell(rate, scores):
        return {"search": {"chosen": rate}, "score": dict(enumerate(scores))}
    before = {"kept": cell(0.03, [50.0, 60.0]), "moved": cell(0.03, [40.0, 40.0])}
    after = {"kept": cell(0.03, [50.5, 63.0]), "moved": cell(0.1, [90.0, 90.0])}
    assert "at most 1 point in 1 of 2 runs, +0.5 to +3.0" in p4.rerun_noise(before, after)
    assert p4.rerun_noise(before, {"moved": after["moved"]}).startswith("No cell")


def test_protocol4_rerun_noise_counts_same_machine_reruns_apart(monkeypatch):
    p4 = _script("protocol4", monkeypatch)

    def cell(scores, machines):
        return {"search": {"chosen": 0.03}, "score": dict(enumerate(scores)),
                "machine": dict(enumerate(machines))}
    before = {"c": cell([50.0, 60.0, 70.0], ["amd", "intel", "intel"])}
    after = {"c": cell([52.0, 60.0, 70.5], ["intel", "intel", "intel"])}
    text = p4.rerun_noise(before, after)
    assert "another machine, the per-seed test score moved by at most 1 point in 0 of 1 runs, " \
           "+2.0 to +2.0" in text
    assert "same machine kind, 1 of 2 runs gave the same score (+0.0 to +0.5)" in text


def test_protocol4_sequential_borrows_protocol4_rates_first_and_protocol3_elsewhere(monkeypatch,
                                                                                   tmp_path):
    """Sequential patching trains each task at its single-task cell's rate: the rerun must read
    the protocol-4 record where protocol 4 reran that cell and the protocol-3 one where it did
    not (an interior cell), and say which cell has neither instead of training at no rate."""
    import json

    from deltapatch.bench.runner import build_jobs
    from deltapatch.bench.suite import load_suite
    p4 = _script("protocol4", monkeypatch)
    path = tmp_path / "seq.toml"
    path.write_text(p4.sequential_suite("cpu", "cpu-p4", ["resnet20"], ["mnist", "gtsrb", "dtd10"],
                                        ["delta1", "paint", "fixed"], {"lr_extend": "3"}, 2))
    jobs = build_jobs(load_suite(str(path)))
    assert sorted(j.key for j in jobs) == [f"sequential/resnet20/mnist-gtsrb-dtd10/{v}/seed{s}"
                                           for v in ("delta1", "paint") for s in (0, 1)]
    p3_dir, p4_dir, out = tmp_path / "p3", tmp_path / "p4", tmp_path / "out"

    def put(folder, key, rate):
        f = folder / "runs" / f"{key}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"key": key, "rate": rate}))
    cells = [f"single/resnet20/{t}/{v}/seed0" for v in ("delta1", "paint")
             for t in ("mnist", "gtsrb", "dtd10")]
    for key in cells:
        put(p3_dir, key, 0.03)
    put(p4_dir, cells[0], 0.1)
    assert p4.borrow(jobs, out, [p4_dir, p3_dir]) == []
    got = {k: json.loads((out / "runs" / f"{k}.json").read_text())["rate"] for k in cells}
    assert got == {**{k: 0.03 for k in cells}, cells[0]: 0.1}
    (p3_dir / "runs" / f"{cells[-1]}.json").unlink()
    assert p4.borrow(jobs, tmp_path / "out2", [p4_dir, p3_dir]) == [cells[-1]]
    assert "0.1/0.03/0.03 (borrowed)" in "\n".join(p4.compare({}, {"seq": {
        "label": "Δ(1)", "metric": "mean top-1", "score": {0: 50.0},
        "search": {"chosen": [0.1, 0.03, 0.03], "from": cells[:3]}}}))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_protocol4_summary_keeps_the_seed0_search_whatever_the_record_order(order, monkeypatch):
    """Seeds 1-2 record the rate they borrowed from seed 0 (``from``); only seed 0's search says
    which rates were added and whether the choice is interior."""
    p4 = _script("protocol4", monkeypatch)
    tuned = {"grid": [0.01, 0.03], "chosen": 0.1, "extended": [0.1, 0.3], "interior": True,
             "val_score": {"0.01": 0.1, "0.03": 0.2, "0.1": 0.3, "0.3": 0.2}}
    borrowed = {"grid": [0.01, 0.03], "chosen": 0.1, "from": ["single/r/t/v/seed0"]}
    recs = [{"scenario": "single", "label": "v", "seed": s,
             "result": {"harmonic_mean": 0.5, "lr_search": tuned if s == 0 else borrowed}}
            for s in order]
    got = p4.summary({f"single/r/t/v/seed{r['seed']}": r for r in recs})
    assert got["single/r/t/v"]["search"] is tuned
    assert "0.1 (0.1, 0.3; yes)" in "\n".join(p4.compare({}, got))


def test_protocol4_forgetting_reports_each_cells_largest_drop_over_seeds(monkeypatch):
    p4 = _script("protocol4", monkeypatch)

    def rec(variant, seed, drops):
        return (f"sequential/r/a-b/{variant}/seed{seed}",
                {"scenario": "sequential", "label": variant, "result": {"drop_by_task": drops}})
    runs = dict([rec("paint", 0, {"a": 0.05, "b": 0.0}), rec("paint", 1, {"a": 0.199, "b": 0.0}),
                 rec("delta1", 0, {"a": 0.0, "b": 0.0}),
                 ("single/r/a/delta1/seed0", {"scenario": "single", "label": "x", "result": {}})])
    assert p4.forgetting(runs) == "delta1 0.0; paint 19.9"


def test_embed_table_copies_only_the_named_table_into_its_block(monkeypatch, tmp_path):
    et = _script("embed_table", monkeypatch)
    report = ("### A\n\nCells: text.\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\nafter\n"
              "### B\n\n| z |\n|---|\n| 3 |\n")
    assert et.table(report, "A") == "| x | y |\n|---|---|\n| 1 | 2 |"
    assert et.table(report, "B") == "| z |\n|---|\n| 3 |"
    with pytest.raises(SystemExit, match="no '### C'"):
        et.table(report, "C")
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- t:begin -->\nold\n<!-- t:end -->\nafter\n")
    monkeypatch.setattr("sys.argv", ["embed_table", str(tmp_path / "r.md"), "B", "--block", "t",
                                     "--write", str(doc)])
    (tmp_path / "r.md").write_text(report)
    et.main()
    assert doc.read_text() == "before\n<!-- t:begin -->\n| z |\n|---|\n| 3 |\n<!-- t:end -->\nafter\n"


def test_a_plus_b_claim_folder_takes_the_cells_b_reran_from_b(monkeypatch, tmp_path):
    import json
    claims = _script("claim_intervals", monkeypatch)

    def rec(task: str, variant: str, seed: int, hm: float) -> dict:
        return {"status": "ok", "scenario": "single", "backbone": "lite0", "task": task,
                "variant": variant, "seed": seed, "result": {"harmonic_mean": hm}}
    for name, runs_ in (("s", [rec("a", "v", 0, 0.5), rec("b", "v", 0, 0.6),
                              rec("a", "w", 0, 0.1)]),
                        ("s-p4", [rec("a", "v", 0, 0.9), rec("a", "v", 1, 0.8)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": runs_}))
    monkeypatch.setattr(claims, "DOCS", tmp_path)
    merged = claims.runs("s+s-p4")
    hm = {cell: {s: r["result"]["harmonic_mean"] for s, r in seeds.items()}
          for cell, seeds in merged[("single", "v")].items()}
    assert hm == {("lite0", "a"): {0: 0.9, 1: 0.8}, ("lite0", "b"): {0: 0.6}}
    assert merged[("single", "w")][("lite0", "a")][0]["result"]["harmonic_mean"] == 0.1
    assert claims.runs("s")[("single", "v")][("lite0", "a")][0]["result"]["harmonic_mean"] == 0.5
