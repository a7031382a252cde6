"""``deltapatch serve`` as a real process (uvicorn on 127.0.0.1), ``deltapatch predict --server``
and the client against it, and the command's bad-input contract (exit 2, one line)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import png, save_patch
from safetensors.torch import save_file

import deltapatch as dp
from deltapatch.cli import main
from deltapatch.serve.client import Client, ServerError

SRC = Path(__file__).resolve().parents[2] / "src"
KEY = "s3cret-key-for-tests-only"


@pytest.fixture
def setup(tmp_path, backbone):
    save_file(backbone.state_dict(), str(tmp_path / "w.safetensors"))
    save_patch(backbone, tmp_path / "patches", "a", 5, 1)
    (tmp_path / "key.txt").write_text(KEY + "\n")
    (tmp_path / "x.png").write_bytes(png(4))
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_serve_input_is_one_line_and_exit_2(setup, capsys, backbone):
    w = setup / "w.safetensors"
    ft = setup / "ft"
    save_patch(backbone, ft, "f", 3, 1, method="finetune")  # a folder of a non-Δ method
    cases = [
        (["--patches", setup / "nowhere"], "not a folder"),
        (["--patches", ft], "batches Δ-family patches only"),
        (["--patches", setup / "patches", "--port", "0"], "--port"),
        (["--patches", setup / "patches", "--max-batch", "0"], "--max-batch"),
        (["--patches", setup / "patches", "--api-key-file", setup / "x.png"], "api-key-file"),
        (["--patches", setup / "patches", "--api-key-file", setup / "nokey"], "api-key-file"),
        (["--patches", setup / "patches", "--ray", "--gpus-per-replica", "1.5"],
         "--gpus-per-replica"),
    ]
    for extra, words in cases:
        code = main(["serve", "--backbone", "cifar_resnet20", "--weights", str(w),
                     *map(str, extra)])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (extra, err)
    code = main(["predict", "--server", "http://127.0.0.1:9", str(setup / "x.png")])
    assert code == 2 and "cannot reach" in capsys.readouterr().err


def test_real_server_predict_client_and_graceful_stop(setup, capsys, backbone):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltapatch", "--threads", "1", "serve", "--backbone",
         "cifar_resnet20", "--weights", str(setup / "w.safetensors"), "--patches",
         str(setup / "patches"), "--port", str(port), "--api-key-file", str(setup / "key.txt")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = Client(url, api_key=KEY, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                assert client.ready()["patches"] == 1
                break
            except ServerError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        image = setup / "x.png"
        assert main(["predict", "--server", url, "--patch", "a", "--top", "3", str(image)]) == 0
        remote = capsys.readouterr().out
        assert main(["predict", "--backbone", "cifar_resnet20", "--weights",
                     str(setup / "w.safetensors"), "--patch", str(setup / "patches" / "a"),
                     "--top", "3", str(image)]) == 0
        assert remote == capsys.readouterr().out  # the server answers as the library does
        save_patch(backbone, setup / "more", "c", 4, 2)
        assert client.upload(setup / "more" / "c") == "c"
        assert [p["name"] for p in client.patches()] == ["a", "c"]
        fan = client.predict(image.read_bytes(), patches=["a", "c", dp.BASE], top_k=2)
        assert list(fan["results"]) == ["a", "c", dp.BASE]
        assert client.delete("c") == {"removed": "c"}
        with pytest.raises(ServerError) as err:
            Client(url).delete("a")  # no key
        assert err.value.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()
    assert "patches loaded" in proc.stdout.read()
    assert json.loads(remote)["task"] == "a"


def test_an_address_that_cannot_be_bound_is_one_line_exit_2_before_loading(setup, capsys,
                                                                            monkeypatch):
    """A port already bound on 127.0.0.1, and an address this machine lacks (192.0.2.1, a
    documentation range: binding fails, nothing is ever sent): one line, exit 2, and the
    model is never loaded (uvicorn used to say it in its log and exit 3 after the load)."""
    from deltapatch.cli import common

    monkeypatch.setattr(common, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for host, p, words in [("127.0.0.1", port, "Address already in use"),
                               ("192.0.2.1", 8000, "Cannot assign requested address")]:
            code = main(["serve", "--backbone", "cifar_resnet20", "--patches",
                         str(setup / "patches"), "--host", host, "--port", str(p)])
            err = capsys.readouterr().err
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert f"cannot serve on --host {host} --port {p}" in err and words in err, err
            assert "Traceback" not in err
