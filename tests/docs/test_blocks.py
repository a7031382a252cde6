"""The rules the docs harness reads (tests/docs/blocks.py), checked on small Markdown texts:
markers, command splitting, small-size flags and substitutions; and that no command block in
the docs hides from the harness in an unfenced (indented) block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from blocks import (
    MarkerError,
    commands,
    markers_before,
    parse_blocks,
    parse_flags,
    subcommand,
    substituted,
    with_flags,
)
from sybil import Sybil

ROOT = Path(__file__).resolve().parents[2]


def blocks_of(tmp_path, text: str):
    path = tmp_path / "doc.md"
    path.write_text(text)
    return [example.parsed for example in Sybil(parsers=[parse_blocks]).parse(path)]


def test_fenced_blocks_with_their_markers_in_order(tmp_path):
    text = ("intro\n\n<!-- docs: skip GPU only -->\n```bash\nnvidia-smi\n```\n\n"
            "```python\nx = 1\n```\n\n```text\nnot run\n```\n\n"
            "<!-- docs: flags --epochs 1 -->\n<!-- docs: xfail issue27-a: why -->\n\n"
            "```console\n$ deltapatch info out\nout holds ...\n```\n")
    found = blocks_of(tmp_path, text)
    assert [b.language for b in found] == ["bash", "python", "console"]
    assert [[m.kind for m in b.markers] for b in found] == [["skip"], [], ["flags", "xfail"]]
    assert found[0].marker("skip").arg == "GPU only"
    assert found[2].marker("xfail").arg == "issue27-a: why"
    assert commands(found[2]) == ["deltapatch info out"]


def test_a_comment_further_up_is_not_a_marker():
    text = "<!-- docs: skip reason -->\n\nsome prose\n\n"
    assert markers_before(text, len(text)) == ()


@pytest.mark.parametrize("comment", ["<!-- docs: skiip typo -->", "<!-- docs: skip -->",
                                     "<!-- docs: skip a -->\n<!-- docs: flags --epochs 1 -->",
                                     "<!-- docs: xfail a -->\n<!-- docs: xfail b -->"])
def test_a_marker_the_harness_cannot_read_is_an_error(comment):
    text = comment + "\n"
    with pytest.raises(MarkerError):
        markers_before(text, len(text))


def test_commands_join_continuations_and_open_quotes_and_drop_comments(tmp_path):
    (block,) = blocks_of(tmp_path, "```bash\n# a comment\ndeltapatch train --data digits \\\n"
                                   "    --out runs/d   # trailing\n\ncurl -d '{\n  \"a\": 1}'\n```\n")
    assert commands(block) == ["deltapatch train --data digits      --out runs/d   # trailing",
                               "curl -d '{\n  \"a\": 1}'"]


def test_flags_go_to_deltapatch_commands_of_their_subcommand():
    flags = parse_flags("train: --epochs 1 --max-train 100 ; eval: --max-test 50")
    assert flags == {"train": "--epochs 1 --max-train 100", "eval": "--max-test 50"}
    assert (with_flags("deltapatch train --data d --out o   # note", flags)
            == "deltapatch train --data d --out o --epochs 1 --max-train 100")
    assert with_flags("deltapatch info o", flags) == "deltapatch info o"
    assert with_flags("python -c 'print(1)'", parse_flags("--epochs 1")) == "python -c 'print(1)'"
    assert subcommand("torchrun --nproc-per-node 2 -m deltapatch --threads 1 train --x") == "train"


def test_sub_replaces_text_and_refuses_a_stale_pattern(tmp_path):
    ok, stale = blocks_of(tmp_path, "<!-- docs: sub epochs=5 -> epochs=1 -->\n```python\n"
                                    "cfg(epochs=5)\n```\n\n<!-- docs: sub epochs=9 -> epochs=1 -->\n"
                                    "```python\ncfg(epochs=5)\n```\n")
    assert substituted(ok) == "cfg(epochs=1)\n"
    with pytest.raises(MarkerError):
        substituted(stale)


COMMAND = re.compile(r"^ {4}(\$ )?(deltapatch|python|pip|torchrun|PYTHONPATH|curl)\b")


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_no_command_hides_in_an_indented_block(doc):
    """An indented block is invisible to the harness: commands must be fenced with a language."""
    fenced, hidden = False, []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and COMMAND.match(line):
            hidden.append(number)
    assert hidden == [], f"{doc.name}: indented command lines {hidden}; fence them with ```bash"
