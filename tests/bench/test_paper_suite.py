"""The paper suite parses, names only known things, expands to the paper's grid, and a slice of
it runs with random weights and fake data (its real inputs need a GPU, ImageNet and six data
sets, see the suite file)."""

from __future__ import annotations

import numpy as np

from deltapatch.bench.runner import build_jobs, run_jobs
from deltapatch.bench.suite import load_suite


def _fake_npz(path, classes: int, n: int = 12, size: int = 32) -> str:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    np.savez(path, x_train=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), y_test=y)
    return str(path)


def test_paper_suite_grid():
    suite = load_suite("paper")
    jobs = build_jobs(suite)
    single = [j for j in jobs if j.table == "single"]
    assert len(single) == 8 * 6 * 4 * 3  # backbones x tasks x (PAINT, Δ1, Δ2, Δ4) x seeds
    assert {j.backbone for j in jobs} >= {"resnet18", "resnet101", "convnext_large"}
    assert {j.scenario for j in jobs} == {"single", "joint", "sequential"}
    assert suite.defaults["epochs"] == 50 and suite.defaults["image_size"] == 224


def test_paper_suite_slice_runs_with_random_weights_and_fake_data(tmp_path):
    suite = load_suite("paper")
    base = _fake_npz(tmp_path / "base.npz", classes=10)
    for key, task in suite.tasks.items():
        task.data = _fake_npz(tmp_path / f"{key}.npz", classes=3)
    for bb in suite.backbones.values():
        bb.weights, bb.base_data = None, base
    suite.defaults.update(epochs=1, batch_size=6, image_size=32, lambda_images=4,
                          max_test=6, val_fraction=0.25)
    jobs = [j for j in build_jobs(suite, seeds=1) if j.table == "single" and j.task == "gtsrb"
            and j.variant == "delta1" and j.backbone in ("resnet18", "convnext_tiny")]
    assert len(jobs) == 2
    records = run_jobs(jobs, tmp_path / "out", progress=False)
    for r in records:
        assert r["status"] == "ok", r.get("reason")
        assert set(r["result"]["lambda_mean"])  # Λ recorded for the patched stage
        assert r["result"]["base_top1"] is not None
