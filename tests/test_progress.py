"""progress: bars only on a terminal, plain one-line logs everywhere."""

from __future__ import annotations

import sys

from deltapatch.progress import bars_enabled, log, progress_bar


def test_no_bar_and_no_carriage_returns_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    items = list(range(50))
    assert not bars_enabled()  # pytest's capture is not a TTY
    assert progress_bar(items, desc="batches") is items  # passed through untouched
    assert list(progress_bar(iter(items), total=50)) == items
    log("epoch 1/3: loss 0.500")
    out = capsys.readouterr()
    assert "\r" not in out.err and "\r" not in out.out
    assert out.err == "epoch 1/3: loss 0.500\n" and out.out == ""


def test_bar_is_drawn_on_a_terminal_and_log_lines_stay_whole(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert bars_enabled()
    seen = []
    for i in progress_bar(range(5), desc="epoch 1", mininterval=0):
        seen.append(i)
        if i == 2:
            log("a line in the middle")
    err = capsys.readouterr().err
    assert seen == list(range(5))
    assert "\r" in err and "epoch 1" in err and "5/5" in err  # a bar was drawn
    assert "a line in the middle\n" in err


def test_bar_can_be_switched_off(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert list(progress_bar(range(3), enabled=False)) == [0, 1, 2]
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert list(progress_bar(range(3))) == [0, 1, 2]
    assert not bars_enabled()
    monkeypatch.setenv("TQDM_DISABLE", "0")  # explicitly not disabled
    assert bars_enabled()
    assert capsys.readouterr().err == ""
