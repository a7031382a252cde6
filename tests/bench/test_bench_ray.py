"""``deltapatch bench --ray``: on a local 2-CPU Ray instance (127.0.0.1 only) a tiny tuned
suite finishes with the records that ``--shard 0/2`` + ``--shard 1/2`` write (later seeds take
the rate their tuning run chose, pending for a round when they ran first), and the run whose
worker died (a backbone factory that kills its process once) is retried by Ray, not failed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'deltapatch[ray]')")

from deltapatch.bench.publish import BenchRequest, run_suite  # noqa: E402

FACTORY = '''
import os
from pathlib import Path

def build():
    """cifar_resnet20, random init; the first call anywhere kills its process."""
    import deltapatch as dp
    mark = Path(__file__).with_suffix(".died")
    if not mark.exists():
        mark.write_text(str(os.getpid()))
        os._exit(1)
    return dp.load_backbone("cifar_resnet20")
'''

SUITE = '''
name = "ray-tiny"
description = "two tuned cells, two seeds: checks the Ray scheduling only"
seeds = 2

[defaults]
epochs = 1
batch_size = 32
lr = 3e-3
warmup_epochs = 0.0
augment = false
max_train = 96
max_test = 48
image_size = 16
lr_grid = [1e-3, 1e-2]

[backbones.r20]
name = "{factory}:build"
weights = ""

[tasks.digits]
data = "digits"

[variants.linear]
method = "linear"
stages = 0

[variants.delta1]
method = "delta"
stages = 1

[[scenarios]]
kind = "single"
table = "single"
backbones = ["r20"]
tasks = ["digits"]
variants = ["linear", "delta1"]
'''

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DETERMINISTIC = ("patch_top1", "val_top1", "best_epoch", "trainable_params", "patch_bytes",
                 "n_test", "lr", "stages")


@pytest.fixture(scope="module")
def local_ray():
    """2 CPUs on 127.0.0.1; workers import this checkout's deltapatch."""
    import deltapatch

    src = str(Path(deltapatch.__file__).resolve().parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Ray swaps 127.0.0.1 for the machine's address unless "clusters" are off: keep it local
    from ray._private import ray_constants

    old, old_flag = os.environ.get(LOOPBACK_ONLY), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ONLY] = "0"  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one (read at ray's import)
    try:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
                 log_to_driver=False)
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old is None:
            os.environ.pop(LOOPBACK_ONLY)
        else:
            os.environ[LOOPBACK_ONLY] = old


def _records(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((out / "results.json").read_text())["runs"]}


def _essence(record: dict) -> dict:
    result = record.get("result", {})
    search = result.get("lr_search", {})
    return {"status": record["status"], "config": record["config"],
            **{k: result.get(k) for k in DETERMINISTIC},
            "chosen": search.get("chosen"), "val_score": search.get("val_score")}


def test_ray_grid_equals_shard_runs_and_survives_a_dead_worker(local_ray, tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(factory=factory))
    t0 = time.monotonic()
    summary = run_suite(BenchRequest(suite=str(suite), out=tmp_path / "ray", ray="local",
                                     progress=False))
    assert summary["runs"] == {"ok": 4, "skipped": 0, "failed": 0, "pending": 0}, summary
    assert (tmp_path / "factory.died").exists()  # a worker did die, and its run was retried
    took = time.monotonic() - t0

    torch.set_num_threads(1)  # as the Ray workers (OMP_NUM_THREADS=1): same arithmetic
    for i in range(2):
        run_suite(BenchRequest(suite=str(suite), out=tmp_path / "shards", shard=(i, 2),
                               progress=False))
    by_ray, by_shards = _records(tmp_path / "ray"), _records(tmp_path / "shards")
    assert by_ray.keys() == by_shards.keys() and len(by_ray) == 4
    for key in by_ray:
        assert _essence(by_ray[key]) == _essence(by_shards[key]), key
    assert {k for k, r in by_ray.items() if "lr_search" in r["result"]
            and r["result"]["lr_search"].get("from")} == {k for k in by_ray if k.endswith("seed1")}

    # a second invocation finds every record and submits nothing
    again = run_suite(BenchRequest(suite=str(suite), out=tmp_path / "ray", ray="local",
                                   progress=False))
    assert again["runs"]["ok"] == 4
    assert _records(tmp_path / "ray") == by_ray
    print(f"ray grid: {took:.1f} s")


def test_ray_and_shard_are_exclusive(capsys):
    from helpers import refused

    refused(capsys, ["bench", "--suite", "smoke", "--out", "x", "--ray", "--shard", "0/2"],
            "--ray and --shard")
