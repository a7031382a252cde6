"""Every registered method leaves the user's backbone untouched (parameters and buffers, bit for
bit), keeps the PatchedModel's base output bit-identical, trains only what it should, and loads
back from its task folder to the very same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FAMILIES, snapshot

import deltapatch as dp
from deltapatch.methods import METHODS, MethodContext, load_task
from deltapatch.patch import CONFIG_FILE, TENSORS_FILE

FORGETTING = {"finetune", "paint"}  # these serve the base task with changed weights
RANDOM = {"random", "random+bn"}  # Λ drawn afresh per call: outputs differ run to run


def _run(name, model, task, base, config, out, **options):
    ctx = MethodContext(model=model, name="tiny", data=task, train=config, out=out,
                        stages=1, base_data=base, options=options)
    return METHODS.get(name).train(ctx)


def _assert_same(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"backbone tensor {k} changed"


@pytest.mark.parametrize("name", METHODS.names())
def test_backbone_and_base_output_unchanged(name, tiny_model, tiny_backbone, tiny_task,
                                            tiny_base, tiny_config, x, tmp_path):
    before = snapshot(tiny_backbone)
    with torch.no_grad():
        y0 = tiny_backbone(x)
    outcome = _run(name, tiny_model, tiny_task, tiny_base, tiny_config, tmp_path / name)
    _assert_same(tiny_backbone, before)
    assert not tiny_backbone.training
    with torch.no_grad():
        assert torch.equal(tiny_model(x), y0)
        logits = outcome.patch_forward(x)
        assert torch.equal(tiny_model(x), y0)  # running the patch leaves no hook behind
        if name not in FORGETTING:  # the base task is served by the untouched backbone
            assert torch.equal(outcome.base_forward(x), y0)
    assert logits.shape == (5, 3)
    assert not torch.equal(logits[:, :3], y0[:, :3])  # the task is really served, not the base
    assert outcome.trainable_params > 0 and outcome.patch_bytes > 0
    _assert_same(tiny_backbone, before)


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - RANDOM))
def test_every_method_loads_back_to_the_same_outputs(name, tiny_model, tiny_backbone, tiny_task,
                                                     tiny_base, tiny_config, x, tmp_path):
    """One folder format and one loader for every method: a fresh model on the same weights
    rebuilds the task from ``config.json`` + ``patch.safetensors`` alone."""
    outcome = _run(name, tiny_model, tiny_task, tiny_base, tiny_config, tmp_path / "out")
    assert {CONFIG_FILE, TENSORS_FILE} <= {p.name for p in (tmp_path / "out").iterdir()}
    fresh = dp.PatchedModel(tiny_backbone)
    task = load_task(fresh, tmp_path / "out")
    assert task.config.method == name and task.config.num_classes == 3
    assert task.outcome.trainable_params == outcome.trainable_params
    tiny_model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(task.outcome.patch_forward(x), outcome.patch_forward(x))
        assert torch.equal(task.outcome.base_forward(x), outcome.base_forward(x))


def test_finetune_changes_copy_not_backbone_and_forgets(tiny_model, tiny_backbone, tiny_task,
                                                         tiny_base, tiny_config, x, tmp_path):
    from deltapatch.methods.finetune import finetune_copy

    before = snapshot(tiny_backbone)
    run = finetune_copy(tiny_model, tiny_task, tiny_config, tmp_path)
    _assert_same(tiny_backbone, before)
    ft = run.model.net.state_dict()
    changed = {k for k in ft if not torch.equal(ft[k], before[k])}
    assert "linear.weight" not in changed and "linear.bias" not in changed  # old head frozen
    assert any(k.startswith("layer1") for k in changed)  # trunk weights trained
    assert any(k.endswith("running_mean") for k in changed)  # the copy's BN statistics adapt
    with torch.no_grad():  # base task served by the fine-tuned trunk + old head
        assert not torch.equal(run.model.base(x), tiny_backbone(x))


def test_finetune_artefact(tiny_model, tiny_task, tiny_base, tiny_config, tmp_path):
    out = _run("finetune", tiny_model, tiny_task, tiny_base, tiny_config, tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / TENSORS_FILE))
    n_backbone = sum(p.numel() for p in tiny_model.backbone.parameters())
    assert sum(v.numel() for k, v in tensors.items() if k.startswith("net.")) >= n_backbone
    assert out.patch_bytes > n_backbone * 4
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["method"] == "finetune"


@pytest.mark.parametrize("name,owned", [
    ("bn-adapt", {"bns", "head"}),
    ("adapter-series", {"bns", "adapters", "head"}),
    ("adapter-parallel", {"bns", "adapters", "head"}),
])
def test_hooked_methods_train_only_task_modules(name, owned, tiny_model, tiny_task, tiny_base,
                                                tiny_config, tmp_path):
    outcome = _run(name, tiny_model, tiny_task, tiny_base, tiny_config, tmp_path)
    modules = outcome.patch_forward.owned
    assert {k.split(".")[0] for k in modules.state_dict()} == owned
    assert outcome.trainable_params == sum(p.numel() for p in modules.parameters())
    n_bn = sum(m.weight.numel() * 2 for m in tiny_model.backbone.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    if name == "bn-adapt":
        assert outcome.trainable_params == n_bn + 64 * 3 + 3


def test_adapters_start_as_identity(tiny_model, tiny_backbone, x):
    from torch import nn

    from deltapatch.methods.taskhooks import TaskModules, adapted_convs, batchnorms

    convs = adapted_convs(tiny_backbone, [tiny_backbone.get_submodule(s)
                                          for s in ("layer1", "layer2", "layer3")])
    assert len(convs) == 6  # two 3×3 convs per block, one block per stage
    for mode in ("series", "parallel"):
        mods = TaskModules(tiny_backbone, nn.Linear(64, 3), batchnorms(tiny_backbone), convs,
                           mode).eval()
        with torch.no_grad():
            with mods.active(tiny_backbone):
                f = tiny_model.features(x)
            assert torch.allclose(f, tiny_model.features(x), atol=1e-6)


def test_pnc_reports_search_and_locality(tiny_model, tiny_task, tiny_base, tiny_config,
                                         tmp_path):
    out = _run("pnc", tiny_model, tiny_task, tiny_base, tiny_config, tmp_path)
    e = out.extra
    assert set(e["search_val_top1"]) == {"0", "1", "2"}
    assert e["insert_stage"] in (0, 1, 2)
    assert e["locality_routed"] == 1.0
    assert 0.0 <= e["locality_merged"] <= 1.0 and 0.0 <= e["patch_top1_merged"] <= 1.0
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())["options"]
    assert cfg["cloned_paths"][0] == ["layer1", "layer2", "layer3"][e["insert_stage"]]


def test_pnc_position_rule():
    from deltapatch.methods.pnc import choose_position

    assert choose_position({0: 0.9, 1: 0.895, 2: 0.5}, 0.01) == 1
    assert choose_position({0: 0.9, 1: 0.8, 2: 0.5}, 0.01) == 0


def test_hooks_removed_after_an_error(tiny_model, tiny_backbone, x):
    from torch import nn

    from deltapatch.methods.taskhooks import TaskModules, adapted_convs, batchnorms

    mods = TaskModules(tiny_backbone, nn.Linear(64, 3), batchnorms(tiny_backbone),
                       adapted_convs(tiny_backbone, [tiny_backbone.layer1]), "parallel")
    with pytest.raises(RuntimeError):
        with mods.active(tiny_backbone):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in tiny_backbone.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_fit_every_family(family):
    """Every family gets adapters on its stages' spatial convs, slice stages (Lite0) included;
    beside a depthwise conv the adapter is depthwise too. They start as the base function, move
    it once trained, and the base path stays the backbone's own forward."""
    from torch import nn

    from deltapatch.methods.taskhooks import TaskModules, adapted_convs, batchnorms

    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone(family)).eval()
    net = model.backbone
    for m in net.modules():  # timm zero-inits each block's last BN, which would hide the adapters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    convs = adapted_convs(net, [model.spec.stage_module(net, i) for i in range(model.num_stages)])
    assert convs and all(max(net.get_submodule(c).kernel_size) > 1 for c in convs)
    mods = TaskModules(net, nn.Linear(model._head.in_features, 3), batchnorms(net), convs,
                       "parallel").eval()
    for c in convs:
        assert mods.adapters[c.replace(".", "__")].conv.groups == net.get_submodule(c).groups
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        with mods.active(net):
            start = model.features(x)
        assert torch.equal(start, model.features(x))  # zero adapters add exact zeros
        for a in mods.adapters.values():
            a.conv.weight.normal_(0, 0.1)
        with mods.active(net):
            assert not torch.equal(model.features(x), start)  # ConvNeXt's layer scale: ~1e-6
        assert torch.equal(model(x), ref)


def test_batchable_is_declared_by_the_methods_whose_tasks_load_as_patches():
    """The server batches a method's tasks when the method says they load as patches of the
    shared model: the Δ family (delta, linear, the ablations), and no method that loads its own
    forward (a copy, hooks, PEFT)."""
    from deltapatch.methods.patching import load_patch

    assert {n for n in METHODS.names() if METHODS.get(n).batchable} == {
        n for n in METHODS.names() if METHODS.get(n).load is load_patch}
    assert METHODS.get("delta").batchable and METHODS.get("linear").batchable
    assert not any(METHODS.get(n).batchable for n in ("finetune", "paint", "bn-adapt", "lora"))
