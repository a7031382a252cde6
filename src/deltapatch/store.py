"""Artefact folders on disk: one ``config.json`` plus one ``patch.safetensors``, saved crash-safely.

Every ``train --out`` folder goes through here, so bad input must lose nothing:

* A save is written into a hidden sibling ``.NAME.tmp-<pid>-<hex>``, fsynced, and swapped in with one
  ``renameat2(RENAME_EXCHANGE)`` (two renames where that is missing). Other entries of the old folder
  (``run/``, ``metrics.json``, ...) then move into the new one and the old one is deleted. A kill at
  any point leaves the old or the new patch at the target; the next save (or :func:`recover`)
  finishes the move of the other entries and removes the hidden leftovers.
* :class:`FolderLock` (``flock`` on ``.NAME.lock``) makes that clean-up safe: whoever holds the lock
  knows the writer of any leftover is dead.
* Reading (:mod:`deltapatch.tensorfile`, re-exported here) trusts no size: config and header lengths
  are bounded before anything is allocated, the tensors file must match the ``content_hash`` its
  config records, and NaN/Inf are refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save as _save_bytes

from .errors import PatchError
from .tensorfile import (  # noqa: F401  (reading is re-exported: one module for callers)
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_HEADER_BYTES,
    MAX_TENSOR_FILE_BYTES,
    TENSORS_FILE,
    content_hash,
    read_config_json,
    read_folder,
    refuse_non_finite,
    sha256,
    tensor_shapes,
    why,
)

_OWN = (CONFIG_FILE, TENSORS_FILE)
_HELD: dict[str, int] = {}  # resolved target -> pid of the process whose FolderLock holds it


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


class FolderLock:
    """Exclusive, non-blocking lock on one target folder, held by a save or a whole training run.

    ``flock`` on ``.NAME.lock`` beside the resolved target: the kernel drops it when its holder dies,
    so a stale lock never needs breaking, and holding it proves leftovers belong to dead writers.
    Entering also runs :func:`recover`, so the holder always starts from a consistent folder.
    The holder deletes the lock file on release (also on error or Ctrl-C), so nothing stays
    beside the target; whoever locked a file that was deleted meanwhile locks again (re-checked
    after acquiring), so two processes never hold locks on different files. Only a killed
    holder leaves the file, and the next holder's release removes it.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = _resolve(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        while True:  # until the file we locked is still the one at self.path
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                who = f"pid {holder}" if holder.isdigit() else "pid unknown"
                raise PatchError(f"another process ({who}) is writing {self.target.name}; "
                                 "wait for it to finish or choose another --out") from None
            if self._still_there(fd):
                break
            os.close(fd)  # its holder unlinked it while we waited: lock the new file
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
                raise PatchError(f"cannot finish an interrupted save of {self.target}: {why(err)}") from None
            raise
        return self

    def _open(self) -> int:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            try:  # another account's lock file: locking it needs no write access
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise PatchError(f"cannot write {self.target}: {why(err)}") from None

    def _still_there(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``self.path``: a holder unlinks it on release, so
        a lock taken on an unlinked file would exclude no one who opens the path afterwards."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(self, *exc: object) -> None:
        _HELD.pop(str(self.target), None)
        if self._fd is not None:
            with contextlib.suppress(OSError):  # unlinked while locked: no one else holds it
                os.unlink(self.path)
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
            raise PatchError(f"cannot finish an interrupted save of {real}: {why(err)}") from None
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
    refuse_non_finite(flat, f"refusing to save {real}")
    try:
        data = _save_bytes(flat, metadata=metadata)
        body = {**{k: v for k, v in config.items() if k != "content_hash"}, "content_hash": sha256(data)}
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
            raise PatchError(f"cannot write {real}: {why(err)}"
                             + (" (the new patch is in place; finishing the save failed)" if done else "")
                             ) from None
        raise
