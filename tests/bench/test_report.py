"""Report pieces on hand-made records: cells, claims, Λ matrices, joint concatenation."""

from __future__ import annotations

import torch

from deltapatch.bench.claims import NOT_MEASURED, claims_section, delta_vs_paint, zero_base_drop
from deltapatch.bench.plots import lambda_matrix
from deltapatch.bench.report import TABLES, mean_std, pivot
from deltapatch.bench.scenarios import concat_tasks
from deltapatch.data.sets import ImageSet, TaskData


def _rec(variant, method, seed, hm, base=0.8, task="mnist", table="single", **m):
    return {"key": f"{table}/{variant}/{seed}", "scenario": "single", "table": table,
            "backbone": "r20", "task": task, "variant": variant, "label": variant,
            "seed": seed, "status": "ok", "method": {"name": method, **m},
            "result": {"harmonic_mean": hm, "base_top1": base, "patch_top1": hm,
                       "trainable_params": 1000, "n_test": 1000, "n_base_test": 1000,
                       "wall_seconds": 1.0}}


def test_mean_std_and_pivot():
    assert mean_std([0.5, 0.7]) == "60.00 ± 14.14 (n=2)"
    recs = [_rec("d1", "delta", s, 0.5 + s / 10, gate="delta", stages=1) for s in range(2)]
    recs.append({**_rec("paint", "paint", 0, 0), "status": "skipped", "result": {}})
    header, body = pivot(recs, TABLES[0])
    assert header[-1] == "mnist"
    assert body[0][-1] == "55.00 ± 7.07 (n=2)"
    assert body[1][-1].startswith("not run")


def test_claims_only_from_runs():
    recs = [_rec("d1", "delta", 0, 0.7, gate="delta", stages=1),
            _rec("fc", "linear", 0, 0.6)]
    assert delta_vs_paint(recs) == NOT_MEASURED
    recs.append(_rec("paint", "paint", 0, 0.3, base=0.5))
    assert "1/1" in delta_vs_paint(recs) and delta_vs_paint(recs).startswith("\n  - **holds**")
    assert "**supported**" in zero_base_drop(recs)
    recs.append(_rec("d3", "delta", 0, 0.7, base=0.79, gate="delta", stages=3))
    assert "not supported" in zero_base_drop(recs)
    assert "not yet measured" in claims_section([])


def _seeds(values, base=0.8):
    """A cell's runs, one per seed, patch top-1 as given, 1,000 test images each."""
    return {s: {"patch_top1": v, "n_test": 1000, "base_top1": base, "n_base_test": 1000,
                "harmonic_mean": 2 * v * base / (v + base)} for s, v in enumerate(values)}


def test_the_verdict_is_the_paired_interval_not_the_count_of_cells():
    from deltapatch.bench.claims import compare
    a = {("r20", t): _seeds(v) for t, v in [("x", [0.62, 0.70, 0.54]), ("y", [0.61, 0.69, 0.55])]}
    b = {("r20", t): _seeds([0.60, 0.60, 0.60]) for t in ("x", "y")}
    text = compare(a, b, "A", "B", "top1")
    assert "A > B on patch top-1 in 2/2" in text  # every cell goes A's way ...
    assert text.startswith("**within noise** (A − B +1.8 [")  # ... and the seeds cannot tell
    far = {("r20", t): _seeds([0.70, 0.71, 0.72]) for t in ("x", "y")}
    assert compare(far, b, "A", "B", "top1").startswith("**holds** (A − B +11.0 [")
    assert compare(b, far, "A", "B", "top1").startswith("**reversed**")


def test_a_claim_without_image_counts_says_it_has_no_interval():
    from deltapatch.bench.claims import compare
    a = {("r20", "x"): {0: {"patch_top1": 0.7}}}
    b = {("r20", "x"): {0: {"patch_top1": 0.5}}}
    assert compare(a, b, "A", "B", "top1").startswith("**no interval**")


def test_forgetting_counts_only_tasks_patched_before_another():
    from deltapatch.bench.claims import no_forgetting
    r = _rec("d1", "delta", 0, None, table="sequential", gate="delta", stages=1)
    r["result"] = {"order": ["a", "b", "c"], "drop_by_task": {"a": 0.0, "b": 0.01, "c": 0.0}}
    assert "over 2 (task, run) pairs" in no_forgetting([r])
    assert "1.0000 points" in no_forgetting([r]) and "not supported" in no_forgetting([r])


def test_lambda_matrix_layout():
    # k=2: skips h0→h1, h0→h2, h1→h2 at positions 0, 1, 2
    m = lambda_matrix([0.1, 0.2, 0.3])
    assert m[0][1] == 0.1 and m[0][2] == 0.2 and m[1][2] == 0.3 and m[1][0] is None


def test_concat_tasks_offsets_labels():
    def task(name, c):
        s = ImageSet(torch.zeros(c, 3, 4, 4, dtype=torch.uint8), torch.arange(c))
        return TaskData(name, s, s, s, [str(i) for i in range(c)], hflip=False)
    joint = concat_tasks([task("a", 2), task("b", 3)], "joint")
    assert joint.num_classes == 5 and joint.train.labels.tolist() == [0, 1, 2, 3, 4]
    assert joint.info["offsets"] == [0, 2] and not joint.hflip


def test_stale_run_dirs_are_wiped(tmp_path):
    from deltapatch.bench.runner import _fresh_dir
    from deltapatch.runinputs import DATA_PROTOCOL
    old = tmp_path / "run"
    (old / "run").mkdir(parents=True)
    (old / "run" / "checkpoint.pt").write_text("from another data protocol")
    assert not (_fresh_dir(old) / "run").exists()  # no marker: wiped
    (old / "run").mkdir()
    assert (_fresh_dir(old) / "run").exists()  # same protocol: kept, training resumes
    assert (old / "data_protocol.txt").read_text().strip() == str(DATA_PROTOCOL)
    assert (_fresh_dir(old, "abc") / "run").exists() is False  # other settings: wiped
    (old / "run").mkdir()
    assert (_fresh_dir(old, "abc") / "run").exists()


def test_depth_claim_compares_the_deepest_patch_with_delta1_in_every_cell():
    from deltapatch.bench.claims import depth_order
    recs = [_rec("d1", "delta", 0, 0.70, gate="delta", stages=1),
            _rec("d2", "delta", 0, 0.72, gate="delta", stages=2),
            _rec("d3", "delta", 0, 0.50, gate="delta", stages=3)]
    text = depth_order(recs)
    assert "d3 > d1 on harmonic mean in 0/1" in text  # not adjacent: still compared
    assert "d2 > d1" in text and "d3 > d2" in text


def test_zsda_claim_is_the_fine_tuned_network_with_and_without_delta():
    from deltapatch.bench.claims import CLAIMS

    def zsda(variant, method, target, stages):
        r = _rec(variant, method, 0, None, table="zsda", stages=stages)
        r["result"]["top1_by_test"] = {"target": target}
        return r
    recs = [zsda("ft", "full", 0.40, 0), zsda("ft-d3", "full", 0.45, 3),
            zsda("fc", "linear", 0.30, 0), zsda("d3", "delta", 0.10, 3)]
    check = dict(CLAIMS)[next(c for c, _ in CLAIMS if c.startswith("Δ helps zero-shot"))]
    assert "ft-d3 > ft on target-domain top-1 in 1/1" in check(recs)
    assert "d3" not in check(recs).replace("ft-d3", "")  # patches are judged apart


def test_guarantees_are_reported_apart_from_claims():
    recs = [_rec("d1", "delta", 0, 0.7, gate="delta", stages=1), _rec("fc", "linear", 0, 0.6)]
    text = claims_section(recs)
    claims, guarantees = text.split("### Guarantees")
    assert "base task is untouched" in guarantees and "base task is untouched" not in claims
    assert "Zero drop" not in claims


def test_lr_section_lists_each_search_and_left_out_scenarios_say_why():
    from deltapatch.bench.report import lr_section, not_run_section
    r = _rec("d1", "delta", 0, 0.7, gate="delta", stages=1)
    assert lr_section([r]) is None
    r["result"]["lr_search"] = {"grid": [1e-3, 1e-2], "chosen": 1e-2,
                                "val_score": {"0.001": 0.5, "0.01": 0.625}}
    assert ("| single | r20 | mnist | d1 | 0.01 (highest in grid) | 0.001: 50.0 · 0.01: 62.5 |"
            in lr_section([r]))
    assert "1 of 1 cells kept the lowest or highest rate" in lr_section([r])
    text = not_run_section([], [], [{"kind": "joint", "skip": "not rerun yet (time)",
                                     "backbones": ["r20"], "groups": [["a", "b"]]}])
    assert "**joint** (joint; r20; a+b): left out of this run — not rerun yet (time)" in text


def test_grid_edge_names_only_the_ends_of_a_real_grid():
    from deltapatch.bench.report import grid_edge
    grid = [1e-3, 3e-3, 1e-2]
    assert grid_edge(1e-3, grid) == "lowest in grid"
    assert grid_edge(1e-2, grid) == "highest in grid"
    assert grid_edge(3e-3, grid) == ""
    assert grid_edge(1e-2, [1e-2]) == ""  # one rate: nothing was searched
