"""Progress a person can read: a tqdm bar on a terminal, nothing but plain lines elsewhere.

A bar redraws itself with carriage returns; written to a log file or CI output that becomes one
unreadable line per update. So bars are drawn only when stderr is a terminal, and the lines meant
to stay ("epoch 3/10: loss 0.41, val 0.87") go through ``log``, which prints above a live bar
instead of through it. A leaf module: it imports nothing from deltapatch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_OFF = {"", "0", "false", "no", "off"}


def bars_enabled(enabled: bool = True) -> bool:
    """Whether a bar would be drawn now: ``enabled``, ``TQDM_DISABLE`` unset (or false), and
    stderr a terminal."""
    if not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _OFF:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
                 enabled: bool = True, **kw) -> Iterable[T]:
    """``iterable`` with a progress bar on stderr when ``bars_enabled(enabled)``, else
    ``iterable`` itself (no output at all). ``kw`` goes to tqdm; the bar is removed when done
    unless ``leave=True``, so that only ``log`` lines stay on screen."""
    if not bars_enabled(enabled):
        return iterable
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    kw["disable"] = False  # decided above; tqdm would read TQDM_DISABLE again at import time
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, **kw)


def log(msg: str) -> None:
    """Write one line to stderr (above any live bar, which is redrawn below it)."""
    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()
