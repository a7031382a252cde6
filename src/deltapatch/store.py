"""Artefact folders on disk: one ``config.json`` plus one ``patch.safetensors``, saved crash-safely.

Every ``train --out`` folder goes through here, so bad input must lose nothing:

* A save is written into a hidden sibling ``.NAME.tmp-<pid>-<hex>``, fsynced, and swapped in with one
  ``renameat2(RENAME_EXCHANGE)`` (two renames where that is missing). Other entries of the old folder
  (``run/``, ``metrics.json``, ...) then move into the new one and the old one is deleted. A kill at
  any point leaves the old or the new patch at the target; the next save (or :func:`recover`)
  finishes the move of the other entries and removes the hidden leftovers.
* :class:`FolderLock` (``flock`` on ``.NAME.lock``) makes that clean-up safe: whoever holds the lock
  knows the writer of any leftover is dead.
* Reading trusts no size: config and header lengths are bounded before anything is allocated, the
  tensors file must match the ``content_hash`` its config records, and NaN/Inf are refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _save_bytes

from .errors import PatchError

CONFIG_FILE = "config.json"
TENSORS_FILE = "patch.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_TENSOR_FILE_BYTES = 8 << 30
MAX_HEADER_BYTES = 16 << 20

_OWN = (CONFIG_FILE, TENSORS_FILE)
_HELD: dict[str, int] = {}  # resolved target -> pid of the process whose FolderLock holds it
# safetensors dtype code -> (bytes per element, torch dtype name)
_DTYPES = {"BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E4M3": (1, "float8_e4m3fn"),
           "F8_E5M2": (1, "float8_e5m2"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
           "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
           "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64")}


def _load_renameat2():
    """libc's ``renameat2`` (glibc >= 2.28), or None where the platform has none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2 = _load_renameat2()


def _resolve(target: str | Path) -> Path:
    """The real folder a save to ``target`` writes; refuses targets whose replacement would lose data.

    A symlink is followed so that the link itself is never replaced; the cwd and its ancestors are
    refused because swapping them out would pull the folder from under the user's shell.
    """
    path = Path(target).absolute()
    if path.is_symlink():
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise PatchError(f"{target} is a symbolic link to a missing folder ({os.readlink(path)}); "
                             "fix the link or choose a new folder name") from None
        if not real.is_dir():
            raise PatchError(f"{target} is a symbolic link to {real}, which is not a folder; "
                             "choose a new folder name")
    else:
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as err:
            raise PatchError(f"cannot resolve {target}: {err}") from None
    if real.exists() and not real.is_dir():
        raise PatchError(f"{target} is a file, not a folder; choose a new folder name")
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if real.parent == real or (cwd is not None and (real == cwd or real in cwd.parents)):
        raise PatchError(f"{target} is the current folder or one of its parents; choose a new folder name")
    return real


def _hidden(real: Path) -> list[Path]:
    """Leftovers of interrupted saves of ``real``; the exact pattern keeps other targets' out."""
    pattern = re.compile(rf"\.{re.escape(real.name)}\.(tmp|old)-\d+-[0-9a-f]{{12}}")
    try:
        names = sorted(e.name for e in os.scandir(real.parent) if pattern.fullmatch(e.name))
    except FileNotFoundError:
        return []
    return [real.parent / n for n in names]


def _fresh(real: Path, kind: str) -> Path:
    return real.parent / f".{real.name}.{kind}-{os.getpid()}-{secrets.token_hex(6)}"


def _fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable, not just visible."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # some file systems cannot fsync a folder; nothing to do there
            raise
    finally:
        os.close(fd)


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


class FolderLock:
    """Exclusive, non-blocking lock on one target folder, held by a save or a whole training run.

    ``flock`` on ``.NAME.lock`` beside the resolved target: the kernel drops it when its holder dies,
    so a stale lock never needs breaking, and holding it proves leftovers belong to dead writers.
    Entering also runs :func:`recover`, so the holder always starts from a consistent folder.
    The lock file itself is kept: deleting it would let two processes lock different files.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = _resolve(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            try:  # another account's lock file: locking it needs no write access
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise PatchError(f"cannot write {self.target}: {_why(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "pid unknown"
            raise PatchError(f"another process ({who}) is writing {self.target.name}; "
                             "wait for it to finish or choose another --out") from None
        with contextlib.suppress(OSError):  # the pid only serves the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD[str(self.target)] = os.getpid()
        try:
            _recover_locked(self.target)
        except BaseException as err:
            self.__exit__()
            if isinstance(err, OSError):
                raise PatchError(f"cannot finish an interrupted save of {self.target}: {_why(err)}") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _HELD.pop(str(self.target), None)
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def _holds(real: Path) -> bool:
    """Whether this process (not a forked parent) already holds ``real``'s lock."""
    return _HELD.get(str(real)) == os.getpid()


def recover(target: str | Path) -> None:
    """Finish or undo an interrupted save of ``target`` and remove its hidden leftovers.

    Undo where the new folder never reached the target, finish (move ``run/`` and the like into
    it) where it did. Never deletes anything but old copies of ``config.json``/``patch.safetensors``.
    """
    real = _resolve(target)
    if _holds(real):
        try:
            _recover_locked(real)
        except OSError as err:
            raise PatchError(f"cannot finish an interrupted save of {real}: {_why(err)}") from None
    elif real.parent.is_dir():
        with FolderLock(real):  # entering recovers
            pass


def _recover_locked(real: Path) -> None:
    hidden = _hidden(real)
    if not hidden:
        return
    if not os.path.lexists(real):
        # Killed between the two renames of the fallback swap: put the old folder back. A folder
        # holding extra entries is an old one too (a new one holds only config and tensors).
        olds = [h for h in hidden if ".old-" in h.name and h.is_dir() and not h.is_symlink()]
        olds += [h for h in hidden if h.is_dir() and not h.is_symlink() and _extras(h)]
        if olds:
            os.rename(olds[0], real)
            _fsync_dir(real.parent)
            hidden.remove(olds[0])
    for h in hidden:
        if h.is_dir() and not h.is_symlink():
            if real.is_dir():
                _move_extras(h, real)
            elif _extras(h):
                continue  # nowhere to put them: keep the data, try again next time
            shutil.rmtree(h)
        else:
            h.unlink()
    _fsync_dir(real.parent)


def _extras(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n not in _OWN)


def _move_extras(src: Path, dst: Path) -> None:
    """Move what is not the patch itself (``run/``, metrics) from an old folder into the new one.

    A name already taken in ``dst`` gets a ``.recovered-<hex>`` suffix instead of overwriting.
    """
    names = _extras(src)
    for name in names:
        dest = dst / name
        if os.path.lexists(dest):
            dest = dst / f"{name}.recovered-{secrets.token_hex(4)}"
        os.rename(src / name, dest)
    if names:
        _fsync_dir(dst)
        _fsync_dir(src)


def check_writable(target: str | Path) -> None:
    """Refuse, before hours of training, an ``--out`` that the final save could not write."""
    real = _resolve(target)
    probe = real if real.exists() else real.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PatchError(f"cannot create {real}: {probe} is a file; choose another --out")
    for folder in {probe, real.parent} if real.exists() else {probe}:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PatchError(f"cannot write {real}: {folder} is read-only or not writable by this "
                             "account; choose another --out")


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file; mode 0o666 minus umask, so other accounts can read the patch."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            native = t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
            probe = t if native else t.float()  # float8 has no isfinite kernel
            if not bool(torch.isfinite(probe).all()):
                raise PatchError(f"{where}: tensor '{name}' holds NaN or Inf values (the training diverged?)")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders; False where the kernel or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(tmp: Path, real: Path) -> None:
    """Put the finished ``tmp`` at ``real``; at every instant one complete patch is there."""
    if not os.path.lexists(real):
        os.rename(tmp, real)
        _fsync_dir(real.parent)
        return
    if _exchange(tmp, real):
        old = tmp  # the exchange left the old folder under the temp name
    else:
        old = _fresh(real, "old")
        os.rename(real, old)
        try:
            os.rename(tmp, real)
        except BaseException:
            if not os.path.lexists(real):
                os.rename(old, real)
            raise
    _fsync_dir(real.parent)
    _move_extras(old, real)
    shutil.rmtree(old)
    _fsync_dir(real.parent)


def write_folder(target: str | Path, config: dict, tensors: dict[str, torch.Tensor],
                 *, metadata: dict[str, str] | None = None) -> Path:
    """Save ``config`` and ``tensors`` as the artefact folder ``target``, replacing it atomically.

    Everything is checked before the disk is touched (JSON, size, NaN/Inf), so a bad save cannot
    replace a good patch. ``config`` gains ``content_hash``, the sha256 of the tensors file, which
    binds the two files together. Takes the folder's lock unless this process holds it already.
    Returns the real folder written (a symlinked ``target`` keeps pointing at it).
    """
    real = _resolve(target)
    if not isinstance(config, dict):
        raise PatchError(f"a patch config must be a JSON object, not {type(config).__name__}")
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    _check_finite(flat, f"refusing to save {real}")
    try:
        data = _save_bytes(flat, metadata=metadata)
        body = {**{k: v for k, v in config.items() if k != "content_hash"}, "content_hash": _sha256(data)}
        text = (json.dumps(body, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError, SafetensorError) as err:
        raise PatchError(f"cannot save {real}: {err}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise PatchError(f"cannot save {real}: its config is {len(text)} bytes, over {MAX_CONFIG_BYTES}")
    if _holds(real):
        _save_locked(real, text, data)
    else:
        with FolderLock(real):
            _save_locked(real, text, data)
    return real


def _save_locked(real: Path, text: bytes, data: bytes) -> None:
    try:
        _recover_locked(real)
        tmp = _fresh(real, "tmp")
        os.mkdir(tmp, 0o777)  # the umask applies, unlike mkdtemp's 0700
        _write_file(tmp / TENSORS_FILE, data)  # tensors first: the config names their hash
        _write_file(tmp / CONFIG_FILE, text)
        _fsync_dir(tmp)
        _install(tmp, real)
    except BaseException as err:
        with contextlib.suppress(OSError):  # if this fails too, leftovers wait for the next save
            _recover_locked(real)  # undoes a half-written temp; never deletes run/ or metrics
        if isinstance(err, OSError):
            done = (real / CONFIG_FILE).is_file() and (real / CONFIG_FILE).read_bytes() == text
            raise PatchError(f"cannot write {real}: {_why(err)}"
                             + (" (the new patch is in place; finishing the save failed)" if done else "")
                             ) from None
        raise


def _sha256(data: bytes) -> str:
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
        raise PatchError(f"{folder} is not a patch folder: no {CONFIG_FILE} in it")
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # st_size can lie (pipes, /proc); the read cannot
    except OSError as err:
        raise PatchError(f"cannot read {file}: {_why(err)}") from None
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
        raise PatchError(f"cannot read {file}: {_why(err)}") from None
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
        if expected != _sha256(data):
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
        _check_finite(tensors, str(file))
    return config, tensors
