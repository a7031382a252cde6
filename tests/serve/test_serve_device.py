"""The server on a device: the batcher's forward keeps every tensor on the model's device (fake
CUDA tensors from ``FakeTensorMode`` play the GPU: a tensor made on the CPU inside the path meets
them in an op and raises), answers are read out together, ``serve --device`` that is not there
is refused before a port is bound, and, on a real GPU (``-m cuda``), base answers are
``backbone(x)`` per image bit for bit."""

from __future__ import annotations

import asyncio
import base64

import pytest
import torch
from conftest import png, run_async
from helpers import fake_on, random_backbone, refused
from torch._subclasses.fake_tensor import FakeTensorMode

import deltapatch as dp
from deltapatch.serve import batcher as batcher_module
from deltapatch.serve import staging
from deltapatch.serve.batcher import Batcher, Job
from deltapatch.serve.inputs import Limits, image_tensor
from deltapatch.serve.metrics import ServeMetrics
from deltapatch.serve.patchset import PatchSet
from deltapatch.serve.readout import Answer, Ask, pack, read_out

TASKS = {"delta": 5, "two": 7, "head": 3, dp.BASE: 10}


def _model() -> dp.PatchedModel:
    model = dp.PatchedModel(random_backbone())
    model.add_patch("delta", num_classes=5, stages=1)
    model.add_patch("two", num_classes=7, stages=2, init="base")
    model.add_patch("head", num_classes=3, stages=0)
    return model.eval()


def _jobs() -> list[Job]:
    """Host images asking for routed rows of three patches, base rows and fan-outs. Every
    routed task has two rows or more: under ``inference_mode`` FakeTensorMode folds a
    one-element host tensor (one row's index) to a constant and runs its real copy to cuda,
    which needs a driver: a limit of the fake harness, not of the model."""
    names = [("delta",), (dp.BASE,), ("head",), ("two",), (dp.BASE,), ("delta",), ("head",),
             ("two",), ("two", dp.BASE, "head"), ("delta", "head"), ("delta", "head")]
    g = torch.Generator().manual_seed(0)
    return [Job(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g), n,
                len(n) > 1, tuple(Ask(TASKS[t], 3, logits=True) for t in n),
                dp.Preprocess(32)) for n in names]


def _run_on_fake_cuda(monkeypatch, jobs: list[Job], exact_base: bool = True) -> list:
    """``Batcher._run`` of ``jobs`` (host images) with the model on fake cuda."""
    model = _model()
    # FakeTensorMode has no pinning kernel; pinning changes where host memory lives, not devices
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake_on(model, mode, "cuda")
        batcher = Batcher(model, ServeMetrics(), max_batch=len(jobs), exact_base=exact_base)
        return batcher._run(jobs)


@pytest.mark.parametrize("exact_base", [True, False])
def test_the_batchers_forward_runs_on_cuda_with_one_readout(monkeypatch, exact_base):
    jobs, read = _jobs(), []

    def record(rows):  # what the batch hands to the read-out: rows and their packing
        read.append((rows, pack(rows)))
        return [Answer([0.0], [0], None)] * len(rows)

    monkeypatch.setattr(batcher_module, "read_out", record)
    results = _run_on_fake_cuda(monkeypatch, jobs, exact_base)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [list(r) for r in results] == [list(j.names) for j in jobs]
    (rows, packed), = read  # one read-out for the whole batch
    assert len(rows) == sum(len(j.names) for j in jobs)
    assert {t.device.type for t, _ in rows} == {"cuda"}
    assert packed.data.device.type == "cuda" and packed.data.dim() == 1  # one tensor to copy


def test_a_batch_left_on_the_host_fails_there(monkeypatch):
    """The check above has teeth: without the copy to the device every group fails."""
    monkeypatch.setattr(staging, "to_device", lambda x, device: x)
    results = _run_on_fake_cuda(monkeypatch, _jobs()[:4])
    assert all(isinstance(r, Exception) and "device" in str(r).lower() for r in results)


def test_a_read_out_equals_each_rows_own_softmax_and_top_k():
    """Rows read out together answer as each row alone (``deltapatch predict``), bit for bit."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 10, generator=g) * 4
    logits[:, 7:] = float("-inf")  # narrower heads padded in a routed batch
    asks = [Ask(7, 3), Ask(7, 3, logits=True), Ask(10, 20), Ask(7, 3), Ask(4, 1), Ask(7, 9)]
    logits[2] = torch.randn(10, generator=g)
    answers = read_out(list(zip(logits, asks, strict=True)))
    for row, ask, got in zip(logits, asks, answers, strict=True):
        want = row[:ask.num_classes]
        top = want[None].softmax(1)[0].topk(ask.k)
        assert got.scores == top.values.tolist() and got.indices == top.indices.tolist()
        assert got.logits == (want.tolist() if ask.logits else None)
    assert read_out([]) == []


def test_serve_on_a_device_that_is_not_there_is_one_line_exit_2(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is there")
    (tmp_path / "patches").mkdir()
    refused(capsys, ["serve", "--backbone", "cifar_resnet20", "--patches", tmp_path / "patches",
                     "--device", "cuda"], "device 'cuda' is not there")
    refused(capsys, ["serve", "--backbone", "cifar_resnet20", "--patches", tmp_path / "patches",
                     "--device", "tpu"], "not understood")


@pytest.mark.cuda
def test_base_answers_on_a_gpu_are_the_backbone_per_image():
    """Served on CUDA, base requests that share batches are each answered with ``backbone(x)``
    of their image alone, bit for bit. (Whether *batched* base rows are exact on a GPU is a
    measurement, not a promise: ``benchmarks/serve_load.py --device cuda --check-base 64``.)"""
    model = dp.PatchedModel(random_backbone().cuda()).eval()
    images = [png(seed) for seed in range(16)]

    async def go(client, app):
        rs = await asyncio.gather(*(client.post("/v1/predict", json={
            "image": base64.b64encode(im).decode(), "top_k": 10, "return_logits": True})
            for im in images))
        return [r.json() for r in rs], list(app.state.batcher.recent)

    answers, batches = run_async(PatchSet(model), go, max_batch=16, max_wait_ms=200)
    assert max(len(b) for b in batches) > 1  # they did share batches
    with torch.inference_mode():
        for image, answer in zip(images, answers, strict=True):
            x = model.preprocess.normalize(image_tensor(image, model.preprocess, Limits())[None])
            x = x.cuda()
            assert torch.equal(torch.tensor(answer["logits"]), model.backbone(x)[0].cpu())
