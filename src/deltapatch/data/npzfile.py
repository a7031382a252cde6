"""Reading an ``.npz`` that may be untrusted, within bounds.

``np.load`` trusts each member's ``.npy`` header: a header claiming shape (3e13, 28, 28) makes it
allocate that array before reading a byte (``_ArrayMemoryError``, or the kernel's OOM killer
where memory is overcommitted). Here every header is read first, and its dtype (no objects:
those are pickles), its shape and its byte count are checked against the member's stored size
and against a memory limit before any array is allocated; only then are the arrays read, from
the same open file.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy

from ..errors import DataError
from .files import open_regular

MAX_MEMBERS = 256  # an .npz here holds a handful of arrays (splits, class names, offsets)
MAX_ARRAY_BYTES = 64 << 30
"""Most bytes the arrays of one ``.npz`` may claim together, on any machine (see
:func:`byte_limit`)."""

_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


def byte_limit() -> int:
    """Half this machine's memory, at most ``MAX_ARRAY_BYTES``: the arrays are copied at least
    once more (resized, converted to tensors) after they are read."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return MAX_ARRAY_BYTES
    return min(MAX_ARRAY_BYTES, memory // 2)


def read_npz(path: str | Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` by key, each header checked before its array is
    allocated; never unpickles. Anything malformed, empty or over ``max_bytes`` (default
    :func:`byte_limit`) is one :class:`DataError` that names the file and the key."""
    limit = byte_limit() if max_bytes is None else max_bytes
    with open_regular(path, ".npz file") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                members = _members(zf, path)
                total = 0
                for key, info in members.items():
                    total += _checked_bytes(zf, info, f"{path}: {key}")
                    if total > limit:
                        raise DataError(f"{path}: its arrays claim more than {limit:,} bytes "
                                        f"(at '{key}'); this machine cannot hold them: use a "
                                        "subset of the data")
                return {key: _read_array(zf, info, f"{path}: {key}")
                        for key, info in members.items()}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
            raise DataError(f"cannot read {path} as .npz: {err or type(err).__name__}") from None


def _members(zf: zipfile.ZipFile, path: str | Path) -> dict[str, zipfile.ZipInfo]:
    infos = [i for i in zf.infolist() if i.filename.endswith(".npy") and not i.is_dir()]
    if not infos:
        raise DataError(f"{path} holds no arrays; an .npz needs x_train, y_train, x_test, "
                        "y_test (np.savez(path, x_train=..., ...))")
    if len(infos) > MAX_MEMBERS:
        raise DataError(f"{path} holds {len(infos)} arrays, more than {MAX_MEMBERS}; an .npz "
                        "needs x_train, y_train, x_test, y_test")
    return {i.filename[:-len(".npy")]: i for i in infos}


def _header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header (numpy bounds the header's own length)."""
    try:
        version = npy.read_magic(f)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise DataError(f"{where}: .npy format version {version} is not read here; save "
                            "it with numpy's np.savez")
        shape, _, dtype = reader(f)
    except ValueError as err:
        raise DataError(f"{where}: damaged .npy header ({err})") from None
    if dtype.hasobject:
        raise DataError(f"cannot read {where}: it holds Python objects (read only by "
                        "unpickling, which deltapatch never does); store text (labels, class_names) as str arrays, e.g. "
                        "np.array(names, dtype=str)")
    return shape, dtype


def _checked_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> int:
    """The bytes member ``info``'s array claims: its header must describe exactly the data the
    member stores, so no shape can claim more than the archive holds."""
    with zf.open(info) as f:
        shape, dtype = _header(f, where)
        header = f.tell()
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes != info.file_size - header:
        raise DataError(f"{where}: header claims shape {shape} {dtype} ({nbytes:,} bytes) but the "
                        f"file stores {info.file_size - header:,} bytes: damaged or truncated")
    return nbytes


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    try:
        with zf.open(info) as f:
            return npy.read_array(f, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{where}: cannot read the array ({err})") from None
