"""Are two bench result folders the same run for run? (issue 29: behaviour does not change)

    python benchmarks/compare_records.py BEFORE_DIR AFTER_DIR

Compares every run's record in ``results.json`` (status, settings and every result field) and
ignores what a rerun changes by itself: wall-clock times, when it finished and the code
revision. Prints one line per difference and a summary; exit 1 if anything differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOLATILE = {"finished", "code", "hardware"}
"""Record keys a rerun changes by itself; result keys ending in ``seconds`` are volatile too."""


def runs(folder: Path) -> dict[str, dict]:
    file = folder / "results.json"
    if not file.is_file():
        raise SystemExit(f"no results.json in {folder}: give a folder that bench --out wrote")
    return {r["key"]: r for r in json.loads(file.read_text())["runs"]}


def stable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    result = out.get("result") or {}
    out["result"] = {k: v for k, v in result.items() if not k.endswith("seconds")}
    return out


def differences(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    lines = [f"only in {side}: {k}" for side, a, b in (("before", before, after),
                                                       ("after", after, before))
             for k in sorted(set(a) - set(b))]
    for key in sorted(set(before) & set(after)):
        a, b = stable(before[key]), stable(after[key])
        for field in sorted(set(a["result"]) | set(b["result"])):
            if a["result"].get(field) != b["result"].get(field):
                lines.append(f"{key}: result.{field} {a['result'].get(field)!r} → "
                             f"{b['result'].get(field)!r}")
        a.pop("result"), b.pop("result")
        if a != b:
            lines.append(f"{key}: record fields differ: "
                         f"{sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = (runs(Path(a)) for a in argv)
    lines = differences(before, after)
    print("\n".join(lines) if lines else "")
    print(f"{len(before)} runs before, {len(after)} after: "
          + ("identical (times, finish stamps and code revision aside)" if not lines
             else f"{len(lines)} differences"))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
