"""A run folder belongs to one run. ``run/settings.json`` records everything that shapes it (the
spec, the backbone's and the data's fingerprints); a folder holding another run is refused, naming
the first field that differs, instead of being silently resumed into a hybrid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import store
from .errors import DeltaPatchError

SETTINGS_FILE = "settings.json"


def claim_run_folder(out: Path, settings: dict) -> None:
    """Make ``out`` this run's folder, or refuse (nothing changed) if it holds another run.

    A folder with no ``run/settings.json`` but a checkpoint or a task in it holds a run of
    unknown settings and is refused too: resuming it could mix two runs."""
    run = out / "run"
    file = run / SETTINGS_FILE
    if file.is_file():
        try:
            old = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise DeltaPatchError(f"{file} is unreadable ({err}); delete {run} to start afresh") from None
        diff = _first_difference(old, settings)
        if diff is not None:
            raise DeltaPatchError(
                f"{out} holds another run ({diff}); choose another --out, or delete {run} to "
                "start this one afresh there")
        return
    if (run / "checkpoint.pt").exists() or (out / store.CONFIG_FILE).exists():
        raise DeltaPatchError(f"{out} already holds a patch or checkpoint of a run with "
                              "unknown settings; choose another --out or delete it")
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / (SETTINGS_FILE + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, file)


def _first_difference(old, new, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else k)
            if d is not None:
                return d
        return None
    new = json.loads(json.dumps(new, default=str))  # compare as stored (tuples → lists)
    return None if old == new else f"{path}: {old!r} there, {new!r} now"
