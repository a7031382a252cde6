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
                       "trainable_params": 1000, "n_test": 10, "wall_seconds": 1.0}}


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
    assert "1/1" in delta_vs_paint(recs) and "**supported**" in delta_vs_paint(recs)
    assert "**supported**" in zero_base_drop(recs)
    recs.append(_rec("d3", "delta", 0, 0.7, base=0.79, gate="delta", stages=3))
    assert "not supported" in zero_base_drop(recs)
    assert "not yet measured" in claims_section([])


def test_claim_within_seed_noise_is_inconclusive():
    from deltapatch.bench.claims import compare
    clear = {("r20", "t"): (0.80, 0.01, 3)}
    close = {("r20", "t"): (0.79, 0.02, 3)}
    far = {("r20", "t"): (0.60, 0.01, 3)}
    assert compare(clear, far, "A", "B", "hm").startswith("**supported**")
    assert compare(clear, close, "A", "B", "hm").startswith(
        "**inconclusive** (within seed noise; direction: supported)")
    assert compare(far, clear, "A", "B", "hm").startswith("**not supported**")


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
    from deltapatch.run import DATA_PROTOCOL
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
