"""Bad npz inputs and options: one clear DataError each, or the right behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltapatch as dp
from deltapatch.data import (
    BUILTINS,
    ImageSet,
    builtin,
    check_data_options,
    list_builtins,
    load_data,
    load_test,
    seeded_subset,
)
from deltapatch.registry import RegistryError

RNG = np.random.default_rng(0)
X8 = RNG.integers(0, 256, (24, 10, 10), dtype=np.uint8)
Y = np.arange(24) % 3


def _save(path, x_train=X8, y_train=Y, x_test=None, y_test=None, **extra):
    np.savez(path, x_train=x_train, y_train=y_train,
             x_test=x_train[:9] if x_test is None else x_test,
             y_test=y_train[:9] if y_test is None else y_test, **extra)
    return str(path)


def _load(path, **kw):
    return load_data(path, 16, val_fraction=0.25, **kw)


# ------------------------------------------------------------------ pixels
def test_nan_pixels_name_the_split_and_count(tmp_path):
    xf = X8.astype(np.float32) / 255
    bad = xf[:9].copy()
    bad[2, 3, 4] = np.nan
    bad[5, 0, 0] = np.inf
    with pytest.raises(dp.DataError, match="x_test has 2 non-finite"):
        _load(_save(tmp_path / "n.npz", x_train=xf, x_test=bad))


def test_unit_floats_scaled_once_for_all_splits(tmp_path, capsys):
    ref = _load(_save(tmp_path / "u8.npz"))
    xf = X8.astype(np.float64) / 255
    dark = xf[:9] * 0.3  # test max well below 1: decided with train, so still x255
    got = _load(_save(tmp_path / "f.npz", x_train=xf, x_test=dark))
    assert torch.equal(got.train.images, ref.train.images)
    want = load_data(_save(tmp_path / "d.npz", x_test=np.round(X8[:9] * 0.3).astype(np.uint8)),
                     16, val_fraction=0.25).test.images
    assert (got.test.images.int() - want.int()).abs().max() <= 1
    assert got.info["pixels"] == "[0, 1] values scaled by 255"
    assert "f.npz: pixels [0, 1] values scaled by 255\n" in capsys.readouterr().err
    # [0, 255] floats are taken as is
    same = _load(_save(tmp_path / "f255.npz", x_train=X8.astype(np.float32)))
    assert torch.equal(same.train.images, ref.train.images) and "pixels" not in same.info


def test_float_scales_that_disagree_or_overflow_are_refused(tmp_path):
    xf = X8.astype(np.float32)
    with pytest.raises(dp.DataError, match="x_test look like \\[0, 1\\].*one scale"):
        _load(_save(tmp_path / "a.npz", x_train=xf, x_test=xf[:9] / 255))
    with pytest.raises(dp.DataError, match="float pixels span .*300"):
        _load(_save(tmp_path / "b.npz", x_train=xf + 45))
    with pytest.raises(dp.DataError, match="float pixels span -1"):
        _load(_save(tmp_path / "c.npz", x_train=xf - 1))


def test_integer_pixels_other_than_uint8(tmp_path):
    ref = _load(_save(tmp_path / "u8.npz"))
    u16 = _load(_save(tmp_path / "u16.npz", x_train=X8.astype(np.uint16) * 257))
    assert torch.equal(u16.train.images, ref.train.images)
    assert u16.info["pixels"] == "uint16 divided by 257"
    i64 = _load(_save(tmp_path / "i64.npz", x_train=X8.astype(np.int64)))
    assert torch.equal(i64.train.images, ref.train.images)
    with pytest.raises(dp.DataError, match="x_train is int64 with values 45..300"):
        _load(_save(tmp_path / "big.npz", x_train=X8.astype(np.int64) + 45))
    with pytest.raises(dp.DataError, match="dtype bool"):
        _load(_save(tmp_path / "bool.npz", x_train=X8 > 100))


# ------------------------------------------------------------------ labels
def test_fractional_labels_are_refused_whole_floats_accepted(tmp_path):
    yf = Y.astype(np.float32)
    ok = _load(_save(tmp_path / "ok.npz", y_train=yf))
    assert ok.num_classes == 3 and ok.train.labels.dtype == torch.int64
    half = yf.copy()
    half[4] = 1.5
    with pytest.raises(dp.DataError, match=r"non-integer labels .*y_train\[4\] = 1\.5"):
        _load(_save(tmp_path / "half.npz", y_train=half))
    half[4] = np.nan
    with pytest.raises(dp.DataError, match="NaN"):
        _load(_save(tmp_path / "nan.npz", y_train=half))


def test_text_labels_become_sorted_class_names(tmp_path):
    words = np.array(["emu", "cat", "dog"])[Y]
    d = _load(_save(tmp_path / "t.npz", y_train=words))
    assert d.class_names == ["cat", "dog", "emu"]
    full = torch.cat([d.train.labels, d.val.labels]).sort().values
    assert full.tolist() == sorted({"emu": 2, "cat": 0, "dog": 1}[w] for w in words)
    test, names = load_test(_save(tmp_path / "t2.npz", y_train=words), 16)
    assert names == ["cat", "dog", "emu"] and test.labels.tolist() == [2, 0, 1] * 3


def test_text_labels_follow_class_names_when_given(tmp_path):
    words = np.array(["emu", "cat", "dog"])[Y]
    d = _load(_save(tmp_path / "t.npz", y_train=words, class_names=np.array(["emu", "cat", "dog"])))
    assert d.class_names == ["emu", "cat", "dog"]
    assert d.test.labels.tolist() == Y[:9].tolist()
    with pytest.raises(dp.DataError, match="'owl'.* not in class_names"):
        _load(_save(tmp_path / "u.npz", y_train=words, y_test=np.array(["owl"] * 9),
                    class_names=np.array(["emu", "cat", "dog"])))


def test_labels_out_of_range_and_object_arrays(tmp_path):
    y = Y.copy()
    y[0] = -1
    with pytest.raises(dp.DataError, match="labels"):
        _load(_save(tmp_path / "neg.npz", y_train=y))
    with pytest.raises(dp.DataError, match="test labels span 0..5, but there are 3 classes"):
        _load(_save(tmp_path / "hi.npz", y_test=np.arange(9) % 6,
                    class_names=np.array(["a", "b", "c"])))
    with pytest.raises(dp.DataError, match="test labels fall outside"):
        load_test(_save(tmp_path / "hi2.npz", y_test=np.arange(9) % 6,
                        class_names=np.array(["a", "b", "c"])), 16)
    obj = np.array(["a", "b", 3] * 8, dtype=object)
    with pytest.raises(dp.DataError, match="cannot read .*dtype=str"):
        _load(_save(tmp_path / "obj.npz", y_train=obj))


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("kw, flag", [
    (dict(max_train=-5), "--max-train must be at least 1, got -5"),
    (dict(max_train=0), "--max-train"), (dict(max_test=0), "--max-test"),
    (dict(max_train=2.5), "--max-train must be a whole number"),
    (dict(val_fraction=0.0), "--val-fraction"), (dict(val_fraction=1.0), "--val-fraction"),
    (dict(val_fraction=-0.1), "--val-fraction"), (dict(val_fraction=float("nan")), "--val-fraction"),
    (dict(size=0), "--image-size must be at least 8, got 0"), (dict(size=4), "--image-size"),
])
def test_out_of_range_options_are_refused_by_name(tmp_path, kw, flag):
    with pytest.raises(dp.DataError, match=flag):
        check_data_options(**kw)
    size = kw.pop("size", 16)
    with pytest.raises(dp.DataError, match=flag):
        load_data(_save(tmp_path / "o.npz"), size, **kw)


def test_valid_options_pass_up_to_their_exact_bounds(tmp_path):
    """The bounds themselves are accepted, one step past them refused, and accepted options
    reach the loader: max_train=2 loads two training images (one held out)."""
    from deltapatch.data.checks import MIN_SIZE
    from deltapatch.preprocess import MAX_SIZE

    assert check_data_options() is None
    for kw in (dict(size=MIN_SIZE), dict(size=MAX_SIZE), dict(max_train=1), dict(max_test=1),
               dict(val_fraction=1e-9), dict(val_fraction=1 - 1e-9)):
        assert check_data_options(**kw) is None, kw
    for kw in (dict(size=MIN_SIZE - 1), dict(size=MAX_SIZE + 1), dict(max_train=0),
               dict(max_test=0)):
        with pytest.raises(dp.DataError):
            check_data_options(**kw)
    one_class = np.zeros(24, dtype=np.int64)
    data = load_data(_save(tmp_path / "v.npz", y_train=one_class), MIN_SIZE, max_train=2, max_test=3,
                      val_fraction=0.5)
    assert (len(data.train), len(data.val), len(data.test)) == (1, 1, 3)
    assert data.test.images.shape[-1] == MIN_SIZE


# ------------------------------------------------------------------ seeded subsets
def test_seeded_subset_is_the_loaders_selection():
    idx = seeded_subset(100, 7, seed=3)
    assert idx.tolist() == np.sort(np.random.default_rng(3).permutation(100)[:7]).tolist()
    assert seeded_subset(5, None, 0).tolist() == [0, 1, 2, 3, 4] == seeded_subset(5, 9, 0).tolist()
    old_cap = torch.randperm(100, generator=torch.Generator().manual_seed(3))[:7].sort().values
    assert torch.equal(seeded_subset(100, 7, 3, rng="torch"), old_cap)
    with pytest.raises(dp.DataError):
        seeded_subset(10, 0, 0)


def test_image_set_sample_and_max_train_pick_the_same_images(tmp_path):
    path = _save(tmp_path / "s.npz")
    full = load_data(path, 10, val_fraction=0.25, seed=4)
    small = load_data(path, 10, val_fraction=0.25, seed=4, max_train=12)
    chosen = seeded_subset(24, 12, 4)
    assert sorted(torch.cat([small.train.labels, small.val.labels]).tolist()) == \
        sorted(torch.as_tensor(Y)[chosen].tolist())
    s = ImageSet(torch.zeros(24, 3, 4, 4, dtype=torch.uint8), torch.arange(24))
    assert s.sample(5, 4).labels.tolist() == seeded_subset(24, 5, 4).tolist()
    assert s.sample(None, 4) is s and len(full.train) == 18


# ------------------------------------------------------------------ registry
def test_builtins_registry_refuses_duplicates():
    assert "digits" in BUILTINS and list_builtins() == sorted(list_builtins())
    with pytest.raises(RegistryError, match="data set named 'digits' is already registered"):
        builtin("digits")(lambda: ({}, None))
    with pytest.raises(dp.DataError, match="built-in name .*digits"):
        load_data("no_such", 16)
