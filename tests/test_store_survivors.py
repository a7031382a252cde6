"""deltapatch.store, continued: behaviour that mutation testing (issue 28) found untested.

Crashes are simulated by planting the hidden leftovers a killed save leaves beside its target
(``.NAME.tmp-<pid>-<12 hex>``, ``.NAME.old-<pid>-<12 hex>``), failures by making one system call
fail, and a kernel without ``renameat2`` by a fake that fails with the chosen errno.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from deltapatch import store
from deltapatch.errors import PatchError
from deltapatch.store import (
    CONFIG_FILE,
    TENSORS_FILE,
    FolderLock,
    check_writable,
    content_hash,
    read_folder,
    recover,
    write_folder,
)
from test_store import CONFIG, assert_complete, hidden, saved, swap, tensors  # noqa: F401  (swap: fixture)

EIO = OSError(errno.EIO, os.strerror(errno.EIO))
SUFFIX = " (the new patch is in place; finishing the save failed)"


def raising(err: BaseException):
    def fn(*args, **kwargs):
        raise err
    return fn


def fail_first(real, err: BaseException):
    """``real`` that raises ``err`` on its first call only."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise err
        return real(*args, **kwargs)
    return wrapped


def plain_patch(folder: Path, seed: int) -> None:
    """A complete patch folder holding only config and tensors (a save that kept no run/)."""
    write_folder(folder, CONFIG, tensors(seed))


def same_w(folder: Path, seed: int) -> bool:
    return torch.equal(read_folder(folder)[1]["w"], tensors(seed)["w"])


# ---------------------------------------------------------------- recovery of interrupted saves

def test_a_first_save_killed_while_writing_leaves_no_target_and_no_leftover(tmp_path, monkeypatch):
    """No old patch existed: the half-written temp folder must be removed, never installed."""
    monkeypatch.chdir(tmp_path)  # a non-empty cwd: recovery must list the leftover, not the cwd
    target = tmp_path / "out"
    tmp = tmp_path / ".out.tmp-7-aaaaaaaaaaaa"
    tmp.mkdir()
    (tmp / TENSORS_FILE).write_bytes(b"\0" * 16)
    (tmp / CONFIG_FILE).write_text("{")
    recover(target)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_save_killed_between_the_two_renames_puts_back_an_old_folder_without_extras(tmp_path):
    """The old folder holds only config and tensors (no run/): its ``.old-`` name alone marks it
    as the patch to restore; the complete new one beside it is discarded."""
    target = tmp_path / "out"
    plain_patch(target, 0)
    os.rename(target, tmp_path / ".out.old-7-0123456789ab")
    plain_patch(tmp_path / "new", 1)
    os.rename(tmp_path / "new", tmp_path / ".out.tmp-7-bbbbbbbbbbbb")
    recover(target)
    assert same_w(target, 0)
    assert sorted(os.listdir(target)) == sorted([CONFIG_FILE, TENSORS_FILE])
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_hidden_folder_holding_a_run_is_restored_whatever_its_name(tmp_path):
    """With the target missing, a leftover holding entries besides the patch (run/, metrics) is
    an old folder, even under a ``.tmp-`` name: it goes back to the target, nothing is lost."""
    target = saved(tmp_path)
    os.rename(target, tmp_path / ".out.tmp-7-cccccccccccc")
    recover(target)
    assert_complete(target, (0,))
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_stray_file_with_a_leftover_name_is_removed(tmp_path, target_exists):
    """A plain file matching the leftover pattern is neither a patch to restore nor a folder to
    empty: recovery just deletes it and leaves the target as it was."""
    target = saved(tmp_path) if target_exists else tmp_path / "out"
    (tmp_path / ".out.tmp-7-dddddddddddd").write_text("junk")
    recover(target)
    assert sorted(os.listdir(tmp_path)) == (["out"] if target_exists else [])
    if target_exists:
        assert_complete(target, (0,))


def test_recovery_keeps_a_leftover_with_data_while_the_target_is_no_folder(tmp_path):
    """A lock made for a folder that a file then replaced: an old folder with a run/ has nowhere
    to go, so it is kept for next time, and recovery still clears the leftovers after it."""
    target = tmp_path / "out"
    lock = FolderLock(target)
    target.write_text("a file now")
    old = tmp_path / ".out.old-7-0123456789ab"
    old.mkdir()
    (old / "run").mkdir()
    (old / "run" / "ckpt.pt").write_bytes(b"checkpoint")
    (tmp_path / ".out.tmp-7-eeeeeeeeeeee").mkdir()
    (tmp_path / ".out.tmp-7-eeeeeeeeeeee" / CONFIG_FILE).write_text("{")
    with lock:
        pass
    assert sorted(os.listdir(tmp_path)) == [".out.old-7-0123456789ab", "out"]
    assert (old / "run" / "ckpt.pt").read_bytes() == b"checkpoint"
    assert target.read_text() == "a file now"


def test_recover_while_holding_the_lock_cleans_up_without_locking_again(tmp_path):
    """A run that holds its folder's lock may call recover(): it must not contend with itself."""
    target = saved(tmp_path)
    with FolderLock(target):
        tmp = tmp_path / ".out.tmp-7-aaaaaaaaaaaa"
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text("{")
        recover(target)
        assert hidden(target) == []
    assert_complete(target, (0,))


def plant_old_with_metrics(tmp_path: Path) -> None:
    old = tmp_path / ".out.old-7-0123456789ab"
    old.mkdir()
    (old / "notes.txt").write_text("keep me")


def test_a_recovery_that_fails_on_entering_the_lock_names_the_target_and_the_reason(tmp_path, monkeypatch):
    target = saved(tmp_path)
    plant_old_with_metrics(tmp_path)
    monkeypatch.setattr(store.os, "rename", raising(EIO))
    with pytest.raises(PatchError) as err:
        FolderLock(target).__enter__()
    assert str(err.value) == f"cannot finish an interrupted save of {target}: Input/output error"
    monkeypatch.undo()
    assert not (tmp_path / ".out.lock").exists()  # released on the way out
    recover(target)
    assert (target / "notes.txt").read_text() == "keep me" and hidden(target) == []


def test_a_recovery_that_fails_under_a_held_lock_names_the_target_and_the_reason(tmp_path, monkeypatch):
    target = saved(tmp_path)
    with FolderLock(target):
        plant_old_with_metrics(tmp_path)
        monkeypatch.setattr(store.os, "rename", raising(EIO))
        with pytest.raises(PatchError) as err:
            recover(target)
        monkeypatch.undo()
        assert str(err.value) == f"cannot finish an interrupted save of {target}: Input/output error"
    recover(target)
    assert (target / "notes.txt").read_text() == "keep me" and hidden(target) == []


# ---------------------------------------------------------------- the folder lock

def test_a_released_lock_no_longer_lets_this_process_skip_locking(tmp_path):
    """After release, this process's saves must lock again: another holder refuses them."""
    target = saved(tmp_path)
    with FolderLock(target):
        pass
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file description: another holder
        with pytest.raises(PatchError, match="is writing out"):
            write_folder(target, CONFIG, tensors(1))
        with pytest.raises(PatchError, match="is writing out"):
            recover(target)
    finally:
        os.close(fd)
    assert_complete(target, (0,))


def test_releasing_a_lock_never_taken_or_twice_does_nothing(tmp_path):
    """A stale release must not fail, nor remove the lock file of whoever holds the lock now."""
    target = saved(tmp_path)
    FolderLock(target).__exit__()
    with FolderLock(target) as first:
        pass
    first.__exit__()
    with FolderLock(target) as second:
        first.__exit__()
        assert second.path.exists()
        with pytest.raises(PatchError, match="is writing"):
            FolderLock(target).__enter__()
    assert not second.path.exists()


def test_a_lock_whose_file_was_deleted_meanwhile_is_released_quietly(tmp_path):
    target = saved(tmp_path)
    with FolderLock(target) as held:
        held.path.unlink()
    with FolderLock(target):  # released: it can be taken again
        pass


def test_a_lock_file_this_account_cannot_write_is_still_locked(tmp_path, monkeypatch):
    """Another account's lock file (left by its killed holder) opens read-only: the lock is taken
    all the same and the save goes through; only the pid cannot be written into it."""
    target = saved(tmp_path)
    lock_file = tmp_path / ".out.lock"
    lock_file.write_text("")
    real_open = os.open

    def no_write_access(path, flags, *args, **kwargs):
        if Path(path) == lock_file and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(store.os, "open", no_write_access)
    write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    assert_complete(target, (1,))


def test_the_lock_file_is_not_executable(tmp_path):
    """Created with mode 0o666 minus the umask, like any data file."""
    old = os.umask(0o022)
    try:
        with FolderLock(tmp_path / "out") as held:
            assert stat.S_IMODE(held.path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("content, who", [(b"\xff\xfe\n", "pid unknown"), (b"x12\n", "pid unknown"),
                                          (b"7" * 100, "pid " + "7" * 32)])
def test_a_refusal_names_the_holder_only_by_a_short_pid(tmp_path, content, who):
    """The lock file's first 32 bytes name the holder; anything but digits is 'pid unknown'."""
    target = saved(tmp_path)
    with FolderLock(target) as held:
        held.path.write_bytes(content)
        with pytest.raises(PatchError) as err:
            FolderLock(target).__enter__()
    assert str(err.value) == (f"another process ({who}) is writing out; "
                              "wait for it to finish or choose another --out")


def test_a_holder_that_cannot_write_its_pid_leaves_no_stale_pid(tmp_path, monkeypatch):
    """A killed holder's pid stays in the lock file; the next holder empties the file before
    writing its own, so if that write fails (disk full) contenders see 'pid unknown', not a
    piece of the dead holder's pid."""
    target = saved(tmp_path)
    (tmp_path / ".out.lock").write_text("98765\n")
    monkeypatch.setattr(store.os, "pwrite", raising(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with FolderLock(target):
        monkeypatch.undo()
        with pytest.raises(PatchError) as err:
            FolderLock(target).__enter__()
    assert "(pid unknown)" in str(err.value)


def test_a_save_creates_every_missing_parent_folder(tmp_path):
    target = tmp_path / "a" / "b" / "c" / "out"
    write_folder(target, CONFIG, tensors())
    assert same_w(target, 0)


def test_a_lock_that_cannot_be_created_names_the_target_and_the_reason(tmp_path):
    (tmp_path / "f").write_text("keep")
    target = tmp_path / "f" / "out"
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors())
    assert str(err.value) == f"cannot write {target}: File exists"
    assert (tmp_path / "f").read_text() == "keep"


# ---------------------------------------------------------------- targets refused or accepted

def test_a_dangling_symlink_is_refused_as_pointing_to_a_missing_folder(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(PatchError) as err:
        write_folder(link, CONFIG, tensors())
    assert str(err.value) == (f"{link} is a symbolic link to a missing folder ({tmp_path / 'nowhere'}); "
                              "fix the link or choose a new folder name")


def test_a_symlink_to_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "f")
    with pytest.raises(PatchError) as err:
        write_folder(link, CONFIG, tensors())
    assert str(err.value) == (f"{link} is a symbolic link to {tmp_path / 'f'}, which is not a folder; "
                              "choose a new folder name")


def test_a_target_under_a_symlink_loop_is_refused_with_a_reason(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    target = loop / "out"
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors())
    assert re.fullmatch(rf"cannot (resolve|write) {re.escape(str(target))}: \S.*", str(err.value))
    assert "None" not in str(err.value)


def test_a_save_works_from_a_deleted_current_folder(tmp_path, monkeypatch):
    """With the cwd gone there is no cwd to protect: an absolute target is saved as usual."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    check_writable(tmp_path / "out")
    write_folder(tmp_path / "out", CONFIG, tensors())
    assert same_w(tmp_path / "out", 0)


def only_unwritable(folder: Path):
    """os.access that answers truthfully per mode bit: ``folder`` exists and reads, but cannot
    be written (as for a read-only folder; root cannot make one, so it is faked)."""
    return lambda path, mode: not (Path(path) == folder and mode & os.W_OK)


@pytest.mark.parametrize("which", ["target", "parent"])
def test_an_existing_target_in_or_under_an_unwritable_folder_is_refused(tmp_path, monkeypatch, which):
    """Replacing an existing folder writes both it (its run/ moves) and its parent (the swap)."""
    target = saved(tmp_path)
    folder = target if which == "target" else tmp_path
    monkeypatch.setattr(store.os, "access", only_unwritable(folder))
    with pytest.raises(PatchError) as err:
        check_writable(target)
    assert str(err.value) == (f"cannot write {target}: {folder} is read-only or not writable by this "
                              "account; choose another --out")


# ---------------------------------------------------------------- what a save writes

def test_config_json_is_the_config_plus_its_content_hash_last_indented_by_two(tmp_path):
    """A stale content_hash in the caller's config is dropped, so the file is the same bytes as a
    save of the config without it (re-saving a loaded config reproduces the file)."""
    target = tmp_path / "out"
    write_folder(target, {"content_hash": "sha256:stale", **CONFIG}, tensors())
    body = {**CONFIG, "content_hash": content_hash(target / TENSORS_FILE)}
    assert (target / CONFIG_FILE).read_text() == json.dumps(body, indent=2) + "\n"


def test_metadata_is_written_into_the_tensors_file(tmp_path):
    target = tmp_path / "out"
    write_folder(target, CONFIG, tensors(), metadata={"format": "x"})
    with safe_open(target / TENSORS_FILE, "pt") as f:
        assert f.metadata() == {"format": "x"}


def test_tensors_sharing_memory_are_saved_each_on_its_own(tmp_path):
    """Tied weights (one tensor under two names) are copied before saving; safetensors itself
    refuses tensors that share memory."""
    w = torch.randn(4, 4)
    target = tmp_path / "out"
    write_folder(target, CONFIG, {"a": w, "b": w, "row": w[0]})
    got = read_folder(target)[1]
    assert torch.equal(got["a"], w) and torch.equal(got["b"], w) and torch.equal(got["row"], w[0])


def test_a_config_that_is_no_dict_is_refused_naming_its_type(tmp_path):
    with pytest.raises(PatchError) as err:
        write_folder(tmp_path / "out", [1, 2], tensors())
    assert str(err.value) == "a patch config must be a JSON object, not list"
    assert os.listdir(tmp_path) == []


def test_a_non_finite_tensor_is_refused_naming_the_folder(tmp_path):
    target = saved(tmp_path)
    bad = tensors(1)
    bad["w"][0, 0] = float("inf")
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, bad)
    assert str(err.value).startswith(f"refusing to save {target}: tensor 'w' holds NaN or Inf")
    assert_complete(target, (0,))


@pytest.mark.parametrize("value, says", [(float("nan"), "Out of range float values are not JSON compliant"),
                                         ({1, 2}, "Object of type set is not JSON serializable")])
def test_a_config_that_is_no_valid_json_is_refused_and_the_old_patch_kept(tmp_path, value, says):
    target = saved(tmp_path)
    with pytest.raises(PatchError) as err:
        write_folder(target, {**CONFIG, "lr": value}, tensors(1))
    assert str(err.value).startswith(f"cannot save {target}: {says}")
    assert_complete(target, (0,))
    assert "lr" not in read_folder(target)[0]


def test_a_config_at_the_size_limit_is_saved_one_byte_over_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "out"
    write_folder(target, CONFIG, tensors())
    size = (target / CONFIG_FILE).stat().st_size
    monkeypatch.setattr(store, "MAX_CONFIG_BYTES", size)
    write_folder(target, CONFIG, tensors())
    monkeypatch.setattr(store, "MAX_CONFIG_BYTES", size - 1)
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors(1))
    assert str(err.value) == f"cannot save {target}: its config is {size} bytes, over {size - 1}"
    assert same_w(target, 0)


# ---------------------------------------------------------------- failures while saving

@pytest.mark.parametrize("existing", [False, True])
def test_a_save_that_fails_before_the_swap_says_only_why(tmp_path, monkeypatch, existing):
    """Nothing new reached the target: the message carries no 'new patch is in place'."""
    target = saved(tmp_path) if existing else tmp_path / "out"
    monkeypatch.setattr(store, "_write_file", raising(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors(1))
    assert str(err.value) == f"cannot write {target}: No space left on device"
    monkeypatch.undo()
    if existing:
        assert_complete(target, (0,))
    else:
        assert os.listdir(tmp_path) == []


def test_a_save_that_fails_after_the_swap_says_the_new_patch_is_in_place(tmp_path, monkeypatch, swap):
    target = saved(tmp_path)
    monkeypatch.setattr(store.shutil, "rmtree", fail_first(shutil.rmtree, EIO))
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors(1))
    assert str(err.value) == f"cannot write {target}: Input/output error" + SUFFIX
    monkeypatch.undo()
    recover(target)
    assert_complete(target, (1,))


def test_a_clean_up_that_fails_too_still_reports_the_first_error(tmp_path, monkeypatch):
    """The save's own clean-up fails as well (rmtree of the half-written folder): the user hears
    why the save failed, and the leftovers wait for the next recovery."""
    target = saved(tmp_path)
    monkeypatch.setattr(store, "_write_file", fail_first(store._write_file, OSError(errno.ENOSPC, "full")))
    monkeypatch.setattr(store.shutil, "rmtree", raising(EIO))
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors(1))
    assert str(err.value) == f"cannot write {target}: full"
    monkeypatch.undo()
    assert hidden(target) != []
    recover(target)
    assert_complete(target, (0,))


def fsync_failing_on_folders(err_no: int):
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(err_no, os.strerror(err_no))
        return real(fd)
    return fsync


def test_a_file_system_that_cannot_fsync_folders_still_saves(tmp_path, monkeypatch, swap):
    """EINVAL from fsync on a folder means the file system does not support it: not an error."""
    target = saved(tmp_path)
    monkeypatch.setattr(store.os, "fsync", fsync_failing_on_folders(errno.EINVAL))
    write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    assert_complete(target, (1,))


def test_a_folder_fsync_that_fails_otherwise_fails_the_save(tmp_path, monkeypatch):
    target = saved(tmp_path)
    monkeypatch.setattr(store.os, "fsync", fsync_failing_on_folders(errno.EIO))
    with pytest.raises(PatchError, match=r"^cannot write .*out: Input/output error"):
        write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    recover(target)
    config, got = read_folder(target)
    assert (target / "run" / "ckpt.pt").read_bytes() == b"checkpoint" and hidden(target) == []


# ---------------------------------------------------------------- the atomic exchange

def failing_renameat2(err_no: int):
    """A renameat2 that fails as libc's does: returns -1 and leaves the errno for get_errno."""
    def fn(*args):
        ctypes.set_errno(err_no)
        return -1
    return fn


@pytest.mark.parametrize("err_no", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP],
                         ids=["EINVAL", "ENOSYS", "EOPNOTSUPP"])
def test_a_kernel_or_file_system_without_exchange_falls_back_to_two_renames(tmp_path, monkeypatch, err_no):
    target = saved(tmp_path)
    monkeypatch.setattr(store, "_renameat2", failing_renameat2(err_no))
    write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    assert_complete(target, (1,))


def test_an_exchange_that_fails_otherwise_fails_the_save_and_keeps_the_old_patch(tmp_path, monkeypatch):
    target = saved(tmp_path)
    monkeypatch.setattr(store, "_renameat2", failing_renameat2(errno.EACCES))
    with pytest.raises(PatchError) as err:
        write_folder(target, CONFIG, tensors(1))
    assert str(err.value) == f"cannot write {target}: Permission denied"
    monkeypatch.undo()
    assert_complete(target, (0,))


def loaded_renameat2(tmp_path: Path):
    """libc's renameat2 as store loads it; skips where the platform or file system lacks it."""
    fn = store._load_renameat2()
    if fn is None:
        pytest.skip("no renameat2 in this libc")
    (tmp_path / "p").mkdir()
    (tmp_path / "q").mkdir()
    if fn(-100, os.fsencode(tmp_path / "p"), -100, os.fsencode(tmp_path / "q"), 2) != 0:
        pytest.skip("this file system cannot exchange folders")
    shutil.rmtree(tmp_path / "p")
    shutil.rmtree(tmp_path / "q")
    return fn


def test_the_loaded_renameat2_exchanges_folders_and_reports_errors_like_os_rename(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_renameat2", loaded_renameat2(tmp_path))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert store._exchange(a, b) is True
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    ctypes.set_errno(0)
    with pytest.raises(OSError) as err:
        store._exchange(tmp_path / "missing", b)
    assert (err.value.errno, err.value.strerror, err.value.filename) == (
        errno.ENOENT, os.strerror(errno.ENOENT), str(b))


def test_where_the_kernel_can_exchange_the_target_is_never_missing(tmp_path, monkeypatch):
    """renameat2(RENAME_EXCHANGE) swaps old and new in one step; the two-rename fallback is only
    for kernels without it. Every rename during the save finds the target in place."""
    monkeypatch.setattr(store, "_renameat2", loaded_renameat2(tmp_path))
    target = saved(tmp_path)
    real_rename = os.rename
    seen = []

    def rename(src, dst):
        real_rename(src, dst)
        seen.append(os.path.lexists(target))
    monkeypatch.setattr(store.os, "rename", rename)
    write_folder(target, CONFIG, tensors(1))
    monkeypatch.undo()
    assert seen and all(seen)  # the moves of run/ and metrics.json
    assert_complete(target, (1,))
