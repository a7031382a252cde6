"""Checks on what a data set is given: loading options, pixel arrays and label arrays.

Each check turns a bad input into one ``DataError`` that names the option, split or file and what
to do about it, instead of letting it through as silently wrong data (labels truncated, one NaN
turning off the [0, 1] → [0, 255] scaling, a negative ``max_train`` using every image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import DataError
from ..patch import MAX_CLASSES
from ..preprocess import MAX_SIZE, MIN_SIZE

MIN_IMAGE_SIDE = 2  # a 1-pixel-wide image is a broken or placeholder file, not a picture

SPLITS = ("train", "val", "test")


def _int_option(flag: str, value: object, low: int, hint: str, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{flag} must be a whole number, got {value!r}")
    if value < low:
        raise DataError(f"{flag} must be at least {low}, got {value}; {hint}")
    if high is not None and value > high:
        raise DataError(f"{flag} must be at most {high}, got {value}; {hint}")


def check_data_options(*, size: int | None = None, max_train: int | None = None,
                       max_test: int | None = None, val_fraction: float | None = None) -> None:
    """Refuse out-of-range loading options before any data is read or any training starts.

    The CLI calls this on its arguments, the loaders on theirs; ``None`` skips an option (for
    ``max_train`` / ``max_test`` it means "all images"). Messages name the command-line flag.
    """
    if size is not None:
        _int_option("--image-size", size, MIN_SIZE, "images are resized to size x size",
                    MAX_SIZE)
    if max_train is not None:
        _int_option("--max-train", max_train, 1, "leave it out to use every training image")
    if max_test is not None:
        _int_option("--max-test", max_test, 1, "leave it out to use every test image")
    if val_fraction is not None:
        ok = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
        if not ok or not (0.0 < float(val_fraction) < 1.0) or math.isnan(float(val_fraction)):
            raise DataError(f"--val-fraction must lie strictly between 0 and 1 (the share of "
                            f"train held out for validation), got {val_fraction!r}")


# ------------------------------------------------------------------ pixels
def check_image_side(height: int, width: int, where: str) -> None:
    """The one size check of every image, whether it came as a file or as an array row."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DataError(f"{where} is {width}x{height} pixels; images need at least "
                        f"{MIN_IMAGE_SIDE} pixels a side (remove or replace it)")


def _range(a: np.ndarray) -> tuple[float, float]:
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def _float_scale(floats: Mapping[str, np.ndarray], where: str) -> float:
    """×255 when every float split lies in [0, 1], ×1 when in [0, 255]: one decision for the
    whole data set, so train and test can never be scaled differently."""
    spans = {}
    for key, a in floats.items():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DataError(f"{where}: {key} has {bad} non-finite pixel values (NaN or inf); "
                            "fix or drop those images")
        spans[key] = _range(a)
    lo, hi = min(s[0] for s in spans.values()), max(s[1] for s in spans.values())
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: float pixels span {lo:g}..{hi:g}; expected [0, 1] or [0, 255]")
    if hi <= 1.0:
        return 255.0
    unit = [k for k, (_, h) in spans.items() if 0 < h <= 1.0]
    if unit:
        raise DataError(f"{where}: {', '.join(unit)} look like [0, 1] floats but other splits "
                        "reach above 1; store every split on one scale")
    return 1.0


def _int_scale(key: str, a: np.ndarray, where: str) -> float:
    if a.dtype == np.uint8:
        return 1.0
    if a.dtype == np.uint16:
        return 1.0 / 257.0  # 65535 → 255 exactly, like a 16-bit PNG
    lo, hi = _range(a)
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: {key} is {a.dtype} with values {lo:g}..{hi:g}; integer pixels "
                        "must be 0..255 (or uint16 for 16-bit images)")
    return 1.0


def pixel_scales(arrays: Mapping[str, np.ndarray], where: str) -> dict[str, float]:
    """The factor that brings each image array to 0..255, decided for all splits together.

    uint8 ×1; uint16 ×1/257; other integers ×1 if within 0..255 (else refused); floats ×255 if
    every float array lies in [0, 1], else ×1 if within [0, 255]. Non-finite values are refused.
    """
    scales: dict[str, float] = {}
    floats = {}
    for key, a in arrays.items():
        kind = a.dtype.kind
        if kind == "f":
            floats[key] = a
        elif kind in "iu":
            scales[key] = _int_scale(key, a, where)
        else:
            raise DataError(f"{where}: {key} has dtype {a.dtype}; images must be uint8, uint16, "
                            "integers in 0..255, or floats in [0, 1] or [0, 255]")
    if floats:
        factor = _float_scale(floats, where)
        scales.update({k: factor for k in floats})
    return scales


def describe_scales(scales: Mapping[str, float]) -> str:
    """How pixels were read, for ``TaskData.info`` and the log ("" when all are uint8)."""
    notes = {1.0: None, 255.0: "[0, 1] values scaled by 255", 1 / 257.0: "uint16 divided by 257"}
    parts = sorted({notes.get(s, f"scaled by {s:g}") for s in scales.values()} - {None})
    return "; ".join(parts)


# ------------------------------------------------------------------ labels
def _in_range(key: str, y: np.ndarray, where: str) -> None:
    """Class indices lie in 0..MAX_CLASSES-1, checked before anything is sized by them: the
    class count is the largest label + 1, so one label of 2,000,000,000 would otherwise mean
    2e9 class names and a head to match."""
    if not y.size:
        return
    lo, hi = y.min(), y.max()
    if lo < 0:
        raise DataError(f"{where}: {key} holds negative labels (e.g. {lo}); labels are class "
                        "indices 0..C-1")
    if hi >= MAX_CLASSES:
        raise DataError(f"{where}: {key} holds label {hi}, past the limit of {MAX_CLASSES:,} "
                        "classes; labels are class indices 0..C-1 (C = largest label + 1)")


def _whole_labels(key: str, y: np.ndarray, where: str) -> np.ndarray:
    finite = np.isfinite(y)
    if not finite.all():
        raise DataError(f"{where}: {key} has {int((~finite).sum())} NaN or infinite labels")
    _in_range(key, y, where)
    frac = np.flatnonzero(y != np.round(y))
    if frac.size:
        i = int(frac[0])
        raise DataError(f"{where}: {key} holds non-integer labels ({frac.size}, e.g. {key}[{i}] = "
                        f"{float(y[i]):g}); labels must be class indices 0..C-1")
    return y.astype(np.int64)


def label_arrays(labels: Mapping[str, np.ndarray], names: list[str] | None, where: str
                 ) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Labels of every split as int64 class indices, and the class names if labels were text.

    Integer labels in 0..MAX_CLASSES-1 pass; floats must be whole numbers in that range; text
    labels (``str`` arrays) are mapped to indices: by ``class_names`` when given, else by their
    sorted unique values across all splits, which then become the class names.
    """
    out: dict[str, np.ndarray] = {}
    text = {k: y for k, y in labels.items() if y.dtype.kind in "US"}
    if text:
        if len(text) != len(labels):
            raise DataError(f"{where}: some label arrays are text and some numbers; use one kind")
        vocab = list(names) if names is not None else sorted(
            {str(v) for y in text.values() for v in y.reshape(-1)})
        index = {c: i for i, c in enumerate(vocab)}
        for key, y in text.items():
            unknown = sorted({str(v) for v in y.reshape(-1)} - index.keys())
            if unknown:
                raise DataError(f"{where}: {key} has labels {unknown[:5]} that are not in "
                                "class_names")
            out[key] = np.array([index[str(v)] for v in y.reshape(-1)], dtype=np.int64)
        return out, vocab
    for key, y in labels.items():
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind == "f":
            out[key] = _whole_labels(key, y, where)
        elif y.dtype.kind in "iub":
            _in_range(key, y, where)
            out[key] = y.astype(np.int64)
        else:
            raise DataError(f"{where}: {key} has dtype {y.dtype}; labels must be integers "
                            "0..C-1 or strings (class names)")
    return out, names
