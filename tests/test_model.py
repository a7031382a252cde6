"""PatchedModel: the base path is the untouched backbone; patches route per sample."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from helpers import assert_unchanged, snapshot
from safetensors import safe_open

import deltapatch as dp
from deltapatch.backbones.spec import spec_for
from deltapatch.patch import read_patch
from deltapatch.train import TrainConfig, fit_patch


def assert_patch_acts(model: dp.PatchedModel, x: torch.Tensor, name: str) -> None:
    """A patch that is silently ignored would make every base-equality test pass vacuously."""
    with torch.no_grad():
        assert not torch.equal(model.features(x, name), model.features(x)), f"{name} is ignored"


def test_wrapping_copies_nothing_and_base_is_bit_identical(backbone, x):
    plain = backbone(x)
    before = snapshot(backbone)
    model = dp.PatchedModel(backbone)
    assert model.backbone is backbone
    assert torch.equal(model(x), plain)
    model.add_patch("a", 10, stages=2)
    model.add_patch("b", 7, stages=[0, 2])
    patched = model(x, patch="a")
    assert patched.shape == plain.shape and not torch.equal(patched, plain)
    assert_patch_acts(model, x, "b")
    assert torch.equal(model(x), plain)
    assert torch.equal(model(x, patches=["__base__"] * len(x)), plain)
    assert_unchanged(backbone, before)


def test_base_identical_and_backbone_unchanged_after_training(backbone, x):
    plain = backbone(x)
    before = snapshot(backbone)
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=3)
    data = _tiny_task(num_classes=4)
    fit_patch(model, "a", data, TrainConfig(epochs=2, batch_size=8, progress=False))
    model.eval()
    assert_patch_acts(model, x, "a")
    assert_unchanged(backbone, before)
    assert not backbone.training
    assert torch.equal(model(x), plain)
    model.remove_patch("a")
    assert torch.equal(model(x), plain)


def test_only_patch_parameters_get_gradients_and_all_of_them_change(backbone, x):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("a", 4, stages=3)
    start = snapshot(patch)
    model.train()
    opt = torch.optim.SGD(patch.parameters(), lr=0.1)
    y = torch.arange(len(x)) % 4
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x, patch="a"), y).backward()
        assert all(p.grad is None for p in backbone.parameters())
        assert all(p.grad is not None for p in patch.parameters())
        opt.step()
    for name, p in patch.named_parameters():
        assert not torch.equal(p, start[name]), f"{name} did not change"


def test_train_mode_keeps_backbone_batchnorm_in_eval(backbone, x):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 4, stages=1)
    before = snapshot(backbone)
    model.train()
    assert not backbone.training and model.get_patch("a").training
    model(x, patch="a")
    assert_unchanged(backbone, before)


@pytest.mark.parametrize("stages, expected", [(1, [2]), (2, [1, 2]), (3, [0, 1, 2]), (0, []),
                                              ([0, 2], [0, 2]), (["layer2"], [1])])
def test_stage_selection(backbone, stages, expected):
    model = dp.PatchedModel(backbone)
    assert model.add_patch("p", 2, stages=stages).config.stages == expected


@pytest.mark.parametrize("bad", [4, -1, [3], ["layer9"]])
def test_stage_selection_refuses_out_of_range(backbone, bad):
    with pytest.raises(ValueError):
        dp.PatchedModel(backbone).add_patch("p", 2, stages=bad)


def test_lambdas_per_patched_stage_in_unit_interval(x):
    model = dp.PatchedModel(dp.load_backbone("resnet18"))
    model.add_patch("p", 5, stages=4)
    lams = model.lambdas(torch.randn(3, 3, 64, 64), "p")
    assert sorted(lams) == [0, 1, 2, 3]
    for v in lams.values():  # 2 sub-blocks per ResNet-18 stage → 3 skips
        assert v.shape == (3, 3) and bool((v >= 0).all() and (v <= 1).all())


def test_mixed_routing_rows_equal_single_runs(backbone, x):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 3, stages=1)
    model.add_patch("b", 7, stages=[0, 2])
    model.add_patch("c", 5, stages=3)
    model.eval()
    names = ["a", "__base__", "b", "c", "a", "__base__"]
    for name in "abc":
        assert_patch_acts(model, x, name)
    with torch.no_grad():
        mixed = model(x, patches=names)
        assert mixed.shape == (6, 10)  # widest head: the base task's 10 classes
        for r, n in enumerate(names):
            alone = model(x[r:r + 1], patch=None if n == "__base__" else n)[0]
            torch.testing.assert_close(mixed[r, :alone.numel()], alone, atol=1e-5, rtol=1e-5)
            assert bool(torch.isinf(mixed[r, alone.numel():]).all())


def test_set_patch_and_disable_patch(backbone, x):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("a", 3, stages=1)
    plain = backbone(x)
    assert torch.equal(model(x), plain)  # none active until set
    assert_patch_acts(model, x, "a")
    model.set_patch("a")
    assert model(x).shape == (6, 3)
    assert torch.equal(model(x), model(x, patch="a"))
    with model.disable_patch():
        assert torch.equal(model(x), plain)
    assert model(x).shape == (6, 3)
    model.set_patch(None)
    assert torch.equal(model(x), plain)


def test_errors_name_the_fix(backbone):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 3)
    with pytest.raises(dp.PatchError, match="remove_patch"):
        model.add_patch("a", 3)
    with pytest.raises(dp.PatchError, match="no patch named"):
        model.set_patch("zzz")
    with pytest.raises(dp.PatchError, match="invalid patch name"):
        model.add_patch("__base__", 3)


def test_trainable_parameters_counts_patch_only(backbone, capsys):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("a", 10, stages=1)
    n = model.trainable_parameters("a")
    assert n == sum(p.numel() for p in patch.parameters())
    assert n < sum(p.numel() for p in backbone.parameters())
    total = sum(p.numel() for p in backbone.parameters()) + sum(
        p.numel() for p in patch.parameters())
    model.print_trainable_parameters("a")
    assert capsys.readouterr().out == (f"trainable params: {n:,} || all params: {total:,} || "
                                       f"trainable%: {100 * n / total:.4f}\n")
    model.set_patch("a")
    model.print_trainable_parameters()  # the active patch
    assert capsys.readouterr().out.startswith(f"trainable params: {n:,} ||")
    model.set_patch(None)
    with pytest.raises(dp.PatchError) as err:
        model.print_trainable_parameters()
    assert str(err.value) == "no patch given and none active"


def test_patch_bytes_are_its_tensors_bytes_as_the_file_stores_them(backbone, tmp_path):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 10, stages=1)
    model.add_patch("b", 10, stages=[0, 2])
    folder = model.save_patch("a", tmp_path / "a")
    [file] = folder.glob("*.safetensors")
    with safe_open(file, "pt") as f:
        stored = sum(f.get_tensor(k).nbytes for k in f.keys())
    assert model.patch_bytes("a") == stored > 0
    assert model.patch_bytes("b") != stored  # each patch its own


def test_set_patch_to_the_base_task_serves_the_backbone(backbone, x):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 10, stages=1)
    model.set_patch("a")
    assert model.active == "a" and not torch.equal(model(x), backbone(x))
    model.set_patch(dp.BASE)
    assert model.active is None and torch.equal(model(x), backbone(x))


def _stored_and_removed(backbone, folder) -> tuple[dp.PatchedModel, object, dict]:
    """A model, and the config and tensors of its patch 'a' as read back from disk, 'a' removed
    (so attaching them again is what a load does)."""
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 10, stages=1)
    config, tensors = read_patch(model.save_patch("a", folder))
    model.remove_patch("a")
    return model, config, tensors


def test_a_stored_config_whose_stages_do_not_fit_is_refused_in_words(backbone, tmp_path):
    model, config, tensors = _stored_and_removed(backbone, tmp_path / "a")
    config.stages = [model.num_stages]  # one past the last stage
    with pytest.raises(dp.PatchError) as err:
        model.attach_patch(config, tensors)
    assert str(err.value).startswith("patch config does not fit this backbone: ")
    assert "a" not in model.patches


def test_deepcopy_free_wrap_keeps_identity_of_modules(backbone):
    model = dp.PatchedModel(backbone)
    ids = {id(m) for m in backbone.modules()}
    assert {id(m) for m in model.backbone.modules()} == ids


def test_empty_batch_gives_empty_results(backbone):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("p", 3, stages=2)
    x = torch.zeros(0, 3, 32, 32)
    with torch.no_grad():
        assert model(x, patch="p").shape == (0, 3)
        assert model(x, patches=[]).shape[0] == 0
        assert model(x).shape == (0, 10)
        assert model.features(x).shape == model.features(x, "p").shape == (0, 64)
        assert {s: tuple(v.shape) for s, v in model.lambdas(x, "p").items()} == {1: (0, 6),
                                                                                2: (0, 6)}
        assert model.forward_from(model.stage_input(x, 1), 1, "p").shape == (0, 3)
        model.set_patch("p")
        assert model(x).shape == (0, 3)


def test_stage_walk_is_the_specs(backbone, x):
    """PatchedModel's prefix and suffix are StageSpec's walk, on the backbone itself."""
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("p", 4, stages=1)
    spec = model.spec
    with torch.no_grad():
        for s in range(model.num_stages + 1):
            assert torch.equal(model.stage_input(x, s), spec.stage_input(backbone, x, s))
        h = model.stage_input(x, 2)
        assert torch.equal(model.forward_from(h, 2, "p"), model(x, patch="p"))
        assert torch.equal(model.features(x), spec.features_from(backbone, h, 2))
        assert torch.equal(spec.logits(backbone, x), backbone(x))


def _tiny_task(num_classes: int):
    from deltapatch.data.sets import ImageSet, TaskData

    g = torch.Generator().manual_seed(3)
    def s(n):
        return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.arange(n) % num_classes)
    return TaskData("tiny", s(24), s(8), s(8), [str(i) for i in range(num_classes)])


# ----------------------------------------------------------------- forward_from
def _three_patches(backbone) -> dp.PatchedModel:
    """'a' and 'c' start at stage 1, 'b' at stage 2, 'h' is head-only (starts past the last)."""
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("a", 4, stages=[1])
    model.add_patch("c", 5, stages=[1, 2])
    model.add_patch("b", 6, stages=[2])
    model.add_patch("h", 3, stages=0)
    return model


@torch.no_grad()
def test_forward_from_any_start_up_to_the_first_patched_stage_equals_forward(backbone, x):
    model = _three_patches(backbone)
    mixed = ["a", dp.BASE, "b", "c", "h", "a"]
    for s in (0, 1):
        h = model.stage_input(x, s)
        assert torch.equal(model.forward_from(h, s, patch="a"), model(x, patch="a"))
        assert torch.equal(model.forward_from(h, s), backbone(x))  # nothing active: the base
        assert torch.equal(model.forward_from(h, s, patches=mixed), model(x, patches=mixed))
        assert torch.equal(model.forward_from(h, s, patch="c", head=False),
                           model.features(x, "c"))
        model.set_patch("a")  # the active patch, when none is named
        assert torch.equal(model.forward_from(h, s), model(x, patch="a"))
        model.set_patch(None)
    assert not torch.equal(model(x, patch="a"), model(x, patches=mixed))  # routing has teeth


@torch.no_grad()
def test_forward_from_past_a_patched_stage_is_refused_in_words_for_any_batch(backbone, x):
    model = _three_patches(backbone)
    h = model.stage_input(x, 2)
    for rows in (h, h[:0]):  # an empty batch too: it has no rows to name the patch
        with pytest.raises(ValueError) as err:
            model.forward_from(rows, 2, patch="a")
        assert str(err.value) == "forward_from(start=2) would skip patched stage 1"
    with pytest.raises(ValueError, match=r"^forward_from\(start=2\) would skip patched stage 1$"):
        model.forward_from(h, 2, patches=["b"] * 5 + ["a"])
    assert torch.equal(model.forward_from(h, 2, patches=["b", "h"] * 3),
                       model(x, patches=["b", "h"] * 3))


@torch.no_grad()
def test_an_empty_routed_batch_from_a_stage_has_the_base_tasks_width(backbone):
    model = _three_patches(backbone)
    model.set_patch("a")  # routed rows name their tasks: the active patch plays no part
    h = model.stage_input(torch.zeros(0, 3, 32, 32), 1)
    assert model.forward_from(h, 1, patches=[]).shape == (0, 10)


@torch.no_grad()
def test_a_given_first_residual_is_the_one_forward_from_uses(backbone, x):
    model = _three_patches(backbone)
    h = model.stage_input(x, 1)
    r1 = model.first_residual(h, 1)
    assert torch.equal(model.forward_from(h, 1, patch="a", first_residual=r1),
                       model(x, patch="a"))
    assert not torch.equal(model.forward_from(h, 1, patch="a", first_residual=r1 + 1),
                           model(x, patch="a"))


@pytest.mark.parametrize("start, rows", [
    (1, ["a", "c"] * 3),  # two patches, both starting at stage 1
    (1, ["a"] * 5 + [dp.BASE]),  # a patch and the base task
    (1, ["b"] * 6),  # one patch that starts later than ``start``
    (3, ["h"] * 6),  # past the last stage: no stage to take F_1 of
])
@torch.no_grad()
def test_a_first_residual_is_refused_unless_one_patch_starts_at_the_start(backbone, x, start,
                                                                          rows):
    model = _three_patches(backbone)
    h = model.stage_input(x, start)
    with pytest.raises(ValueError) as err:
        model.forward_from(h, start, patches=rows, first_residual=torch.zeros(1))
    assert str(err.value) == ("first_residual needs all rows on one patch that patches stage "
                              f"{start}")


# ----------------------------------------------------------------- the rest of the API
def test_lambdas_without_a_patch_is_refused_in_words(backbone, x):
    model = dp.PatchedModel(backbone)
    with pytest.raises(dp.PatchError) as err:
        model.lambdas(x)
    assert str(err.value) == "lambdas() needs a patch: pass patch=NAME or set_patch(NAME)"
    model.add_patch("h", 3, stages=0)
    assert model.lambdas(x, patch="h") == {}  # a head-only patch has no Λ


def test_a_frozen_patch_parameter_is_not_counted_as_trainable(backbone):
    model = dp.PatchedModel(backbone)
    patch = model.add_patch("a", 10, stages=1)
    everything = sum(p.numel() for p in patch.parameters())
    assert model.trainable_parameters("a") == everything
    patch.head.bias.requires_grad_(False)
    assert model.trainable_parameters("a") == everything - 10


def test_a_saved_patch_records_its_trainable_parameters_and_loads_under_a_new_name(backbone,
                                                                                     tmp_path):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 10, stages=1)
    folder = model.save_patch("a", tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    assert config["trainable_params"] == model.trainable_parameters("a") > 0
    assert model.load_patch(folder, name="again") == "again"
    assert set(model.patches) == {"a", "again"}


def test_an_input_size_over_the_backbones_limit_is_refused_in_words(backbone, tmp_path):
    # a 32 px backbone: files may ask up to 4 × 32 or 512 px
    model, config, tensors = _stored_and_removed(backbone, tmp_path / "a")
    config.preprocess = replace(config.preprocess, size=512)
    model.check_fits(config)  # at the limit: accepted
    config.preprocess = replace(config.preprocess, size=513)
    with pytest.raises(dp.PatchError) as err:
        model.attach_patch(config, tensors)
    assert str(err.value) == ("patch 'a' asks for 513 px inputs, over the limit of 512 px for "
                              "this 32 px backbone; if you trust the patch, pass "
                              "--max-image-size 513")
    assert not model.patches


def test_the_fingerprint_is_of_the_weights_as_loaded_whatever_the_model_is_cast_to(backbone):
    want = dp.PatchedModel(backbone).fingerprint
    cast = dp.PatchedModel(copy.deepcopy(backbone)).double()  # fingerprint never asked before
    assert cast.fingerprint == want
    assert dp.PatchedModel(copy.deepcopy(backbone).double()).fingerprint != want  # has teeth


def test_a_spec_given_is_the_one_used(backbone, x):
    """Two stages, the third folded into the pre-logits: a spec the catalog would not choose."""
    spec = dp.StageSpec(stem=spec_for(backbone).stem, stages=["layer1", "layer2"],
                        pre_logits=["layer3", "avgpool", lambda t: t.flatten(1)], head="linear")
    model = dp.PatchedModel(backbone, spec=spec)
    assert model.spec is spec and model.num_stages == 2
    assert torch.equal(model(x), backbone(x))


def test_removing_a_patch_clears_it_as_the_active_one_and_only_it(backbone, x):
    model = dp.PatchedModel(backbone)
    model.add_patch("a", 10, stages=1)
    model.add_patch("b", 10, stages=1)
    model.set_patch("a")
    model.remove_patch("b")
    assert model.active == "a"
    model.remove_patch("a")
    assert model.active is None and torch.equal(model(x), backbone(x))
    with pytest.raises(dp.PatchError) as err:  # nothing active again: the refusal of none
        model.print_trainable_parameters()
    assert str(err.value) == "no patch given and none active"


def test_a_fresh_model_has_no_active_patch(backbone, x):
    model = dp.PatchedModel(backbone)
    assert model.active is None
    with pytest.raises(dp.PatchError) as err:
        model.print_trainable_parameters()
    assert str(err.value) == "no patch given and none active"


def test_a_dense_patch_is_refused_as_a_classifier_in_words(backbone, x):
    model = dp.PatchedModel(backbone)
    model.add_patch("boxes", 3, stages=1, task="detection", options={"levels": [1, 2]})
    for call in (lambda: model(x, patch="boxes"), lambda: model.logit_task("boxes")):
        with pytest.raises(dp.PatchError) as err:
            call()
        assert str(err.value) == ("patch 'boxes' is a detection patch; run it with "
                                  "deltapatch.dense.DenseTask (or `deltapatch predict`), not as "
                                  "a classifier")


def test_routing_names_and_stage_bounds_are_refused_in_words(backbone, x):
    model = dp.PatchedModel(backbone)
    with pytest.raises(ValueError) as err:
        model(x, patches=["__base__"] * 3)
    assert str(err.value) == "3 patch names for a batch of 6"
    for stage in (-1, 4):
        with pytest.raises(ValueError) as err:
            model.stage_input(x, stage)
        assert str(err.value) == f"stage {stage} out of range 0..3"


@torch.no_grad()
def test_a_patchs_pyramid_has_every_row_also_none(backbone):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("a", 10, stages=[1])
    x5 = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for rows in (x5, x5[:0]):
        for name in ("a", None):
            out = model.pyramid(rows, name)
            assert list(out) == model.stage_names
            assert [t.shape[:2] for t in out.values()] == [(len(rows), c) for c in (16, 32, 64)]
    patched, base = model.pyramid(x5, "a"), model.pyramid(x5)
    names = model.stage_names
    assert torch.equal(patched[names[0]], base[names[0]])  # before the Δ-stage: frozen
    assert not torch.equal(patched[names[1]], base[names[1]])


@torch.no_grad()
def test_features_have_one_row_per_image(backbone):
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("a", 10, stages=1)
    for n in (0, 1, 5):
        x = torch.randn(n, 3, 32, 32)
        assert model.features(x, "a").shape == model.features(x).shape == (n, 64)


# ----------------------------------------------------------------- add_patch and its arguments
def test_add_patch_defaults_are_the_papers_delta_1(backbone):
    config = dp.PatchedModel(backbone).add_patch("a", 10).config
    assert (config.stages, config.gate, config.norm, config.reduction, config.method,
            config.task, config.options, config.init) == (
        [2], "delta", "output", 4, "delta", "classification", {}, "random")


def test_every_add_patch_argument_reaches_the_patchs_config(backbone):
    config = dp.PatchedModel(backbone).add_patch(
        "a", 3, stages=["layer1", 2], gate="learned", norm="skip", reduction=2, init="base",
        class_names=["x", "y", "z"], method="custom", options={"k": 1}).config
    assert (config.stages, config.gate, config.norm, config.reduction, config.init,
            config.class_names, config.method, config.options) == (
        [0, 2], "learned", "skip", 2, "base", ["x", "y", "z"], "custom", {"k": 1})
    dense = dp.PatchedModel(backbone).add_patch("d", 3, task="segmentation",
                                                options={"levels": [1, 2]})
    assert dense.config.task == "segmentation"


def test_the_init_default_is_the_backbone_familys_for_gates_that_can_start_at_the_base():
    model = dp.PatchedModel(dp.load_backbone("efficientnet_lite0"))  # its measured default: base
    assert model.add_patch("a", 3).config.init == "base"
    assert model.add_patch("f", 3, gate="fixed").config.init == "random"  # Λ fixed: the paper's


def test_class_names_of_another_count_are_refused_in_words(backbone):
    model = dp.PatchedModel(backbone)
    with pytest.raises(ValueError) as err:
        model.add_patch("a", 3, class_names=["x", "y"])
    assert str(err.value) == "2 class names for 3 classes"
    assert not model.patches


def test_stages_are_resolved_or_refused_in_words(backbone):
    model = dp.PatchedModel(backbone)  # stages layer1, layer2, layer3
    assert model.resolve_stages(0) == [] and model.resolve_stages(3) == [0, 1, 2]
    assert model.resolve_stages("layer2") == [1]  # one name, not its letters
    assert model.resolve_stages(["layer3", 0, 0]) == [0, 2]
    refusals = {
        4: "stages=4: this backbone has 3 stages (0..3)",
        -1: "stages=-1: this backbone has 3 stages (0..3)",
        "layer9": "unknown stage 'layer9'; stages are ['layer1', 'layer2', 'layer3']",
        (3,): "stage index 3 out of range 0..2 (layer1, layer2, layer3)",
        (-1,): "stage index -1 out of range 0..2 (layer1, layer2, layer3)",
    }
    for stages, message in refusals.items():
        with pytest.raises(ValueError) as err:
            model.resolve_stages(stages)
        assert str(err.value) == message


def test_an_unknown_patch_is_refused_naming_those_loaded(backbone):
    model = dp.PatchedModel(backbone)
    with pytest.raises(dp.PatchError) as err:
        model.get_patch("x")
    assert str(err.value) == "no patch named 'x' (loaded: none)"
    model.add_patch("a", 3)
    model.add_patch("b", 3)
    with pytest.raises(dp.PatchError) as err:
        model.get_patch("x")
    assert str(err.value) == "no patch named 'x' (loaded: a, b)"
