"""Where the shared real data lives: ``$DELTAPATCH_DATA``, else ``../shared/data`` beside the
project (found from the working directory or from this package's checkout)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError


def shared_data_dir() -> Path | None:
    env = os.environ.get("DELTAPATCH_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for parent in [start, *start.parents]:
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def shared_data_file(relative: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / relative).exists():
        raise DataError(f"'{relative}' not found: put the shared data folder at ../shared/data "
                        "beside the project or set DELTAPATCH_DATA to it.")
    return root / relative
