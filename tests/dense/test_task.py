"""Dense patches: detection and segmentation heads on a patched pyramid, saved and loaded like
every patch, beside classification patches, with the base task untouched."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_unchanged, snapshot

import deltapatch as dp
from deltapatch.dense import (
    DenseData,
    DenseSample,
    add_dense_patch,
    evaluate_dense,
    finetuned_task,
    fit_dense,
    load_dense,
    save_dense,
)
from deltapatch.dense.task import dense_config
from deltapatch.errors import PatchError
from deltapatch.train import TrainConfig

SIZE = 64
ONE_EPOCH = TrainConfig(epochs=1, lr=1e-3, batch_size=2, seed=0, progress=False)


def _sample(g: torch.Generator) -> DenseSample:
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=g)
    x1, y1 = int(torch.randint(0, 20, (1,), generator=g)), int(torch.randint(0, 10, (1,), generator=g))
    box = torch.tensor([[x1, y1, x1 + 30, y1 + 30]], dtype=torch.float32)
    mask = torch.zeros(48, 64, dtype=torch.uint8)
    mask[y1:y1 + 30, x1:x1 + 30] = 1
    image[:, mask.bool()] = 255  # a bright square: something to find
    return DenseSample(image, box, torch.tensor([1]), mask)


@pytest.fixture
def data() -> DenseData:
    g = torch.Generator().manual_seed(3)
    return DenseData([_sample(g) for _ in range(4)], [_sample(g) for _ in range(2)],
                     ["background", "square"])


def _model(backbone) -> dp.PatchedModel:
    model = dp.PatchedModel(backbone).eval()
    model.add_patch("cls", 5, stages=1, init="random")
    return model


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_dense_patch_trains_only_its_own_modules_and_round_trips(backbone, x, data, tmp_path,
                                                                 kind):
    model = _model(backbone)
    before, base, cls = snapshot(backbone), backbone(x), model(x, patch="cls")
    task = add_dense_patch(model, "d", kind, 2, stages=3, init="random", size=SIZE,
                           class_names=data.class_names)
    delta_before = snapshot(model.get_patch("d").deltas)
    fit_dense(task, data, ONE_EPOCH)
    assert_unchanged(backbone, before)
    assert not all(torch.equal(v, model.get_patch("d").deltas.state_dict()[k])
                   for k, v in delta_before.items())
    with torch.inference_mode():
        assert torch.equal(model(x), base)
        assert torch.equal(model(x, patch="cls"), cls)
    scores = evaluate_dense(task, data.test)
    save_dense(model, task, tmp_path / "d")
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["task"] == kind and config["options"]["size"] == SIZE

    fresh = _model(backbone)
    loaded = load_dense(fresh, tmp_path / "d")
    assert evaluate_dense(loaded, data.test) == scores
    with torch.inference_mode():
        assert torch.equal(fresh(x), base)


def test_a_dense_patch_is_not_a_classifier(backbone, x):
    model = _model(backbone)
    add_dense_patch(model, "seg", "segmentation", 2, stages=1, size=SIZE)
    for call in (lambda: model(x, patch="seg"), lambda: model.fanout(x, ["cls", "seg"]),
                 lambda: model(x, patches=["seg"] * len(x))):
        with pytest.raises(PatchError, match="segmentation patch"):
            call()
    assert set(model.pyramid(x, patch="seg")) == set(model.stage_names)


@pytest.mark.parametrize("field,value", [("levels", [0, 9]), ("levels", []),
                                         ("channels", 1 << 20), ("size", True)])
def test_bad_dense_config_is_refused_before_the_model_changes(backbone, tmp_path, field, value,
                                                              data):
    model = _model(backbone)
    task = add_dense_patch(model, "det", "detection", 2, stages=1, size=SIZE)
    save_dense(model, task, tmp_path / "det")
    path = tmp_path / "det" / "config.json"
    config = json.loads(path.read_text())
    config["options"][field] = value
    path.write_text(json.dumps(config))
    fresh = _model(backbone)
    with pytest.raises(PatchError, match=f"options.{field}"):
        load_dense(fresh, tmp_path / "det")
    assert list(fresh.patches) == ["cls"]


def test_finetune_trains_a_copy_and_round_trips(backbone, x, data, tmp_path):
    model = _model(backbone)
    before, base = snapshot(backbone), backbone(x)
    config = dense_config(model, "ft", "segmentation", 2, size=SIZE)
    task = finetuned_task(model, config)
    copy_before = snapshot(task.net)
    fit_dense(task, data, ONE_EPOCH)
    assert_unchanged(backbone, before)
    assert not all(torch.equal(v, task.net.state_dict()[k]) for k, v in copy_before.items())
    with torch.inference_mode():
        assert torch.equal(model(x), base)
    scores = evaluate_dense(task, data.test)
    save_dense(model, task, tmp_path / "ft")
    assert evaluate_dense(load_dense(_model(backbone), tmp_path / "ft"), data.test) == scores
