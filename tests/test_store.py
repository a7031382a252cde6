"""deltapatch.store: artefact folders survive bad input, full disks and kill -9 without losing data."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import struct
import time
from pathlib import Path

import pytest
import torch

from deltapatch import store
from deltapatch.errors import PatchError
from deltapatch.store import (
    CONFIG_FILE,
    TENSORS_FILE,
    FolderLock,
    check_writable,
    content_hash,
    read_config_json,
    read_folder,
    recover,
    tensor_shapes,
    write_folder,
)

CONFIG = {"format": "deltapatch.patch/2", "name": "t"}


def tensors(seed: int = 0, n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, 8, generator=g), "b": torch.arange(5, dtype=torch.int64)}


def hidden(target: Path) -> list[str]:
    """Leftovers of saves (the lock file is meant to stay)."""
    return [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")
            and not p.name.endswith(".lock")]


def saved(tmp_path: Path, seed: int = 0) -> Path:
    """A saved patch with training leftovers that every later save must keep."""
    target = tmp_path / "out"
    write_folder(target, CONFIG, tensors(seed))
    (target / "run").mkdir()
    (target / "run" / "ckpt.pt").write_bytes(b"checkpoint")
    (target / "metrics.json").write_text("{}")
    return target


def assert_complete(target: Path, seeds: tuple[int, ...] = (0, 1)) -> None:
    config, got = read_folder(target)
    assert any(torch.equal(got["w"], tensors(s)["w"]) for s in seeds)
    assert (target / "run" / "ckpt.pt").read_bytes() == b"checkpoint"
    assert (target / "metrics.json").read_text() == "{}"
    assert hidden(target) == []


@pytest.fixture(params=["exchange", "two-renames"])
def swap(request, monkeypatch):
    """Run a test with renameat2(RENAME_EXCHANGE) and with the fallback used where it is missing."""
    if request.param == "two-renames":
        monkeypatch.setattr(store, "_renameat2", None)
    elif store._renameat2 is None:
        pytest.skip("no renameat2 here")
    return request.param


def test_roundtrip(tmp_path, swap):
    target = saved(tmp_path)
    write_folder(target, CONFIG, tensors(1), metadata={"format": "x"})
    config, got = read_folder(target)
    assert config["name"] == "t" and config["content_hash"] == content_hash(target / TENSORS_FILE)
    assert torch.equal(got["w"], tensors(1)["w"]) and got["b"].dtype == torch.int64
    assert tensor_shapes(target) == {"w": ((64, 8), "float32"), "b": ((5,), "int64")}
    assert_complete(target, (1,))


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "out"
        write_folder(target, CONFIG, tensors())
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755
    assert (target / CONFIG_FILE).stat().st_mode & 0o777 == 0o644
    assert (target / TENSORS_FILE).stat().st_mode & 0o777 == 0o644


def test_content_hash_mismatch_refused(tmp_path):
    target = saved(tmp_path)
    data = bytearray((target / TENSORS_FILE).read_bytes())
    data[-1] ^= 1
    (target / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(PatchError, match="does not match its config"):
        read_folder(target)


def test_missing_hash_needs_opt_in(tmp_path):
    target = saved(tmp_path)
    config = read_config_json(target)
    del config["content_hash"]
    (target / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PatchError, match="no content_hash"):
        read_folder(target)
    assert torch.equal(read_folder(target, require_hash=False)[1]["w"], tensors()["w"])


def test_nan_refused_on_save_and_on_read(tmp_path):
    target = saved(tmp_path)
    bad = tensors(1)
    bad["w"][3, 2] = float("nan")
    with pytest.raises(PatchError, match="'w'.*NaN"):
        write_folder(target, CONFIG, bad)
    assert_complete(target, (0,))  # the good patch is still there
    from safetensors.torch import save
    data = save({"w": torch.tensor([1.0, float("inf")], dtype=torch.float16)})
    config = {**CONFIG, "content_hash": store.sha256(data)}
    (target / TENSORS_FILE).write_bytes(data)
    (target / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PatchError, match="'w'.*NaN or Inf"):
        read_folder(target)
    assert read_folder(target, check_finite=False)[1]["w"].shape == (2,)


BAD_CONFIGS = {"list": b"[1, 2]", "null": b"null", "string": b'"patch"', "number": b"3", "cut": b"{",
               "not-utf8": b"\xff\xfe", "nan": b'{"a": NaN}', "deep": b"[" * 100000 + b"]" * 100000,
               "huge": b'{"a": "' + b"x" * (1 << 20) + b'"}'}


@pytest.mark.parametrize("content", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_refused(tmp_path, content):
    target = saved(tmp_path)
    (target / CONFIG_FILE).write_bytes(content)
    with pytest.raises(PatchError):
        read_config_json(target)
    with pytest.raises(PatchError):
        read_folder(target)


def test_no_config_refused(tmp_path):
    with pytest.raises(PatchError, match="not a patch folder"):
        read_folder(tmp_path)


@pytest.mark.parametrize("name", [CONFIG_FILE, TENSORS_FILE])
def test_fifo_refused_without_blocking(tmp_path, name):
    target = saved(tmp_path)
    (target / name).unlink()
    os.mkfifo(target / name)
    with pytest.raises(PatchError, match="not a patch folder"):
        read_folder(target)


def header_file(folder: Path, claimed: int, rest: bytes = b"") -> None:
    (folder / TENSORS_FILE).write_bytes(struct.pack("<Q", claimed) + rest)


OUTSIDE = "lies outside its data"


def unhashed(target: Path) -> Path:
    """The folder with its config's content hash removed (as a patch/1 config has none), so
    that ``read_folder(..., require_hash=False)`` reaches its own checks of the tensors file."""
    config = json.loads((target / CONFIG_FILE).read_text())
    del config["content_hash"]
    (target / CONFIG_FILE).write_text(json.dumps(config))
    return target


def header_only(folder: Path, header: bytes, data: bytes = b"") -> None:
    """A tensors file whose length prefix is the header's true length (so the header parses)."""
    header_file(folder, len(header), header + data)


@pytest.mark.parametrize("make, says", [
    (lambda f: header_file(f, 10**15), "header of"),          # claims a petabyte header
    (lambda f: header_file(f, 100, b"{}"), "header of"),       # header longer than the file
    (lambda f: header_file(f, 2, b"[]"), "not a JSON object"),
    (lambda f: header_file(f, 4, b"\xff\xff\xff\xff"), "header is not JSON"),
    (lambda f: header_only(f, b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'),
     OUTSIDE),
    (lambda f: header_only(f, b'{"w":{"dtype":"Q99","shape":[1],"data_offsets":[0,4]}}',
                           b"\0" * 4), "malformed or unknown entry"),
    (lambda f: header_only(f, b'{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
                           b"\0" * 4), OUTSIDE),
    # negative dimensions whose product fits the data: refused for the sign, not the size
    (lambda f: header_only(f, b'{"w":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}}',
                           b"\0" * 16), OUTSIDE),
    (lambda f: header_only(f, b'{"w":{"dtype":"F32","shape":["x"],"data_offsets":[0,4]}}',
                           b"\0" * 4), OUTSIDE),
    (lambda f: header_file(f, 2**64 - 1), f"header of {2**64 - 1} bytes"),  # read unsigned
    (lambda f: header_file(f, 0), "header is not JSON"),     # an empty header is read, then refused
    (lambda f: (f / TENSORS_FILE).write_bytes(b"\0" * 7), "header of -1"),  # no whole prefix
    (lambda f: (f / TENSORS_FILE).write_bytes(b""), "header of -1"),
    (lambda f: (f / TENSORS_FILE).write_bytes(b"\x01\x02"), "header of -1"),
    (lambda f: (f / TENSORS_FILE).write_bytes((f / TENSORS_FILE).read_bytes()[:-7]),  # truncated
     OUTSIDE),
])
def test_bad_tensors_file_refused(tmp_path, make, says):
    """Each reader refuses, naming the file and what is wrong with it."""
    target = unhashed(saved(tmp_path))
    make(target)
    for read in (tensor_shapes, lambda t: read_folder(t, require_hash=False)):
        with pytest.raises(PatchError, match=says) as err:
            read(target)
        assert str(target / TENSORS_FILE) in str(err.value)


def test_a_tensor_with_a_zero_dimension_reads_beside_others(tmp_path):
    """The size check stops multiplying only past the data's length: a (16, 0) tensor next to
    16 bytes of data is empty, not 16 elements."""
    target = tmp_path / "out"
    write_folder(target, CONFIG, {"e": torch.zeros(16, 0), "w": torch.ones(4)})
    assert tensor_shapes(target) == {"e": ((16, 0), "float32"), "w": ((4,), "float32")}
    assert read_folder(target)[1]["e"].shape == (16, 0)


def test_a_header_that_safetensors_refuses_is_damaged_naming_the_file(tmp_path):
    """Our bounds pass (the tensor lies inside the data) but the data has bytes no tensor owns."""
    target = unhashed(saved(tmp_path))
    header_only(target, b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 8)
    with pytest.raises(PatchError, match="patch.safetensors is damaged: ") as err:
        read_folder(target, require_hash=False)
    assert str(target / TENSORS_FILE) in str(err.value)


def test_non_finite_tensors_are_refused_naming_the_file(tmp_path):
    target = unhashed(saved(tmp_path))
    header_only(target, b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                struct.pack("<f", float("nan")))
    with pytest.raises(PatchError, match="tensor 'w' holds NaN or Inf") as err:
        read_folder(target, require_hash=False)
    assert str(err.value).startswith(str(target / TENSORS_FILE))


def test_a_file_shorter_than_its_size_said_is_truncated(tmp_path, monkeypatch):
    """st_size can lie (a file shrinking under us): the read's own length decides."""
    target = saved(tmp_path)
    header_file(target, 100, b"{}")
    real = os.fstat
    monkeypatch.setattr("deltapatch.tensorfile.os.fstat",
                        lambda fd: os.stat_result((*real(fd)[:6], 1000, *real(fd)[7:])))
    with pytest.raises(PatchError, match=f"{TENSORS_FILE} is truncated"):
        tensor_shapes(target)


@pytest.mark.parametrize("name", [CONFIG_FILE, TENSORS_FILE])
def test_a_read_error_names_the_file_and_the_reason(tmp_path, monkeypatch, name):
    target = saved(tmp_path)

    def failing_open(file, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    if name == TENSORS_FILE:
        read_config_json(target)  # the config is read first: fail only the tensors file
        config = json.loads((target / CONFIG_FILE).read_text())
        monkeypatch.setattr("deltapatch.tensorfile.read_config_json", lambda folder: config)
    monkeypatch.setattr("deltapatch.tensorfile.open", failing_open, raising=False)
    with pytest.raises(PatchError, match=f"cannot read .*{name}: Input/output error$"):
        read_folder(target)


def test_a_config_at_the_size_limit_reads(tmp_path, monkeypatch):
    target = saved(tmp_path)
    size = (target / CONFIG_FILE).stat().st_size
    monkeypatch.setattr("deltapatch.tensorfile.MAX_CONFIG_BYTES", size)
    assert read_config_json(target)["name"] == "t"
    monkeypatch.setattr("deltapatch.tensorfile.MAX_CONFIG_BYTES", size - 1)
    with pytest.raises(PatchError, match="larger than"):
        read_config_json(target)


def test_a_config_that_is_no_object_is_refused_naming_its_type(tmp_path):
    target = saved(tmp_path)
    (target / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(PatchError, match=r"config.json holds a JSON list, not an object"):
        read_config_json(target)


def test_finite_checks_keep_each_dtype_range():
    """A float64 value past float32's range is finite; float8 (no isfinite kernel) is checked
    through float32; NaN is refused in every float dtype."""
    from deltapatch.tensorfile import refuse_non_finite

    refuse_non_finite({"big": torch.tensor([1e300], dtype=torch.float64),
                       "f8": torch.ones(2, dtype=torch.float8_e4m3fn)}, "here")
    for dtype in (torch.float64, torch.float16, torch.float8_e4m3fn):
        with pytest.raises(PatchError, match="here: tensor 'x' holds NaN or Inf"):
            refuse_non_finite({"x": torch.tensor([0.0, float("nan")]).to(dtype)}, "here")


def test_config_with_a_json_constant_is_refused_naming_it(tmp_path):
    target = saved(tmp_path)
    (target / CONFIG_FILE).write_text('{"format": NaN}')
    with pytest.raises(PatchError, match="not valid JSON: NaN is not allowed"):
        read_config_json(target)


def test_why_an_os_error_is_its_reason_else_the_message_else_the_type():
    from deltapatch.tensorfile import why

    assert why(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert why(ValueError("bad value")) == "bad value"
    assert why(ValueError()) == "ValueError"


def test_oversized_tensors_file_refused_unread(tmp_path, monkeypatch):
    target = saved(tmp_path)
    monkeypatch.setattr("deltapatch.tensorfile.MAX_TENSOR_FILE_BYTES", 100)
    with pytest.raises(PatchError, match="limit"):
        read_folder(target)
    size = (target / TENSORS_FILE).stat().st_size  # the limit itself is allowed
    monkeypatch.setattr("deltapatch.tensorfile.MAX_TENSOR_FILE_BYTES", size)
    assert torch.equal(read_folder(target)[1]["w"], tensors(0)["w"])


def test_header_length_limit_is_inclusive(tmp_path, monkeypatch):
    target = saved(tmp_path)
    n = struct.unpack("<Q", (target / TENSORS_FILE).read_bytes()[:8])[0]
    monkeypatch.setattr("deltapatch.tensorfile.MAX_HEADER_BYTES", n)
    assert set(tensor_shapes(target)) == {"w", "b"}
    monkeypatch.setattr("deltapatch.tensorfile.MAX_HEADER_BYTES", n - 1)
    with pytest.raises(PatchError, match=f"header of {n} bytes"):
        tensor_shapes(target)


def test_symlinked_target_keeps_link(tmp_path, swap):
    real = saved(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert write_folder(link, CONFIG, tensors(1)) == real
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.equal(read_folder(link)[1]["w"], tensors(1)["w"])
    assert_complete(real, (1,))


@pytest.mark.parametrize("kind", ["dangling", "to-file"])
def test_bad_symlink_refused(tmp_path, kind):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / ("nowhere" if kind == "dangling" else "f"))
    (tmp_path / "f").write_text("keep")
    with pytest.raises(PatchError, match="symbolic link"):
        write_folder(link, CONFIG, tensors())
    with pytest.raises(PatchError, match="symbolic link"):
        check_writable(link)
    assert link.is_symlink() and (tmp_path / "f").read_text() == "keep"


def test_file_target_refused(tmp_path):
    (tmp_path / "f").write_text("keep")
    file = tmp_path / "f"
    for call in (lambda: write_folder(file, CONFIG, tensors()), lambda: check_writable(file)):
        with pytest.raises(PatchError, match="is a file"):
            call()
    assert (tmp_path / "f").read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.parametrize("where", [".", "..", "/", "sub/.."])
def test_cwd_and_ancestors_refused(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for call in (lambda: write_folder(where, CONFIG, tensors()), lambda: check_writable(where)):
        with pytest.raises(PatchError, match="choose a new folder name"):
            call()
    assert sorted(os.listdir(tmp_path)) == ["sub"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_parent_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(PatchError, match="not writable"):
        check_writable(tmp_path / "ro" / "out")
    check_writable(tmp_path / "new" / "deeper" / "out")


def test_unwritable_parent_refused_even_as_root(tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(PatchError, match=r"^cannot write .*out: .* not writable by this account; choose"):
        check_writable(tmp_path / "out")


def test_parent_is_a_file_refused(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(PatchError, match="is a file"):
        check_writable(tmp_path / "f" / "sub" / "out")
    with pytest.raises(PatchError, match="^cannot write"):
        write_folder(tmp_path / "f" / "out", CONFIG, tensors())
    assert (tmp_path / "f").read_text() == "keep"


def test_check_writable_accepts_new_and_existing(tmp_path):
    """It only checks: a new --out is not created, an existing one is left as it was, and the
    save it vouched for then succeeds."""
    new = tmp_path / "a" / "b"
    assert check_writable(new) is None
    assert not (tmp_path / "a").exists()
    write_folder(new, CONFIG, tensors())
    assert read_folder(new)[1]["w"].shape == (64, 8)
    existing = saved(tmp_path)
    before = sorted((p.relative_to(existing), p.read_bytes() if p.is_file() else None)
                    for p in existing.rglob("*"))
    assert check_writable(existing) is None
    assert sorted((p.relative_to(existing), p.read_bytes() if p.is_file() else None)
                  for p in existing.rglob("*")) == before
    write_folder(existing, CONFIG, tensors(1))
    assert torch.equal(read_folder(existing)[1]["w"], tensors(1)["w"])


def in_child(fn) -> int:
    """Exit status of ``fn`` run in a forked process: 0 if it raised PatchError, 1 if it returned."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(1)
        except PatchError:
            os._exit(0)
        finally:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_lock_contention(tmp_path):
    target = saved(tmp_path)
    with FolderLock(target):
        with pytest.raises(PatchError, match=rf"pid {os.getpid()}\) is writing out; wait"):
            FolderLock(target).__enter__()  # a second open file description contends
        write_folder(target, CONFIG, tensors(1))  # the holder itself may save
        assert in_child(lambda: FolderLock(target).__enter__()) == 0  # another process may not
        assert in_child(lambda: write_folder(target, CONFIG, tensors(0))) == 0
        assert in_child(lambda: recover(target)) == 0
    assert in_child(lambda: write_folder(target, CONFIG, tensors(2))) == 1  # released
    assert torch.equal(read_folder(target)[1]["w"], tensors(2)["w"])
    assert not (target.parent / ".out.lock").exists()  # its holder removed it


def test_lock_file_is_removed_after_success_failure_and_refusal(tmp_path):
    target = saved(tmp_path)
    with FolderLock(target) as held:
        assert held.path.read_text().strip() == str(os.getpid())
        with pytest.raises(PatchError, match="is writing"):
            FolderLock(target).__enter__()  # refused: must not remove the holder's file
        assert held.path.exists()
    with pytest.raises(RuntimeError), FolderLock(target):
        raise RuntimeError("a run that fails while holding the lock")
    with pytest.raises(KeyboardInterrupt), FolderLock(target):
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lock_taken_on_a_file_its_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """A contender that opened the lock file just before its holder released (and unlinked) it
    must not keep a lock on the unlinked file: that would exclude no one."""
    target = saved(tmp_path)
    holder = FolderLock(target).__enter__()
    late = FolderLock(target)
    opened = []
    real_open = FolderLock._open

    def open_then_release(self):
        fd = real_open(self)
        if not opened:  # the first open sees the holder's file, which goes away right after
            holder.__exit__()
        opened.append(fd)
        return fd

    monkeypatch.setattr(FolderLock, "_open", open_then_release)
    with late:
        assert len(opened) == 2  # re-opened after finding its first file unlinked
        assert os.fstat(late._fd).st_ino == os.stat(late.path).st_ino
        assert in_child(lambda: FolderLock(target).__enter__()) == 0  # and it excludes others
    assert not late.path.exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_nth(real, n):
    """``real`` that raises ENOSPC on its n-th call."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            enospc()
        return real(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("name,n", [("_write_file", 1), ("_write_file", 2), ("_fsync_dir", 1),
                                    ("_exchange", 1), ("rename", 1), ("rename", 2)])
def test_disk_full_keeps_old_patch(tmp_path, monkeypatch, swap, name, n):
    target = saved(tmp_path)
    if name == "rename":
        monkeypatch.setattr(store.os, "rename", fail_nth(os.rename, n))
    else:
        monkeypatch.setattr(store, name, fail_nth(getattr(store, name), n))
    with pytest.raises(PatchError, match=r"^cannot write .*out: No space left on device( \(the new .*)?$"):
        write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    assert_complete(target, (0,) if (name, swap) != ("rename", "exchange") else (0, 1))


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs, not even the save's own clean-up."""


def crash_nth(real, n):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Crash
        return real(*args, **kwargs)
    return wrapped


# (function, call that crashes, crash after the call instead of before it)
STEPS = [("_write_file", 2, False), ("_fsync_dir", 1, True), ("_install", 1, False),
         ("_exchange", 1, True), ("rename", 1, True), ("rename", 2, True), ("rename", 3, False),
         ("rmtree", 1, False), ("rmtree", 1, True)]


@pytest.mark.parametrize("step", STEPS, ids=[f"{f}{n}{'-after' if a else ''}" for f, n, a in STEPS])
def test_crash_at_each_step_then_recover(tmp_path, monkeypatch, swap, step):
    name, n, after = step
    target = saved(tmp_path)
    (target / "run" / "log.jsonl").write_text("1\n")
    owner = {"rename": store.os, "rmtree": store.shutil}.get(name, store)
    real = getattr(owner, name)
    if after:
        def wrapped(*args, **kwargs):
            wrapped.calls += 1
            out = real(*args, **kwargs)
            if wrapped.calls == n:
                raise Crash
            return out
        wrapped.calls = 0
        monkeypatch.setattr(owner, name, wrapped)
    else:
        monkeypatch.setattr(owner, name, crash_nth(real, n))
    monkeypatch.setattr(store, "_recover_locked", lambda real: None)  # no clean-up: a real crash
    try:
        write_folder(target, CONFIG, tensors(1))
    except Crash:
        pass
    monkeypatch.undo()
    recover(target)
    assert_complete(target)
    assert (target / "run" / "log.jsonl").read_text() == "1\n"


def test_recover_restores_old_folder_between_renames(tmp_path):
    target = saved(tmp_path)
    old = tmp_path / f".out.old-{os.getpid() + 1}-0123456789ab"
    os.rename(target, old)
    (tmp_path / ".out.tmp-7-aaaaaaaaaaaa").mkdir()
    (tmp_path / ".out.tmp-7-aaaaaaaaaaaa" / CONFIG_FILE).write_text("{")  # half-written new one
    (tmp_path / ".outer.tmp-7-aaaaaaaaaaaa").mkdir()  # another target's: not ours to touch
    recover(target)
    assert_complete(target, (0,))
    assert (tmp_path / ".outer.tmp-7-aaaaaaaaaaaa").is_dir()


@pytest.mark.parametrize("leftover", ["tmp", "old"])
def test_recover_keeps_both_on_name_clash(tmp_path, leftover):
    """A crash leftover's file that clashes with the folder's own is kept beside it, under
    ``<name>.recovered-<8 hex digits>``, never over it."""
    target = saved(tmp_path)
    old = tmp_path / f".out.{leftover}-7-bbbbbbbbbbbb"
    old.mkdir()
    (old / "metrics.json").write_text("older")
    recover(target)
    assert (target / "metrics.json").read_text() == "{}"
    [kept] = [n for n in os.listdir(target) if n.startswith("metrics.json.")]
    assert re.fullmatch(r"metrics\.json\.recovered-[0-9a-f]{8}", kept)
    assert (target / kept).read_text() == "older" and hidden(target) == []


def test_kill_9_at_random_times(tmp_path, swap):
    """A writer looping saves is SIGKILLed at random moments; each time one complete patch remains.
    A fixed number of kills, not as many as fit a wall-clock budget: on a busy machine that
    budget held fewer kills than the test required."""
    target = saved(tmp_path)
    write_folder(target, CONFIG, tensors(0, n=4096))
    rng = random.Random(0)
    for _ in range(15):
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(10**6):
                    write_folder(target, CONFIG, tensors(i % 2, n=4096))
            finally:
                os._exit(3)
        time.sleep(rng.uniform(0, 0.03))
        os.kill(pid, signal.SIGKILL)
        assert os.waitpid(pid, 0)[1] & 0x7F == signal.SIGKILL
        recover(target)
        config, got = read_folder(target)
        assert any(torch.equal(got["w"], tensors(s, n=4096)["w"]) for s in (0, 1))
        assert (target / "run" / "ckpt.pt").read_bytes() == b"checkpoint"
        assert (target / "metrics.json").read_text() == "{}"
        assert hidden(target) == []
