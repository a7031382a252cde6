"""Every python/bash/sh/console block of README.md and docs/*.md runs as written (markers aside:
tests/docs/blocks.py), in document order, one working directory per document. Marked ``docs``:
``python -m pytest`` and CI run them; ``-m "not docs"`` leaves them out while you work."""

from __future__ import annotations

from pathlib import Path

import pytest
from blocks import parse_blocks
from runner import ROOT, DocState, evaluate, new_state
from sybil import Sybil

from deltapatch.paths import shared_data_dir

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PARSER = Sybil(parsers=[parse_blocks])
_DOCUMENTS = {doc: _PARSER.parse(doc) for doc in DOCS}
EXAMPLES = [(doc, example) for doc, document in _DOCUMENTS.items() for example in document]
_STATES: dict[Path, DocState] = {}


@pytest.fixture(scope="session")
def _states():
    yield _STATES
    for state in _STATES.values():
        state.stop_servers()


_LAST = {doc: example for doc, example in EXAMPLES}  # each document's last block


@pytest.fixture
def state(request, _states, tmp_path_factory):
    """The document's state, made at its first block; its servers stop after its last block."""
    doc, example = request.node.callspec.params["doc_example"]
    if doc not in _states:
        _states[doc] = new_state(tmp_path_factory.mktemp(doc.stem))
    yield _states[doc]
    if example is _LAST[doc]:
        _states[doc].stop_servers()


@pytest.mark.docs
@pytest.mark.shared_data
@pytest.mark.skipif(shared_data_dir() is None, reason="the docs' commands use ../shared/data "
                    "(CIFAR-10 weights, data sets); set DELTAPATCH_DATA or put it beside the project")
@pytest.mark.parametrize("doc_example", EXAMPLES,
                         ids=[f"{doc.relative_to(ROOT)}:{ex.line}" for doc, ex in EXAMPLES])
def test_block_runs_as_documented(doc_example, state):
    evaluate(doc_example[1], state)
