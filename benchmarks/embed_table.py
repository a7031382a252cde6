"""Copy one table of a bench report (REPORT.md) into hand-written docs, between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``, so a number there is never retyped.

    python benchmarks/embed_table.py docs/results/imagenet/REPORT.md \\
        "Single-task patching (paper Table 2)" --block imagenet-table2 \\
        --write docs/results/preface-cpu.md docs/RESULTS.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import replace_block


def table(report: str, title: str) -> str:
    """The Markdown table under the ``### title`` heading of ``report`` (its rows only)."""
    lines = report.splitlines()
    try:
        start = lines.index(f"### {title}")
    except ValueError:
        raise SystemExit(f"no '### {title}' heading in the report") from None
    rows: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    if not rows:
        raise SystemExit(f"no table under '### {title}'")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("title", help="the heading above the table, without '### '")
    ap.add_argument("--block", required=True, help="NAME of the <!-- NAME:begin/end --> markers")
    ap.add_argument("--write", type=Path, nargs="+", required=True)
    a = ap.parse_args()
    text = table(a.report.read_text(), a.title)
    for path in a.write:
        replace_block(path, a.block, text)
    print(text)


if __name__ == "__main__":
    main()
