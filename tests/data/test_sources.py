"""Data loading: npz, image folders (split or not), built-ins, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deltapatch as dp
from deltapatch.data import load_data, load_test, random_crop_flip


def _npz(path, n=40, c=4, gray=True, **extra):
    rng = np.random.default_rng(0)
    shape = (n, 20, 20) if gray else (n, 20, 20, 3)
    np.savez(path, x_train=rng.integers(0, 255, shape, dtype=np.uint8),
             y_train=np.arange(n) % c, x_test=rng.integers(0, 255, shape, dtype=np.uint8)[:12],
             y_test=np.arange(12) % c, **extra)
    return path


def test_npz_grayscale_becomes_rgb_at_backbone_size(tmp_path):
    d = load_data(str(_npz(tmp_path / "t.npz")), 32, val_fraction=0.25)
    assert d.train.images.shape == (30, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert len(d.val) == 10 and len(d.test) == 12 and d.num_classes == 4
    assert torch.equal(d.train.images[:, 0], d.train.images[:, 2])


def test_val_split_is_seeded_and_disjoint(tmp_path):
    f = str(_npz(tmp_path / "t.npz", gray=False))
    a, b = load_data(f, 20, seed=1), load_data(f, 20, seed=1)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(load_data(f, 20, seed=2).val.images, a.val.images)


def _folder(root, layout):
    rng = np.random.default_rng(0)
    for split in (["train", "test"] if layout == "split" else [""]):
        for cls in ("cat", "dog", "emu"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_image_folders(tmp_path, layout):
    d = load_data(str(_folder(tmp_path / "imgs", layout)), 24, val_fraction=0.2)
    assert d.class_names == ["cat", "dog", "emu"]
    assert d.train.images.shape[1:] == (3, 24, 24)
    total = len(d.train) + len(d.val) + len(d.test)
    assert total == (30 if layout == "split" else 15)


def test_digits_builtin():
    pytest.importorskip("sklearn")
    d = load_data("digits", 32)
    assert d.num_classes == 10 and not d.hflip
    assert len(d.train) + len(d.val) + len(d.test) == 1797


def test_clear_errors(tmp_path):
    with pytest.raises(dp.DataError, match="neither a file"):
        load_data("no_such_data", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(dp.DataError, match="no images"):
        load_data(str(tmp_path / "empty"), 32)
    bad = _folder(tmp_path / "bad", "flat")
    (bad / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(dp.DataError, match="cannot read image"):
        load_data(str(bad), 32)
    np.savez(tmp_path / "lbl.npz", x_train=np.zeros((4, 8, 8), np.uint8),
             y_train=np.array([0, 1, 2, -1]), x_test=np.zeros((2, 8, 8), np.uint8),
             y_test=np.array([0, 1]))
    with pytest.raises(dp.DataError, match="labels"):
        load_data(str(tmp_path / "lbl.npz"), 8, val_fraction=0.25)
    np.savez(tmp_path / "len.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.arange(3),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.arange(2))
    with pytest.raises(dp.DataError, match="4 images but 3 labels"):
        load_data(str(tmp_path / "len.npz"), 8)
    np.savez(tmp_path / "miss.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.arange(4))
    with pytest.raises(dp.DataError, match="x_test"):
        load_data(str(tmp_path / "miss.npz"), 8)


def test_load_test_only(tmp_path):
    test, names = load_test(str(_folder(tmp_path / "imgs", "split")), 16)
    assert len(test) == 15 and names == ["cat", "dog", "emu"]


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    no_flip = random_crop_flip(x, torch.Generator().manual_seed(0), hflip=False, pad_fraction=0)
    assert no_flip.shape == x.shape
