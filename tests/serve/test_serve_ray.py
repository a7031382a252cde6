"""``deltapatch serve --ray``: a replica answers as the library does, batches requests of any
patches together, and follows the --patches folder (added and removed patches); on a local Ray
instance (127.0.0.1 only) 2 Ray Serve replicas answer over HTTP, and a patch folder added after
the start reaches every replica."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import png, save_patch
from safetensors.torch import save_file

import deltapatch as dp
from deltapatch.serve.batcher import Job
from deltapatch.serve.inputs import Limits, image_tensor
from deltapatch.serve.on_ray import PatchReplica, replica_placement
from deltapatch.serve.readout import Ask


@pytest.fixture
def weights(tmp_path, backbone) -> str:
    """The fixture backbone as a weights file: every replica process loads the same one."""
    path = tmp_path / "r20.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    return str(path)


def _library(weights: str, patches: Path, names) -> dp.PatchedModel:
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights)).eval()
    for n in names:
        model.load_patch(patches / n)
    return model


def test_a_replica_batches_any_patches_and_follows_the_folder(weights, backbone, patch_dir,
                                                              tmp_path):
    replica = PatchReplica("cifar_resnet20", weights, str(patch_dir), sync_s=3600)
    assert [i.name for i in replica.patchset.infos()] == ["a", "b"]
    lib = _library(weights, patch_dir, ["a", "b"])
    pre = lib.preprocess
    images = torch.stack([image_tensor(png(s), pre, Limits()) for s in range(3)])
    jobs = [Job(images[0], ("a",), False, (Ask(5, 2, logits=True),), pre),
            Job(images[1], ("b",), False, (Ask(3, 2, logits=True),), pre),
            Job(images[2], ("__base__",), False, (Ask(10, 2, logits=True),), pre)]
    x = pre.normalize(images)
    answers = asyncio.run(replica.predict_rows(jobs))  # one batch, three tasks
    assert replica.batches == [3]
    with torch.inference_mode():
        expect = [lib(x[0:1], patch="a")[0], lib(x[1:2], patch="b")[0], backbone.eval()(x[2:3])[0]]
    for answer, job, want in zip(answers, jobs, expect, strict=True):
        got = answer[job.names[0]]
        torch.testing.assert_close(torch.tensor(got.logits), want, rtol=1e-4, atol=1e-5)
        assert got.indices == want.topk(2).indices.tolist()

    save_patch(backbone, tmp_path / "staging", "c", 4, 1)
    shutil.move(tmp_path / "staging" / "c", patch_dir / "c")  # as the docs say: mv it in
    shutil.rmtree(patch_dir / "a")
    assert replica.sync() == (["c"], ["a"])
    assert [i.name for i in replica.patchset.infos()] == ["b", "c"]
    assert "a" not in replica.model.patches


def test_replicas_ask_ray_for_gpus_only_on_a_cuda_device():
    assert replica_placement(torch.device("cpu")) == ("cpu", {"num_cpus": 1})  # as before
    assert replica_placement(torch.device("cuda", 1), 0.25) == (
        "cuda", {"num_cpus": 1, "num_gpus": 0.25})  # Ray picks the GPU; "cuda" is it there


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'deltapatch[ray]')")
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ray_serve_replicas_answer_and_share_new_patches(weights, backbone, patch_dir,
                                                             tmp_path, monkeypatch):
    from ray import serve
    from ray._private import ray_constants

    import deltapatch
    from deltapatch.serve import on_ray

    src = str(Path(deltapatch.__file__).resolve().parents[1])
    monkeypatch.setenv(LOOPBACK_ONLY, "0")  # Ray swaps 127.0.0.1 for the machine's address
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # unless this is off
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}})
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        on_ray.run("cifar_resnet20", weights, patch_dir, replicas=2, host="127.0.0.1",
                   port=port, max_batch=8, max_wait_ms=5, blocking=False)
        lib = _library(weights, patch_dir, ["a", "b"])
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").json() == {"status": "ok"}
            for seed, name in enumerate(["a", "b", "__base__", "a"]):
                got = client.post("/v1/predict", json={
                    "image": base64.b64encode(png(seed)).decode(), "patch": name, "top_k": 1})
                assert got.status_code == 200, got.text
                x = lib.preprocess.normalize(image_tensor(png(seed), lib.preprocess, Limits())[None])
                with torch.inference_mode():
                    want = int((lib(x, patch=name) if name != "__base__" else lib(x)).argmax())
                assert got.json()["top_k"][0]["index"] == want

            save_patch(backbone, tmp_path / "staging", "c", 4, 1)
            shutil.move(tmp_path / "staging" / "c", patch_dir / "c")
            time.sleep(2.5 * on_ray.SYNC_S)
            codes = [client.post("/v1/predict", json={
                "image": base64.b64encode(png(9)).decode(), "patch": "c"}).status_code
                for _ in range(8)]  # spread over both replicas by Serve
            assert codes == [200] * 8
            replicas = serve.status().applications["deltapatch"].deployments
            assert replicas["DeltaPatchServe"].replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
