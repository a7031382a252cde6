"""Hostile data files (issue 24, item 2): read within bounds or refused in one line, exit 2,
nothing written. Each case is a class: headers before allocation, labels in range, regular files
only, empty classes and 1-pixel images alike for folders and arrays, patch input sizes bounded."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from helpers import refused
from PIL import Image

import deltapatch as dp
from deltapatch.data import load_data
from deltapatch.data.npzfile import read_npz

TRAIN = ["train", "--backbone", "cifar_resnet20", "--image-size", "16", "--epochs", "1",
         "--batch-size", "16", "--no-augment", "--no-progress"]


def _arrays(n: int = 12, side: int = 8) -> dict:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return {"x_train": x, "y_train": y, "x_test": x[:6], "y_test": y[:6]}


def _npy(header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _train_refused(capsys, tmp_path, data, match: str) -> None:
    """``train`` on ``data`` exits 2 with one line containing ``match`` and writes nothing."""
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    refused(capsys, [*TRAIN, "--data", data, "--out", out], match)
    after = sorted(p.name for p in tmp_path.iterdir())  # no folder, no lock
    assert not out.exists() and after == before


def test_npy_header_claiming_3e13_rows_is_refused_before_allocating(tmp_path, capsys):
    members = {f"{k}.npy": _npy(np.lib.format.header_data_from_array_1_0(v), v.tobytes())
               for k, v in _arrays().items()}
    members["x_train.npy"] = _npy({"descr": "|u1", "fortran_order": False,
                                   "shape": (30_000_000_000_000, 28, 28)}, b"\0" * 64)
    bomb = _zip(tmp_path / "bomb.npz", members)
    _train_refused(capsys, tmp_path, bomb, "header claims shape (30000000000000, 28, 28)")


def test_arrays_over_the_memory_limit_are_refused_from_their_headers(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, **_arrays())
    with pytest.raises(dp.DataError, match="claim more than 100 bytes .*subset"):
        read_npz(path, max_bytes=100)


def test_empty_missing_keys_object_and_not_a_zip_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "empty.npz")
    _train_refused(capsys, tmp_path, tmp_path / "empty.npz", "holds no arrays")
    arrays = _arrays()
    del arrays["y_test"]
    np.savez(tmp_path / "nokey.npz", **arrays)
    _train_refused(capsys, tmp_path, tmp_path / "nokey.npz", "missing 'y_test'")
    np.savez(tmp_path / "obj.npz", **{**_arrays(), "y_train": np.array([0, "a"] * 6, object)})
    _train_refused(capsys, tmp_path, tmp_path / "obj.npz", "Python objects")
    (tmp_path / "text.npz").write_text("not a zip")
    _train_refused(capsys, tmp_path, tmp_path / "text.npz", "cannot read")


@pytest.mark.parametrize("label,match", [(2_000_000_000, "past the limit of 100,000 classes"),
                                         (-1, "negative labels"),
                                         (1e300, "past the limit")])
def test_labels_out_of_range_are_refused_before_classes_are_counted(label, match, tmp_path,
                                                                   capsys):
    """One label of 2e9 once meant 2e9 class names (20.7 GB); now one line, nothing sized."""
    arrays = _arrays()
    y = arrays["y_train"].astype(np.float64 if isinstance(label, float) else np.int64)
    y[0] = label
    np.savez(tmp_path / "big.npz", **{**arrays, "y_train": y})
    _train_refused(capsys, tmp_path, tmp_path / "big.npz", match)


def _png(path, side: int = 8) -> None:
    Image.new("RGB", (side, side), (10, 20, 30)).save(path)


def _folder(root, classes=("a", "b"), n: int = 3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _png(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("name", ["f.png", "noext"])
def test_fifo_in_an_image_folder_is_refused_not_waited_on(name, tmp_path, capsys):
    """A FIFO named f.png once hung ``train`` forever; one without a suffix is never opened."""
    data = _folder(tmp_path / "data")
    os.mkfifo(data / "a" / name)
    if name == "f.png":
        _train_refused(capsys, tmp_path, data, "not a regular file (a FIFO)")
    else:
        assert load_data(str(data), 16).num_classes == 2


def test_fifo_or_device_as_the_data_file_is_refused(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.npz")
    _train_refused(capsys, tmp_path, tmp_path / "pipe.npz", "not a regular file (a FIFO)")
    os.mkfifo(tmp_path / "pipe.zip")
    _train_refused(capsys, tmp_path, tmp_path / "pipe.zip", "not a regular file (a FIFO)")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").mkdir()
    os.symlink("/dev/zero", tmp_path / "d" / "a" / "zero.png")
    _train_refused(capsys, tmp_path, tmp_path / "d", "not a regular file (a character device)")


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_an_empty_class_folder_is_refused(layout, tmp_path, capsys):
    data = tmp_path / "data"
    if layout == "flat":
        _folder(data)
        (data / "empty").mkdir()
        where = "empty"
    else:
        for split in ("train", "test"):
            _folder(data / split)
        (data / "train" / "c").mkdir()
        (data / "test" / "c").mkdir()
        where = "test/c"
    (data / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    _train_refused(capsys, tmp_path, data, f"class folder {where} holds no images")


def test_one_pixel_images_are_refused_alike_in_arrays_and_folders(tmp_path, capsys):
    np.savez(tmp_path / "tiny.npz", **{**_arrays(), "x_test": np.zeros((6, 1, 1), np.uint8)})
    _train_refused(capsys, tmp_path, tmp_path / "tiny.npz",
                   "is 1x1 pixels; images need at least 2 pixels a side")
    data = _folder(tmp_path / "data")
    _png(data / "a" / "tiny.png", side=1)
    _train_refused(capsys, tmp_path, data, "is 1x1 pixels; images need at least 2 pixels a side")


@pytest.fixture(scope="module")
def patch_folder(tmp_path_factory):
    """A 3-class patch of a cifar_resnet20 whose weights are in ``weights.safetensors`` beside it
    (``BACKBONE`` loads them)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("patch")
    backbone = dp.load_backbone("cifar_resnet20")
    save_file(backbone.state_dict(), root / "weights.safetensors")
    BACKBONE[3] = str(root / "weights.safetensors")
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights=BACKBONE[3]))
    model.add_patch("p", num_classes=3, stages=1)
    return model.save_patch("p", root / "p")


BACKBONE = ["--backbone", "cifar_resnet20", "--weights", None]


def _with_size(folder, size: int, dest):
    dest.mkdir()
    (dest / "patch.safetensors").write_bytes((folder / "patch.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["preprocess"]["size"] = size
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_patch_input_size_is_bounded_by_the_backbone_and_a_flag_raises_it(patch_folder,
                                                                         tmp_path, capsys):
    """A tampered preprocess.size of 4096 once made predict of one 32 px image take minutes."""
    big = _with_size(patch_folder, 4096, tmp_path / "big")
    image = tmp_path / "x.png"
    _png(image, 32)
    before = {p: p.read_bytes() for p in big.iterdir()}
    for cmd in (["predict", "--patch", big, image],
                ["eval", "--patch", big, "--data", tmp_path / "none.npz"],
                ["verify", "--patch", big]):
        refused(capsys, [cmd[0], *BACKBONE, *cmd[1:]],
                "asks for 4096 px inputs, over the limit of 512 px for this 32 px backbone")
    assert {p: p.read_bytes() for p in big.iterdir()} == before
    refused(capsys, ["predict", *BACKBONE, "--max-image-size", "5000",
                     "--patch", big, image], "--max-image-size must be in 8..4096")
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights=BACKBONE[3]))
    with pytest.raises(dp.PatchError, match="max-image-size 4096"):
        model.load_patch(big)
    assert not model.patches
    ok = _with_size(patch_folder, 40, tmp_path / "ok")  # within the limit: loads and predicts
    from deltapatch.cli import main
    assert main(["predict", *BACKBONE, "--patch", str(ok), str(image)]) == 0
    raised = _with_size(patch_folder, 520, tmp_path / "raised")
    assert main(["predict", *BACKBONE, "--max-image-size", "520",
                 "--patch", str(raised), str(image)]) == 0
