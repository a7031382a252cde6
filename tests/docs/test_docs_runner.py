"""The harness runs blocks as a user would paste them (tests/docs/runner.py), checked on tiny
documents whose commands need no deltapatch: one directory per document, strict xfail, installs
refused, a server started on a free port, reached through the rewritten 127.0.0.1:8000 and
stopped."""

from __future__ import annotations

import sys
import textwrap

import pytest
from blocks import parse_blocks
from runner import evaluate, new_state
from sybil import Sybil

SERVER = textwrap.dedent("""\
    import argparse, http.server
    p = argparse.ArgumentParser(); p.add_argument("--host"); p.add_argument("--port", type=int)
    a = p.parse_args()
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ready")
    http.server.HTTPServer((a.host, a.port), H).serve_forever()
    """)


def run_document(tmp_path, text: str) -> list[str]:
    """Each block's outcome: 'passed', 'skipped', 'xfailed' or the failure's first line."""
    (tmp_path / "doc.md").write_text(text)
    (tmp_path / "work").mkdir()
    state = new_state(tmp_path / "work")
    outcomes = []
    try:
        for example in Sybil(parsers=[parse_blocks]).parse(tmp_path / "doc.md"):
            try:
                evaluate(example, state)
                outcomes.append("passed")
            except pytest.skip.Exception:
                outcomes.append("skipped")
            except pytest.xfail.Exception:
                outcomes.append("xfailed")
            except AssertionError as err:
                outcomes.append(str(err).splitlines()[0])
    finally:
        state.stop_servers()
    return outcomes


def test_blocks_share_one_directory_and_namespace_in_order(tmp_path):
    text = ("```bash\necho hello > note.txt\n```\n\n```python\nnote = open('note.txt').read()\n```"
            "\n\n```python\nassert note == 'hello\\n'\n```\n\n<!-- docs: skip never -->\n"
            "```bash\nexit 1\n```\n")
    assert run_document(tmp_path, text) == ["passed", "passed", "passed", "skipped"]
    assert (tmp_path / "work" / "note.txt").read_text() == "hello\n"
    assert (tmp_path / "work" / "examples").is_symlink()


def test_xfail_is_strict_and_installs_are_refused(tmp_path):
    text = ("<!-- docs: xfail broken -->\n```bash\nfalse\n```\n\n<!-- docs: xfail fixed -->\n"
            "```bash\ntrue\n```\n\n```bash\npip install something\n```\n\n```sh\nexit 3\n```\n")
    first, second, third, fourth = run_document(tmp_path, text)
    assert first == "xfailed"
    assert "passes now: remove the marker" in second
    assert "installs packages" in third
    assert fourth == "`exit 3` exited 3"


def test_server_block_runs_in_the_background_on_a_free_port(tmp_path):
    (tmp_path / "server.py").write_text(SERVER)
    text = (f"<!-- docs: server -->\n```bash\n{sys.executable} {tmp_path / 'server.py'}\n```\n\n"
            "```bash\ncurl -sf http://127.0.0.1:8000/ready > answer.txt\n```\n\n"
            "```python\nimport urllib.request\n"
            "assert urllib.request.urlopen('http://127.0.0.1:8000/ready').read() == b'ready'\n```\n")
    assert run_document(tmp_path, text) == ["passed", "passed", "passed"]
    assert (tmp_path / "work" / "answer.txt").read_text() == "ready"
