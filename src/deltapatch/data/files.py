"""Opening data files that may be untrusted: regular files only, within a byte limit.

A FIFO named ``f.png`` or ``x.npz`` would block a plain ``open`` (or ``read``) forever, and a
character device such as ``/dev/zero`` would never end; a socket cannot be opened at all. Every
data file (an image, an ``.npz``, a zip of images) is opened here: with ``O_NONBLOCK`` so that
opening a FIFO returns at once, then checked with ``fstat`` on the open descriptor (no race
between the check and the read), and refused in one line unless it is a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

MAX_IMAGE_FILE_BYTES = 1 << 30
"""Largest image file read (1 GiB): above the largest 64-megapixel image any allowed format
stores (16-bit RGBA TIFF, 512 MB)."""


def open_regular(path: str | Path, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading, or a :class:`DataError` if it is not a regular file
    (a FIFO, device, socket or folder) or cannot be opened. Symbolic links are followed; what
    they point at must be a regular file too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise DataError(f"cannot open {what} {path}: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{what} {path} is not a regular file ({_kind(mode)}); data is read "
                            "only from regular files: remove it or replace it with a file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, what: str = "file", max_bytes: int = MAX_IMAGE_FILE_BYTES
                 ) -> bytes:
    """The bytes of regular file ``path``, refused past ``max_bytes`` (the read itself is
    bounded: a file that grows while it is read cannot make us hold more)."""
    with open_regular(path, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{what} {path} is larger than {max_bytes:,} bytes; shrink it first")
    return data


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")
