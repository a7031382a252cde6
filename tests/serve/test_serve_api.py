"""Every endpoint of ``deltapatch serve`` in-process (FastAPI's TestClient, lifespan included):
answers equal the library's, bad input is a 4xx with {"error"}, nothing changes on a refusal."""

from __future__ import annotations

import base64
import json

import pytest
import torch
from conftest import png, save_patch
from fastapi.testclient import TestClient
from helpers import needs_shared

import deltapatch as dp
from deltapatch.data.sets import to_image_tensor
from deltapatch.data.sources import decode_image
from deltapatch.dense import add_dense_patch, save_dense
from deltapatch.serve.app import create_app
from deltapatch.serve.inputs import Limits

KEY = "k" * 24


def client(patchset, **settings) -> TestClient:
    return TestClient(create_app(patchset, **settings), raise_server_exceptions=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def library_logits(model: dp.PatchedModel, image: bytes, patch: str) -> torch.Tensor:
    """What ``deltapatch predict`` computes for one image file."""
    x = to_image_tensor(decode_image(image, "t")[None], model.preprocess.size)
    with torch.inference_mode():
        return model(model.preprocess.normalize(x), patch=patch)[0]


def test_health_ready_metrics_and_patch_list(patchset):
    with client(patchset) as c:
        assert c.get("/health").json() == {"status": "ok"}
        r = c.get("/ready")
        assert r.status_code == 200 and r.json()["patches"] == 2
        listed = c.get("/v1/patches").json()["patches"]
        assert [(p["name"], p["num_classes"], p["stages"], p["method"]) for p in listed] == [
            ("a", 5, [2], "delta"), ("b", 3, [0, 2], "delta")]
        assert all(p["bytes"] > 1000 for p in listed)
        c.post("/v1/predict", json={"image": b64(png(0)), "patch": "a"})
        text = c.get("/metrics").text
        assert "deltapatch_patches_loaded 2.0" in text
        assert 'deltapatch_requests_total{patch="a"} 1.0' in text
        assert "deltapatch_batch_size_count 1.0" in text


def test_base_answers_are_the_plain_backbones_bit_for_bit(patchset, library, backbone):
    with client(patchset) as c:
        for seed in range(3):
            image = png(seed)
            want = library_logits(library, image, dp.BASE)
            x = library.preprocess.normalize(to_image_tensor(decode_image(image, "t")[None], 32))
            assert torch.equal(want, backbone(x)[0])
            r = c.post("/v1/predict", json={"image": b64(image), "patch": "__base__", "top_k": 10,
                                            "return_logits": True})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["patch"] == "__base__"
            assert torch.equal(torch.tensor(body["logits"]), want)
            probs = want[None].softmax(1)[0]
            assert [t["score"] for t in body["top_k"]] == probs.sort(descending=True).values.tolist()
            assert [t["label"] for t in body["top_k"]] == [str(t["index"]) for t in body["top_k"]]
            # no patch named at all is the base task too, and multipart gives the same answer
            plain = c.post("/v1/predict", json={"image": b64(image), "top_k": 10}).json()
            form = c.post("/v1/predict", files={"image": ("x.png", image, "image/png")},
                          data={"top_k": "10"}).json()
            assert plain["top_k"] == form["top_k"] == body["top_k"]


def test_patch_answers_and_labels_equal_the_library(patchset, library):
    image = png(7)
    with client(patchset) as c:
        for name in ("a", "b"):
            r = c.post("/v1/predict", json={"image": b64(image), "patch": name, "top_k": 2,
                                            "return_logits": True}).json()
            want = library_logits(library, image, name)
            assert torch.equal(torch.tensor(r["logits"]), want)  # a batch of one: same bits
            best = int(want.argmax())
            assert r["top_k"][0] == {"index": best, "label": f"{name}-{best}",
                                     "score": float(want[None].softmax(1)[0, best])}
            assert len(r["top_k"]) == 2


def test_fanout_answers_every_task(patchset, library):
    image = png(3)
    with client(patchset) as c:
        r = c.post("/v1/predict", json={"image": b64(image), "patches": ["b", "__base__", "a"],
                                        "top_k": 3, "return_logits": True})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert list(results) == ["b", "__base__", "a"]
        for name, res in results.items():
            assert torch.equal(torch.tensor(res["logits"]), library_logits(library, image, name))
            assert len(res["top_k"]) == 3
        form = c.post("/v1/predict", files={"image": ("x.png", image)},
                      data={"patches": "a,__base__"}).json()
        assert list(form["results"]) == ["a", "__base__"]
        assert c.post("/v1/predict", json={"image": b64(image), "patches": ["a", "zz"]}
                      ).status_code == 404


def test_upload_predict_duplicate_delete(patchset, backbone, tmp_path):
    folder = save_patch(backbone, tmp_path, "c", 4, 2)
    files = {n: (n, (folder / n).read_bytes()) for n in ("config.json", "patch.safetensors")}
    with client(patchset) as c:
        r = c.post("/v1/patches", files=files)
        assert (r.status_code, r.json()) == (201, {"name": "c"})
        assert [p["name"] for p in c.get("/v1/patches").json()["patches"]] == ["a", "b", "c"]
        assert c.post("/v1/predict", json={"image": b64(png(1)), "patch": "c"}).status_code == 200
        dup = c.post("/v1/patches", files=files)
        assert dup.status_code == 409 and "already loaded" in dup.json()["error"]
        assert c.delete("/v1/patches/c").json() == {"removed": "c"}
        assert "c" not in patchset.model.patches
        gone = c.post("/v1/predict", json={"image": b64(png(1)), "patch": "c"})
        assert gone.status_code == 404 and "no patch named 'c'" in gone.json()["error"]
        assert c.delete("/v1/patches/c").status_code == 404
        assert c.post("/v1/patches", files=files).status_code == 201  # the name is free again
        assert 'patch="c"' not in c.get("/metrics").text  # removed series were dropped


def _bad_uploads(backbone, tmp_path) -> dict[str, dict]:
    good = save_patch(backbone, tmp_path, "c", 4, 2)
    config = (good / "config.json").read_bytes()
    tensors = (good / "patch.safetensors").read_bytes()
    flipped = bytearray(tensors)
    flipped[-3] ^= 0xFF
    pickled = (tmp_path / "pickle.pt")
    torch.save({"head.weight": torch.zeros(4, 64)}, pickled)
    raw = pickled.read_bytes()
    cfg = json.loads(config)
    rehashed = json.dumps({**cfg, "content_hash": dp.store.sha256(raw)}).encode()
    other = dp.load_backbone("cifar_resnet20")  # other random weights: another fingerprint
    foreign = save_patch(other, tmp_path / "foreign", "c", 4, 2)
    finetune = json.dumps({**cfg, "method": "finetune"}).encode()
    donor = dp.PatchedModel(backbone)
    dense = add_dense_patch(donor, "seg", "segmentation", 2, stages=1, size=32)
    seg = save_dense(donor, dense, tmp_path / "seg")

    def files(c: bytes, t: bytes) -> dict:
        return {"config.json": ("config.json", c), "patch.safetensors": ("patch.safetensors", t)}

    return {
        "corrupt tensors": files(config, bytes(flipped)),
        "pickle with a matching hash": files(rehashed, raw),
        "foreign fingerprint": files((foreign / "config.json").read_bytes(),
                                     (foreign / "patch.safetensors").read_bytes()),
        "another method": files(finetune, tensors),
        "an unknown method": files(json.dumps({**cfg, "method": "magic"}).encode(), tensors),
        "a segmentation patch": files((seg / "config.json").read_bytes(),
                                      (seg / "patch.safetensors").read_bytes()),
        "config not json": files(b"{nope", tensors),
        "missing tensors": {"config.json": ("config.json", config)},
        "an extra file": {**files(config, tensors), "run.sh": ("run.sh", b"rm -rf /")},
    }


def test_bad_uploads_are_refused_and_nothing_changes(patchset, backbone, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    base = backbone(x)
    before = dict(patchset.model.patches.items())
    with client(patchset) as c:
        for why, files in _bad_uploads(backbone, tmp_path).items():
            r = c.post("/v1/patches", files=files)
            assert r.status_code in (400, 422), (why, r.status_code, r.text)
            assert r.json()["error"], why
            assert dict(patchset.model.patches.items()) == before, why
            assert [p["name"] for p in c.get("/v1/patches").json()["patches"]] == ["a", "b"]
        r = c.post("/v1/patches", files=_bad_uploads(backbone, tmp_path)["another method"])
        assert r.status_code == 422 and "batches Δ-family patches only" in r.json()["error"]
        r = c.post("/v1/patches", files=_bad_uploads(backbone, tmp_path)["a segmentation patch"])
        assert r.status_code == 422 and "segmentation patch" in r.json()["error"]
        assert c.post("/v1/patches", json={"x": 1}).status_code == 415
    assert torch.equal(patchset.model(x), base)


def test_admin_endpoints_need_the_key(patchset, backbone, tmp_path):
    folder = save_patch(backbone, tmp_path, "c", 4, 2)
    files = {n: (n, (folder / n).read_bytes()) for n in ("config.json", "patch.safetensors")}
    with client(patchset, api_key=KEY) as c:
        r = c.post("/v1/patches", files=files)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/patches", files=files,
                      headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.delete("/v1/patches/a").status_code == 401
        assert c.delete("/v1/patches/a", headers={"Authorization": "Basic " + KEY}
                        ).status_code == 401
        assert "a" in patchset.model.patches
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.post("/v1/patches", files=files, headers=ok).status_code == 201
        assert c.delete("/v1/patches/a", headers=ok).status_code == 200
        assert c.get("/v1/patches").status_code == 200  # reading stays open
        assert c.post("/v1/predict", json={"image": b64(png(0))}).status_code == 200


def test_bad_input_is_a_4xx_with_an_error_never_a_5xx(patchset):
    tiny = png(0, size=1)
    big = png(0, size=64)
    cases = [
        (400, dict(content=b"{not json", headers={"content-type": "application/json"})),
        (400, dict(json=["a list"])),
        (400, dict(json={"image": "%%%not base64"})),
        (400, dict(json={"image": 5})),
        (400, dict(json={"image": b64(png(0)), "patch": "a", "patches": ["b"]})),
        (400, dict(json={"image": b64(png(0)), "patches": []})),
        (400, dict(json={"image": b64(png(0)), "top_k": 0})),
        (400, dict(json={"image": b64(png(0)), "top_k": "many"})),
        (400, dict(files={"picture": ("x.png", png(0))})),
        (400, dict(files={"image": ("x.png", png(0))}, data={"patches": "[" * 100_000})),
        (400, dict(files={"image": ("x.png", png(0))}, data={"patches": "[1, 2]"})),
        (404, dict(json={"image": b64(png(0)), "patch": "nope"})),
        (413, dict(content=b"x" * 300_000, headers={"content-type": "application/json"})),
        (413, dict(json={"image": b64(big)})),  # over max_image_pixels
        (415, dict(content=b"hello", headers={"content-type": "text/plain"})),
        (415, dict(json={"image": b64(b"GIF89a but not really an image")})),
        (415, dict(json={"image": b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)})),
        (422, dict(json={"image": b64(tiny)})),
    ]
    limits = Limits(max_request_bytes=200_000, max_image_pixels=40 * 40)
    with client(patchset, limits=limits) as c:
        for status, kwargs in cases:
            r = c.post("/v1/predict", **kwargs)
            assert (r.status_code, set(r.json())) == (status, {"error"}), (kwargs.keys(), r.text)
        assert c.get("/nowhere").status_code == 404 and "error" in c.get("/nowhere").json()
        assert c.get("/v1/predict").status_code == 405
        assert c.delete("/v1/patches/..%2F..%2Fetc").status_code == 404
        big_upload = c.post("/v1/patches", files={"config.json": ("config.json", b"x" * 10)},
                            headers={"content-length": str(10**12)})
        assert big_upload.status_code in (400, 413)
        metrics = c.get("/metrics").text
        assert 'deltapatch_errors_total{status="500"}' not in metrics


def test_upload_over_the_limit_is_413(patchset, backbone, tmp_path):
    folder = save_patch(backbone, tmp_path, "c", 4, 2)
    files = {n: (n, (folder / n).read_bytes()) for n in ("config.json", "patch.safetensors")}
    with client(patchset, limits=Limits(max_upload_bytes=1000)) as c:
        r = c.post("/v1/patches", files=files)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert "c" not in patchset.model.patches


@pytest.mark.parametrize("fanout", [False, True])
def test_a_fanout_of_tasks_with_different_image_sizes_is_refused(patchset, backbone, tmp_path,
                                                                 fanout):
    donor = dp.PatchedModel(backbone)
    donor.add_patch("big", 3, stages=1, preprocess=dp.Preprocess(48))
    donor.save_patch("big", tmp_path / "big")
    patchset.add(tmp_path / "big")
    with client(patchset) as c:
        body = {"image": b64(png(0))}
        body.update({"patches": ["big", "a"]} if fanout else {"patch": "big"})
        r = c.post("/v1/predict", json=body)
        assert r.status_code == (422 if fanout else 200), r.text


def test_a_client_that_leaves_mid_body_is_a_499_one_line_no_traceback(patchset, caplog):
    """Headers and part of a body, then the socket closes, against a real uvicorn on
    127.0.0.1: one log line per client, counted under 499 (nginx's "client closed request"),
    never a 5xx, never "Exception in ASGI application" with a traceback."""
    import logging
    import re
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(patchset), host="127.0.0.1", port=port,
                                           log_config=None, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    requests = [("/v1/predict", "application/json"),
                ("/v1/predict", "multipart/form-data; boundary=b"),
                ("/v1/patches", "multipart/form-data; boundary=b")]
    with caplog.at_level(logging.INFO):
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            for path, kind in requests:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    c.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {kind}\r\n"
                              "Content-Length: 100000\r\n\r\n".encode() + b"{" * 1000)
                    time.sleep(0.2)  # the app is reading the body when the client leaves
            while True:  # the server notices each close on its own time
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
                if 'status="499"} 3.0' in metrics or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            server.should_exit = True
            thread.join(30)
    assert 'deltapatch_errors_total{status="499"} 3.0' in metrics, metrics
    assert not re.search(r'status="5\d\d"', metrics), metrics
    assert not any(r.exc_info for r in caplog.records), caplog.text
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text
    gone = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 3 and all("\n" not in m for m in gone), gone


@needs_shared
def test_predict_server_is_byte_identical_to_local_predict(tmp_path, capsys, monkeypatch):
    """SERVING.md: ``predict --server`` prints what local ``predict`` prints, base rows included:
    the CIFAR-10 weights label their base classes with CIFAR-10's names on both sides."""
    from deltapatch.cli import main
    from deltapatch.serve.client import Client
    from deltapatch.serve.patchset import PatchSet

    backbone = dp.load_backbone("cifar_resnet20", weights="cifar10")
    save_patch(backbone, tmp_path / "patches", "a", 5, 1)
    image = tmp_path / "img.png"
    image.write_bytes(png(3))
    patchset = PatchSet(dp.PatchedModel(backbone).eval())
    patchset.load_dir(tmp_path / "patches")

    def lines(*argv) -> str:
        assert main([str(a) for a in argv]) == 0
        return capsys.readouterr().out

    local = [lines("predict", "--backbone", "cifar_resnet20", "--weights", "cifar10", *patch,
                   "--top", "3", image) for patch in ([], ["--patch", tmp_path / "patches/a"])]
    with client(patchset) as c:
        monkeypatch.setattr(Client, "_call", lambda self, method, path, body, kind: c.post(
            path, content=body, headers={"content-type": kind}).json())
        remote = [lines("predict", "--server", "http://test", *patch, "--top", "3", image)
                  for patch in ([], ["--patch", "a"])]
    assert remote == local  # the bytes printed
    base, patched = (json.loads(text) for text in local)
    assert {t["name"] for t in base["top"]} <= set(dp.backbones.cifar.CIFAR10_CLASSES)
    assert patched["top"][0]["name"].startswith("a-")
