"""What the docs test reads from a Markdown file: fenced blocks, the marker before each, and the
commands inside a shell block. Pure text handling, so the rules are tested without running a
block (tests/docs/test_blocks.py); running them is runner.py's job."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from sybil import Lexeme, Region
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

SHELL = ("bash", "sh", "console")
LANGUAGES = ("python", *SHELL)
KINDS = ("skip", "flags", "sub", "xfail", "server")
"""skip REASON: never run (GPU-only, multi-node, installs, long). flags ARGS: appended to each
`deltapatch` command of the block (``CMD: ARGS`` for one subcommand, several joined by ` ; `).
sub OLD -> NEW: text replaced before the block runs (small sizes in a Python block; several
joined by ` ; `).
xfail REASON: must fail (strict: a pass is an error). server: a block holding one long-running
command, started in the background and stopped when the document ends."""

_MARKER = re.compile(r"<!--\s*docs:\s*(?P<kind>\w+)\s*(?P<arg>.*?)\s*-->\s*\Z", re.DOTALL)


class MarkerError(ValueError):
    """A `<!-- docs: ... -->` comment the harness cannot read: a typo must not silently run or
    skip a block."""


@dataclass(frozen=True)
class Marker:
    kind: str
    arg: str = ""


@dataclass(frozen=True)
class Block:
    """One fenced block with the markers written right before it."""

    language: str
    source: Lexeme
    markers: tuple[Marker, ...]
    line: int

    def marker(self, kind: str) -> Marker | None:
        return next((m for m in self.markers if m.kind == kind), None)


def markers_before(text: str, start: int) -> tuple[Marker, ...]:
    """The `<!-- docs: KIND ARG -->` comments that end, blank lines aside, where a block starts
    (several may stack, e.g. flags and xfail)."""
    found = []
    head = text[:start].rstrip()
    while head.endswith("-->"):
        opening = head.rfind("<!--")
        match = _MARKER.match(head[opening:])
        if match is None:
            break
        found.append(_marker(match["kind"], match["arg"]))
        head = head[:opening].rstrip()
    kinds = [m.kind for m in found]
    if len(set(kinds)) < len(kinds) or ("skip" in kinds and len(kinds) > 1):
        raise MarkerError(f"docs markers {kinds}: each kind once, and skip alone")
    return tuple(reversed(found))


def _marker(kind: str, arg: str) -> Marker:
    if kind not in KINDS:
        raise MarkerError(f"unknown docs marker '{kind}' (known: {', '.join(KINDS)})")
    if kind in ("skip", "xfail", "flags", "sub") and not arg:
        raise MarkerError(f"docs marker '{kind}' needs a reason or arguments after it")
    return Marker(kind, arg)


def parse_blocks(document) -> list[Region]:
    """A Sybil parser: one region per python/bash/sh/console fence, parsed into a Block."""
    text = document.text
    regions = []
    for lexed in FencedCodeBlockLexer("|".join(LANGUAGES))(document):
        block = Block(lexed.lexemes["language"], lexed.lexemes["source"],
                      markers_before(text, lexed.start), text.count("\n", 0, lexed.start) + 1)
        regions.append(Region(lexed.start, lexed.end, block))
    return regions


def commands(block: Block) -> list[str]:
    """The commands a user would paste from a shell block: continuation lines and lines inside
    open quotes joined, comments and blank lines dropped; in a ``console`` block only the ``$ ``
    lines (the rest is output)."""
    lines = substituted(block).splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if not _complete(current):
            current += "\n"
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            joined.append(current.strip())
        current = ""
    if current.strip():
        raise MarkerError(f"unclosed quote in the shell block at line {block.line}")
    return joined


def _complete(command: str) -> bool:
    """Whether every quote the command opens is closed (else the next line continues it)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def substituted(block: Block) -> str:
    """The block's text after its ``sub`` marker's replacements; each OLD must occur, so a doc
    edit cannot silently turn the marker into a no-op."""
    text = str(block.source)
    marker = block.marker("sub")
    for pair in marker.arg.split(" ; ") if marker else ():
        old, sep, new = pair.partition(" -> ")
        if not sep or old not in text:
            raise MarkerError(f"docs: sub '{pair}' does not apply to the block at line {block.line}")
        text = text.replace(old, new)
    return text


def parse_flags(arg: str) -> dict[str | None, str]:
    """``--epochs 1`` → {None: '--epochs 1'}; ``train: --epochs 1 ; eval: --max-test 50`` →
    per subcommand."""
    flags: dict[str | None, str] = {}
    for part in arg.split(" ; "):
        sub, sep, rest = part.partition(":")
        if sep and re.fullmatch(r"\s*[a-z]+\s*", sub):
            flags[sub.strip()] = rest.strip()
        else:
            flags[None] = part.strip()
    return flags


def subcommand(command: str) -> str | None:
    """The deltapatch subcommand a command line runs (None when it runs no deltapatch)."""
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):
        if word == "deltapatch" or (word == "-m" and i + 1 < len(words)
                                    and words[i + 1] == "deltapatch"):
            rest = words[i + 1 if word == "deltapatch" else i + 2:]
            while rest and rest[0].startswith("-"):  # global flags such as --threads 1
                rest = rest[2:] if rest[0] in ("--threads",) else rest[1:]
            return rest[0] if rest else None
    return None


def with_flags(command: str, flags: dict[str | None, str]) -> str:
    """The command with the marker's small-size flags appended (before any trailing comment)."""
    sub = subcommand(command)
    extra = flags.get(sub, flags.get(None, "")) if sub else ""
    if not extra:
        return command
    code = command.split(" #", 1)[0].rstrip()
    return f"{code} {extra}"
