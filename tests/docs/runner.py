"""Runs a document's blocks the way a user pastes them: in document order, in one working
directory per document (later blocks use what earlier ones wrote), Python blocks in one namespace
(Sybil's evaluator), shell commands in bash. Markers (blocks.py) skip a block, add small-size
flags, expect a failure, or start a server that lives until the document ends."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from blocks import SHELL, Block, commands, parse_flags, substituted, with_flags
from sybil import Example, Lexeme
from sybil.evaluators.python import PythonEvaluator

from deltapatch.paths import shared_data_dir

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("examples", "benchmarks", "src")
"""What a command may name relative to the checkout, linked into each document's directory."""
COMMAND_TIMEOUT_S = 120
READY_TIMEOUT_S = 90
THREADS = 1
"""Torch threads for every block: README's advice for a shared machine, and CI's is one."""


@dataclass
class DocState:
    """One document's run: its directory, environment and background servers."""

    workdir: Path
    env: dict[str, str]
    servers: list[subprocess.Popen] = field(default_factory=list)
    port: int | None = None

    def stop_servers(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.servers.clear()


def new_state(workdir: Path) -> DocState:
    """A working directory holding links to the checkout's examples, benchmarks and sources, and
    an environment where ``deltapatch`` and ``python -m deltapatch`` run this checkout."""
    for name in LINKED:
        (workdir / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    data = shared_data_dir()
    if data is not None:
        env.setdefault("DELTAPATCH_DATA", str(data))
    env["OMP_NUM_THREADS"] = str(THREADS)
    return DocState(workdir, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localize(source: str, state: DocState) -> str:
    """Point the docs' 127.0.0.1:8000 at the port the harness gave this document's server (a
    shared machine may already use 8000)."""
    if state.port is None:
        return source
    return re.sub(r"(127\.0\.0\.1|localhost):8000\b", rf"\g<1>:{state.port}", source)


def run_shell(block: Block, state: DocState) -> None:
    marker = block.marker("flags")
    flags = parse_flags(marker.arg) if marker else {}
    for command in commands(block):
        line = localize(with_flags(command, flags), state)
        if re.search(r"\bpip\s+install\b", line):
            raise AssertionError(f"`{line}` installs packages (CI installs them first): mark the "
                                 "block `<!-- docs: skip REASON -->`")
        done = subprocess.run(["bash", "-c", line], cwd=state.workdir, env=state.env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise AssertionError(f"`{line}` exited {done.returncode}\n--- stdout\n"
                                 f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


def start_server(block: Block, state: DocState) -> None:
    """Start the block's one command on a free port of 127.0.0.1 and wait for /ready."""
    (command,) = commands(block)
    state.port = free_port()
    line = f"exec {command} --host 127.0.0.1 --port {state.port}"
    log = (state.workdir / f"server-{state.port}.log").open("w")
    proc = subprocess.Popen(["bash", "-c", line], cwd=state.workdir, env=state.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state.servers.append(proc)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`{line}` exited {proc.returncode} before it was ready:\n"
                                 f"{Path(log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{state.port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"`{line}` not ready on 127.0.0.1:{state.port} in {READY_TIMEOUT_S} s")


def run_python(example: Example, state: DocState) -> None:
    """Sybil's evaluator on the block's text (line numbers kept), from the document's directory."""
    source: Lexeme = example.parsed.source
    text = Lexeme(localize(substituted(example.parsed), state), source.offset, source.line_offset)
    proxy = SimpleNamespace(parsed=text, line=example.line, path=example.path,
                            namespace=example.namespace)
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(state.workdir)
    torch.set_num_threads(THREADS)
    try:
        PythonEvaluator()(proxy)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def evaluate(example: Example, state: DocState) -> None:
    """Run one block as its markers say."""
    block: Block = example.parsed
    if skip := block.marker("skip"):
        pytest.skip(f"docs: skip {skip.arg}")
    if block.language not in SHELL and (block.marker("flags") or block.marker("server")):
        raise AssertionError("docs markers 'flags' and 'server' apply to shell blocks only")
    xfail = block.marker("xfail")
    try:
        if block.marker("server"):
            start_server(block, state)
        elif block.language in SHELL:
            run_shell(block, state)
        else:
            run_python(example, state)
    except Exception as exc:
        if xfail:
            pytest.xfail(f"docs: xfail {xfail.arg} ({type(exc).__name__}: {str(exc)[:300]})")
        raise
    if xfail:
        raise AssertionError(f"block marked `docs: xfail {xfail.arg}` passes now: remove the "
                             "marker")
