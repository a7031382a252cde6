"""Image files: decoding one (also used for uploads and ``deltapatch predict``) and reading a
folder or zip of class folders.

Decoding is where untrusted bytes meet PIL, so it is strict: a file that cannot be read, declares
more than ``MAX_IMAGE_PIXELS`` pixels (a decompression bomb), or is thinner than
``MIN_IMAGE_SIDE`` gives one ``DataError`` that names the file. Every PIL mode becomes 8-bit RGB
by its meaning rather than by clipping: 16-bit grey is divided by 257, float grey scaled from
[0, 1] or [0, 255], and transparent pixels are laid on white.
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
from .checks import check_image_side, pixel_scales
from .files import open_regular, read_regular
from .sets import resize_images

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
MAX_IMAGE_PIXELS = 64_000_000  # 64 MP: 8000 x 8000; larger is refused before decoding
BACKGROUND = (255, 255, 255)  # what transparent pixels become
# Formats PIL may open: those of IMAGE_EXTS (phone JPEGs that PIL reads as MPO come in as JPEG).
# No EPS etc., which would hand uploaded bytes to external programs such as Ghostscript.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

Raw = dict  # {"x_train", "y_train", "x_test", "y_test", ...}


class ImageTooLarge(DataError):
    """More pixels than the caller's limit (a server answers 413)."""


class NotAnImage(DataError):
    """Bytes that no allowed format reads (a server answers 415)."""


def _bomb(where: str, pixels: int, limit: int) -> DataError:
    return ImageTooLarge(f"image {where} has {pixels:,} pixels, more than the limit {limit:,}; "
                         "shrink it first")


def _gray16(im: Image.Image, where: str) -> np.ndarray:
    """Modes I;16* and I (how PIL opens 16-bit grey PNG / TIFF): 0..65535 → 0..255 by /257."""
    a = np.asarray(im).astype(np.float64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"image {where}: {im.mode} values {a.min():g}..{a.max():g} are not 16-bit")
    return np.round(a / 257.0).astype(np.uint8)


def _gray_float(im: Image.Image, where: str) -> np.ndarray:
    """Mode F: [0, 1] scaled by 255, [0, 255] taken as is, anything else refused."""
    a = np.asarray(im)
    scale = pixel_scales({"pixels": a}, f"image {where}")["pixels"]
    return np.round(a.astype(np.float64) * scale).astype(np.uint8)


def _to_rgb(im: Image.Image, where: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I"):
        g = _gray16(im, where)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        g = _gray_float(im, where)
        return np.repeat(g[..., None], 3, axis=2)
    if (mode in ("P", "L", "RGB") and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        back = Image.new("RGBA", im.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(back, im).convert("RGB"))
    return np.asarray(im.convert("RGB"))  # RGB, L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, where: str, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes → uint8 (H, W, 3); ``where`` names the file in errors, ``max_pixels``
    is the caller's limit (default ``MAX_IMAGE_PIXELS``).

    The size is checked from the header before any pixel is decoded. PIL's own guard
    (``Image.MAX_IMAGE_PIXELS``) raises ``DecompressionBombError`` past twice its limit and
    warns past it; both come back as the same ``DataError`` (the warning too, where warnings
    are errors).
    """
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise _bomb(where, w * h, max_pixels)
            check_image_side(h, w, f"image {where}")
            return _to_rgb(im, where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(f"image {where} is too large to decode safely ({err})") from None
    except UnidentifiedImageError as err:
        raise NotAnImage(f"cannot read image {where}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {where}: {err}") from None


def _fit(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Mixed image sizes: resize each image on its own to ``size`` x ``size`` (through
    ``resize_images``, as if it had come in a folder of its own size), so that no image's size
    decides the others'. Equal sizes are left for ``to_image_tensor`` to resize in one go."""
    if len({im.shape for im in images}) <= 1:
        return images
    out = []
    for im in images:
        if im.shape[:2] == (size, size):
            out.append(im)
            continue
        t = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None].float()
        out.append(resize_images(t, size)[0].permute(1, 2, 0).numpy())
    return out


def _list_files(path: Path) -> tuple[list[str], list[str], Callable[[str], bytes]]:
    """Image files and folders under ``path`` (relative names), and how to read one file. A
    file is read only if it is a regular file (``files.read_regular``): a FIFO or device named
    ``f.png`` is refused instead of blocking or streaming forever."""
    if path.suffix == ".zip":
        try:
            zf = zipfile.ZipFile(open_regular(path, "zip file"))
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"cannot read {path} as a zip: {err}") from None
        names = zf.namelist()
        files = [n for n in names if not n.endswith("/") and Path(n).suffix.lower() in IMAGE_EXTS]
        return files, [n.rstrip("/") for n in names if n.endswith("/")], zf.read
    entries = sorted(path.rglob("*"))
    files = [str(p.relative_to(path)) for p in entries
             if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()]
    folders = [str(p.relative_to(path)) for p in entries if p.is_dir()]
    return files, folders, lambda rel: read_regular(path / rel, "image file")


def _refuse_empty_classes(path: Path, files: list[str], folders: list[str], split: bool) -> None:
    """A class folder without images is refused, not silently dropped (it would shift every
    later class index by one). Hidden folders (``.ipynb_checkpoints``) are not classes."""
    depth = 2 if split else 1
    full = {str(Path(f).parent) for f in files}
    for folder in folders:
        parts = Path(folder).parts
        if (len(parts) == depth and (not split or parts[0] in ("train", "test"))
                and not parts[-1].startswith(".") and folder not in full):
            raise DataError(f"{path}: class folder {folder} holds no images; add images or "
                            "remove the folder")


def read_image_tree(path: Path, size: int, only: str | None = None) -> tuple[Raw, list[str]]:
    """An image folder or a zip of one: ``train/<class>/*`` + ``test/<class>/*``, or one level
    of ``<class>/*`` (split 80/20 with seed 0). ``only`` decodes one split of a split layout.

    Args:
        size: the square side the caller will resize to; images of mixed sizes are each resized
            to it here (equal-sized ones are left as they are).
    """
    files, folders, read = _list_files(path)
    if not files:
        raise DataError(f"no images found in {path} (expected class folders of image files)")
    parts = [Path(f).parts for f in files]
    split_layout = all(len(p) == 3 and p[0] in ("train", "test") for p in parts)
    if not split_layout and not all(len(p) == 2 for p in parts):
        raise DataError(f"{path}: expected train/<class>/image and test/<class>/image, or "
                        "<class>/image; found mixed depths")
    _refuse_empty_classes(path, files, folders, split_layout)
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
        images = _fit([decode_image(read(f), f"{path}/{f}") for f in xs], size)
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
