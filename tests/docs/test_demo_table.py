"""docs/DEMO.md's results table is the demo's own output: each row equals the summary that
`deltapatch demo` wrote (docs/results/demo/summary.json, stored by the command DEMO.md names),
and the demo's summary writer still writes the fields this check reads. The demo itself takes
minutes, so CI checks against the stored summary instead of rerunning it; the demo is
deterministic on the CPU (seeded; the issue's user got the same figures on every run)."""

from __future__ import annotations

import json
from pathlib import Path

from deltapatch.demo import DemoConfig, Row
from deltapatch.demo_report import write_report

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "docs" / "results" / "demo" / "summary.json"
HEADER = "| method | task | test top-1 | n test | trainable params | patch bytes |"
METHODS = {"delta": "Δ(1)", "linear": "FC only"}


def table_lines(summary: dict) -> list[str]:
    """The rows DEMO.md shows for a demo summary, in DEMO.md's format."""
    return [f"| {METHODS[r['method']]} | {r['task']} | {r['top1']:.4f} | {r['n_test']:,} | "
            f"{r['trainable_params']:,} | {r['patch_bytes']:,} |" for r in summary["rows"]]


def documented_table(text: str) -> list[str]:
    """The rows of the Markdown table under HEADER in DEMO.md."""
    lines = text.splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_demo_md_table_is_the_stored_demo_summary():
    summary = json.loads(SUMMARY.read_text())
    assert summary["config"]["seed"] == 0 and summary["config"]["epochs"] == 8  # the full profile
    assert documented_table((ROOT / "docs" / "DEMO.md").read_text()) == table_lines(summary)


def test_demo_md_names_the_command_that_stores_the_summary():
    text = (ROOT / "docs" / "DEMO.md").read_text()
    assert "cp deltapatch-demo/summary.json docs/results/demo/summary.json" in text


def test_the_demo_writes_the_summary_this_check_reads(tmp_path):
    row = Row("delta", "digits", 0.95, 360, 220_752, 886_492, 1.0, 1.0, 5, "p")
    facts = {"machine": "m", "load_avg_1min_at_start": 0.0, "wall_seconds": 1.0,
             "backbone_params": 1, "backbone_bytes": 1, "last_stage": "s", "base_top5": {},
             "bit_identical": True, "labels_same": True, "fingerprint_same": True}
    write_report(tmp_path, "deltapatch demo", DemoConfig(), facts, [row], [], [])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert table_lines(written) == ["| Δ(1) | digits | 0.9500 | 360 | 220,752 | 886,492 |"]
    assert written["config"]["seed"] == 0
