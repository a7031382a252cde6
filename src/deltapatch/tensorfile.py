"""Reading task folders that may be untrusted: ``config.json`` and ``patch.safetensors`` with
every size bounded before anything is allocated, the tensors matched against the
``content_hash`` their config records, and NaN/Inf refused. Never unpickles anything.
(Writing them crash-safely is :mod:`deltapatch.store`.)"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_bytes

from .errors import PatchError

CONFIG_FILE = "config.json"
TENSORS_FILE = "patch.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_TENSOR_FILE_BYTES = 8 << 30
MAX_HEADER_BYTES = 16 << 20
# safetensors dtype code -> (bytes per element, torch dtype name)
_DTYPES = {"BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E4M3": (1, "float8_e4m3fn"),
           "F8_E5M2": (1, "float8_e5m2"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
           "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
           "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64")}


def why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def refuse_non_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            native = t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
            probe = t if native else t.float()  # float8 has no isfinite kernel
            if not bool(torch.isfinite(probe).all()):
                raise PatchError(f"{where}: tensor '{name}' holds NaN or Inf values (the training diverged?)")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_hash(file: Path) -> str:
    """``sha256:<hex>`` of a tensors file, streamed so that a large file is never held whole."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_config_json(folder: str | Path) -> dict:
    """The folder's config as a dict; size-bounded before reading, since the folder may be untrusted."""
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        hint = ("; it holds training state only (run/): save the patch into it with "
                "model.save_patch(name, folder) or fit_patch(..., out=folder)"
                if (Path(folder) / "run").is_dir() else "")
        raise PatchError(f"{folder} is not a patch folder: no {CONFIG_FILE} in it{hint}")
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # st_size can lie (pipes, /proc); the read cannot
    except OSError as err:
        raise PatchError(f"cannot read {file}: {why(err)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise PatchError(f"{file} is larger than {MAX_CONFIG_BYTES} bytes; it is not a patch config")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PatchError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise PatchError(f"{file} holds a JSON {type(value).__name__}, not an object: not a patch config")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _parse_header(head: bytes, data_len: int, file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Validate a safetensors header against the data it describes, so that no read runs past it."""
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PatchError(f"{file} is damaged: its header is not JSON") from None
    if not isinstance(header, dict):
        raise PatchError(f"{file} is damaged: its header is not a JSON object")
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            size, dtype = _DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            ints = all(type(v) is int and v >= 0 for v in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            raise PatchError(f"{file} is damaged: tensor '{name}' has a malformed or unknown entry") from None
        count = 1
        for dim in shape if ints else ():
            count *= dim
            if count > data_len:  # stop before a crafted shape grows a huge integer
                break
        if not ints or not begin <= end <= data_len or end - begin != count * size:
            raise PatchError(f"{file} is damaged or truncated: tensor '{name}' lies outside its data")
        shapes[name] = (shape, dtype)
    return shapes


def _read_tensors_file(file: Path, whole: bool) -> tuple[bytes, int, int]:
    """Length prefix + header (the whole file if ``whole``), header length and file size.

    Lengths are checked against the file size before anything is allocated, so a crafted length
    cannot make us reserve gigabytes; only regular files are opened (a FIFO would block forever).
    """
    if not file.is_file():
        raise PatchError(f"{file.parent} is not a patch folder: no regular file {file.name} in it")
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_TENSOR_FILE_BYTES:
                raise PatchError(f"{file} is {size} bytes, over the {MAX_TENSOR_FILE_BYTES}-byte limit")
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if n < 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise PatchError(f"{file} is damaged or truncated: header of {n} bytes in {size}")
            f.seek(0)
            data = f.read(size if whole else 8 + n)
    except OSError as err:
        raise PatchError(f"cannot read {file}: {why(err)}") from None
    if len(data) < 8 + n:
        raise PatchError(f"{file} is truncated")
    return data, n, size


def tensor_shapes(folder: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, torch dtype name) from the header alone: cheap checks before loading anything."""
    file = Path(folder) / TENSORS_FILE
    data, n, size = _read_tensors_file(file, whole=False)
    return _parse_header(data[8:], size - 8 - n, file)


def read_folder(folder: str | Path, *, check_finite: bool = True,
                require_hash: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and tensors of an artefact folder, checked so that no damaged patch reaches a model.

    The tensors file is read once, and that one copy is hashed, validated and parsed, so the checks
    and the loaded tensors see the same bytes. ``require_hash=False`` admits configs written before
    ``content_hash`` existed (format ``deltapatch.patch/1``).
    """
    config = read_config_json(folder)
    file = Path(folder) / TENSORS_FILE
    data, n, _ = _read_tensors_file(file, whole=True)
    expected = config.get("content_hash")
    if expected is not None:
        if expected != sha256(data):
            raise PatchError(f"{TENSORS_FILE} does not match its config (content hash {expected}) in "
                             f"{folder}: the file was changed or damaged")
    elif require_hash:
        raise PatchError(f"{folder}/{CONFIG_FILE} records no content_hash; it is not a complete patch")
    _parse_header(data[8:8 + n], len(data) - 8 - n, file)
    try:
        tensors = _load_bytes(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as err:
        raise PatchError(f"{file} is damaged: {err}") from None
    if check_finite:
        refuse_non_finite(tensors, str(file))
    return config, tensors
