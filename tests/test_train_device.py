"""Training on a device: the input path, precision, the device-resident sums and cache, and the
CLI's --device / --precision. CI has no GPU: device-generic checks run on the meta device and
with FakeTensorMode's fake CUDA tensors (a tensor made on the wrong device meets them in an op
and raises); the tests marked ``cuda`` run the real path where there is a GPU."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import fake_on, random_backbone, refused
from test_model import _tiny_task

import deltapatch as dp
from deltapatch.data.augment import draw_crops, random_crop_flip
from deltapatch.train import Local, TrainConfig, fit_patch

FAST = ["--backbone", "cifar_resnet20", "--image-size", "16", "--epochs", "1",
        "--batch-size", "16", "--no-progress", "--max-train", "120", "--max-test", "20"]


def _loop_crop_flip(x, generator, hflip=True, pad_fraction=0.125):
    """The per-image loop that augmentation was before it was vectorized (kept as the
    reference: published runs drew and cropped exactly this way)."""
    n, _, h, w = x.shape
    pad = max(1, int(round(h * pad_fraction)))
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist() if hflip else [False] * n
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


@pytest.mark.parametrize("side,hflip", [(8, True), (16, False), (32, True), (37, True)])
def test_vectorized_augmentation_equals_the_per_image_loop_bit_for_bit(side, hflip):
    g = torch.Generator().manual_seed(side)
    x = torch.randint(0, 256, (33, 3, side, side), dtype=torch.uint8, generator=g)
    for seed in range(3):
        old = _loop_crop_flip(x, torch.Generator().manual_seed(seed), hflip)
        new = random_crop_flip(x, torch.Generator().manual_seed(seed), hflip)
        assert torch.equal(old, new)
    floats = x.float() / 255  # float batches too (the generator advances the same way)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(_loop_crop_flip(floats, g1, hflip), random_crop_flip(floats, g2, hflip))
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_a_rank_applying_its_rows_draws_equals_slicing_the_whole_batch():
    from deltapatch.data.augment import apply_crops

    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    crops = draw_crops(10, 16, torch.Generator().manual_seed(1))
    mine = torch.arange(10) % 3 == 1
    assert torch.equal(apply_crops(x, crops)[mine], apply_crops(x[mine], crops.rows(mine)))


def test_precision_is_a_resume_setting_only_when_it_is_not_fp32():
    assert "precision" not in TrainConfig().settings()  # old checkpoints stay resumable
    assert TrainConfig(precision="bf16").settings()["precision"] == "bf16"
    with pytest.raises(ValueError):
        TrainConfig(precision="fp8")


def test_bf16_trains_on_the_cpu_and_leaves_the_base_task_bit_identical(tmp_path):
    backbone = random_backbone().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)
    model = dp.PatchedModel(backbone)
    model.add_patch("t", num_classes=3, stages=1)
    start = {k: v.clone() for k, v in model.get_patch("t").state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=8, precision="bf16", progress=False)
    result = fit_patch(model, "t", _tiny_task(3), config, run_dir=tmp_path / "run")
    assert result.history and all(torch.isfinite(torch.tensor(r["train_loss"]))
                                  for r in result.history)
    after = model.get_patch("t").state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start)  # it trained
    with torch.no_grad():
        assert torch.equal(model(x), before)
        assert torch.equal(backbone(x), before)


def test_fp16_trains_through_the_grad_scaler_and_resumes(tmp_path):
    model = dp.PatchedModel(random_backbone())
    model.add_patch("t", num_classes=3, stages=0)
    config = TrainConfig(epochs=1, batch_size=8, precision="fp16", progress=False,
                         augment=False)
    fit_patch(model, "t", _tiny_task(3), config, run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "scaler" in state and state["settings"]["precision"] == "fp16"
    longer = TrainConfig(epochs=2, batch_size=8, precision="fp16", progress=False, augment=False)
    with pytest.raises(dp.DeltaPatchError, match="epochs"):  # settings still guard the folder
        fit_patch(model, "t", _tiny_task(3), longer, run_dir=tmp_path / "run")


def _step_on(device: str, model: dp.PatchedModel, augment: bool, backward: bool = True):
    """One step of fit's loop (Local.step, then backward and the optimizer's step) with the
    model on ``device`` and the batch on the host, as fit runs it."""
    patch = model.get_patch("t")
    loop = Local(8)
    step = loop.prepare(patch, lambda x: model(x, patch="t"), 0)
    assert loop.device.type == torch.device(device).type
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    crops = draw_crops(8, 32, torch.Generator().manual_seed(0)) if augment else None
    loss, summed, right, n = loop.step(step, patch.config.preprocess, (x, torch.arange(8) % 3,
                                                                       crops))
    for t in (loss, summed, right):
        assert t.device.type == torch.device(device).type
    if not backward:
        return n
    loss.backward()
    opt = torch.optim.AdamW([p for p in patch.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    return n


def test_a_training_step_runs_on_the_meta_device():
    model = dp.PatchedModel(random_backbone())
    model.add_patch("t", num_classes=3, stages=1)
    model.to("meta")
    model.train()
    assert _step_on("meta", model, augment=True) == 8


def test_a_training_step_with_fake_cuda_tensors_makes_nothing_on_the_host(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from deltapatch import devices

    # fake tensors cannot be pinned: copy without pinning (the device rule is the same)
    monkeypatch.setattr(devices, "to_device", lambda x, device: x.to(device))
    model = dp.PatchedModel(random_backbone())
    model.add_patch("t", num_classes=3, stages=1)
    model.train()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake_on(model, mode, "cuda")
        # the forward and loss (autograd's engine wants a real CUDA context for backward,
        # which the meta test above runs)
        assert _step_on("cuda", model, augment=True, backward=False) == 8


def test_the_feature_cache_holds_bfloat16_in_ram_and_on_disk():
    from deltapatch.cache import cache_features

    model = dp.PatchedModel(random_backbone()).eval()
    images = _tiny_task(3).train
    ram, unpack = cache_features(model, 2, images, model.preprocess, torch.bfloat16)
    disk, _ = cache_features(model, 2, images, model.preprocess, torch.bfloat16,
                             max_ram_bytes=0)
    assert ram.images.dtype == disk.images.dtype == torch.bfloat16
    assert torch.equal(ram.images, disk.images)
    assert unpack.model_input(ram.images[:2])[0].dtype == torch.float32


def test_device_not_there_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    refused(capsys, ["train", *FAST, "--data", "digits", "--out", out, "--device", "cuda"],
            "cuda")
    assert not out.exists()
    refused(capsys, ["eval", "--backbone", "cifar_resnet20", "--patch", out, "--data", "digits",
                     "--device", "cuda:3"], "cuda:3")
    refused(capsys, ["bench", "--suite", "smoke", "--out", out, "--device", "cuda"], "cuda")
    assert not out.exists()
    refused(capsys, ["train", *FAST, "--data", "digits", "--out", out, "--device", "tpu"],
            "tpu")


def test_train_on_cpu_records_device_and_precision(tmp_path, capsys):
    from deltapatch.cli import main

    out = tmp_path / "bf16"
    assert main(["train", *FAST, "--data", "digits", "--out", str(out), "--device", "cpu",
                 "--precision", "bf16"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["device"] == "cpu" and record["precision"] == "bf16"


def test_ray_tasks_ask_for_a_gpu_share_only_on_a_gpu():
    from deltapatch.bench.on_ray import RaySuite

    assert RaySuite("smoke").resources() == {"num_cpus": 1}
    assert RaySuite("smoke", device="cuda", gpu_share=0.25).resources() == {
        "num_cpus": 1, "num_gpus": 0.25}


@pytest.mark.cuda
def test_a_patch_trains_on_the_gpu_and_the_base_task_stays_exact(tmp_path):
    backbone = random_backbone().eval().to("cuda")
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        before = backbone(x)
    model = dp.PatchedModel(backbone)
    model.add_patch("t", num_classes=3, stages=1)
    for precision, augment in (("fp32", True), ("bf16", False)):
        config = TrainConfig(epochs=2, batch_size=8, precision=precision, augment=augment,
                             progress=False)
        result = fit_patch(model, "t", _tiny_task(3), config,
                           run_dir=tmp_path / precision)
        assert len(result.history) == 2
        assert all(p.device.type == "cuda" for p in model.get_patch("t").parameters())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_step_trains_on_the_augmented_images():
    """The batch's crops and flips are applied (on the device) before the forward."""
    from deltapatch.batches import CPU, model_inputs
    from deltapatch.preprocess import Preprocess

    seen = []
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    crops = draw_crops(6, 8, torch.Generator().manual_seed(0))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 3))
    Local(6).step(lambda inp: seen.append(inp) or net(inp), Preprocess(8),
                  (x, torch.arange(6) % 3, crops))
    assert torch.equal(seen[0], model_inputs(x, Preprocess(8), CPU, crops))
    assert not torch.equal(seen[0], model_inputs(x, Preprocess(8), CPU))


def test_a_step_sums_the_loss_in_float64_and_counts_right_rows():
    """The batch's summed loss is its mean times its rows in float64 (as the host's Python
    floats summed it), and ``right`` counts the rows whose top class is the label."""
    from deltapatch.preprocess import Preprocess

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0],
                           [0.0, 0.0, 5.0], [0.3, 0.2, 0.1], [0.1, 0.7, 0.2]],
                          requires_grad=True)
    y = torch.tensor([0, 1, 0, 0, 2, 1, 1])  # rows 0, 1, 3, 4, 6 right
    x = torch.zeros(7, 3, 8, 8, dtype=torch.uint8)
    loss, summed, right, n = Local(7).step(lambda inp: logits, Preprocess(8), (x, y, None))
    assert loss.item() == F.cross_entropy(logits, y).item()
    assert summed.dtype == torch.float64 and summed.item() == loss.item() * 7
    assert (int(right), n) == (5, 7)


def test_a_fresh_loop_like_a_fresh_shard_works_on_the_host_until_prepared():
    """Before ``prepare`` (which moves it to the trained module's device) a Local steps and
    evaluates on the host, as a Shard does (its device defaults to the CPU)."""
    from deltapatch.data.sets import ImageSet
    from deltapatch.preprocess import Preprocess

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 3))
    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4) % 3
    loop = Local(4)
    *_, n = loop.step(net, Preprocess(8), (x, y, None))
    assert n == 4
    assert 0 <= loop.evaluate(net, ImageSet(x, y), Preprocess(8), 2) <= 1


def test_validation_runs_on_the_trained_modules_device(monkeypatch):
    from deltapatch import train
    from deltapatch.preprocess import Preprocess

    asked = []
    monkeypatch.setattr(train, "evaluate", lambda *a, **kw: asked.append((a, kw)) or 0.5)
    owned = torch.nn.Linear(2, 2).to("meta")
    loop = Local(4)
    loop.prepare(owned, owned, 0)
    assert loop.evaluate(owned, "val", Preprocess(8), 16) == 0.5
    (args, kw), = asked
    device = args[4] if len(args) > 4 else kw.get("device")
    assert device == torch.device("meta")


class _Sums:
    """An objective whose steps give fixed sums (``values``: (summed loss, right) per step)
    and a loss from one parameter on ``device``."""

    train_score = "s"

    def __init__(self, values, device):
        self.values, self.device = values, torch.device(device)
        self.p = torch.nn.Parameter(torch.ones((), device=self.device))

    def batches(self, config, g):
        return range(len(self.values))

    def step(self, step, i):
        loss_sum, right = self.values[i]
        return (self.p * 2, torch.tensor(loss_sum, dtype=torch.float64, device=self.device),
                torch.tensor(right, dtype=torch.int64, device=self.device), 1)


def _epoch(objective):
    from types import SimpleNamespace

    from deltapatch import train

    opt = torch.optim.SGD([objective.p], lr=0.1)
    optimizing = train.Optimizing(opt, torch.amp.GradScaler("cpu", enabled=False), [1.0])
    loop = SimpleNamespace(device=objective.device, main=True)
    config = TrainConfig(epochs=1, progress=False)
    n = len(objective.values)
    return train._train_epoch(objective, loop, None, optimizing, config, 0, (n, n, 0))


def test_the_epochs_sums_are_exact_float64_and_int64():
    """The summed loss adds in float64 (0.1 + 0.2 + 0.3 as Python adds it) and the training
    score counts exactly past float32's integers (2**24 + 1 per step)."""
    loss, score, seen = _epoch(_Sums([(0.1, 2**24 + 1), (0.2, 2**24 + 1), (0.3, 2**24 + 1)],
                                     "cpu"))
    assert (loss.dtype, score.dtype) == (torch.float64, torch.int64)
    assert loss.item() == 0.1 + 0.2 + 0.3 and score.item() == 3 * (2**24 + 1) and seen == 3


def test_the_epochs_sums_stay_on_the_trained_modules_device():
    """The accumulators are made where the step's sums are (a host one would meet them in an
    op, or hold sums that each step copies back to the host)."""
    loss, score, _ = _epoch(_Sums([(0.5, 1), (0.25, 2)], "meta"))
    assert loss.device.type == score.device.type == "meta"
    assert (loss.dtype, score.dtype) == (torch.float64, torch.int64)
