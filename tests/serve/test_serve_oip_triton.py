"""Triton's own HTTP client, unchanged, against a live ``deltapatch serve`` app (uvicorn on
127.0.0.1, in a thread): readiness, metadata, and ``infer`` on a patch, ``__base__`` and
``__fanout__`` with binary and JSON tensors, answers equal to ``/v1/predict``'s logits."""

from __future__ import annotations

import base64
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import png

from deltapatch.data.sets import to_image_tensor
from deltapatch.data.sources import decode_image
from deltapatch.serve.app import create_app

httpclient = pytest.importorskip(
    "tritonclient.http", reason="tritonclient is not installed: pip install 'tritonclient[http]'")


@pytest.fixture
def server(patchset):
    """``host:port`` of the app served by uvicorn for the test's length (at most 60 s to start,
    10 s to stop)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(patchset), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def v1_logits(url: str, image: bytes, patch: str) -> np.ndarray:
    r = httpx.post(f"http://{url}/v1/predict", timeout=30, json={
        "image": base64.b64encode(image).decode(), "patch": patch, "return_logits": True})
    return np.asarray(r.raise_for_status().json()["logits"], dtype=np.float32)


def files_input(images: list[bytes], binary: bool = True):
    tensor = httpclient.InferInput("image_bytes", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def image_input(x: np.ndarray, binary: bool):
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_readiness_and_metadata(server):
    c = httpclient.InferenceServerClient(server)
    assert c.is_server_live() and c.is_server_ready()
    assert all(c.is_model_ready(m) for m in ("a", "b", "__base__", "__fanout__"))
    assert not c.is_model_ready("zz")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata("a")
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert [i["name"] for i in meta["inputs"]] == ["image", "image_bytes"]
    assert [o["name"] for o in c.get_model_metadata("__fanout__")["outputs"]] == [
        "__base__", "a", "b"]


def test_binary_infer_on_a_patch_equals_v1(server):
    """One image: /v1's logits bit for bit. Two in one request share a routed batch, so (as
    for /v1 requests that share one) they may differ from each alone in the last bits."""
    c = httpclient.InferenceServerClient(server)
    images = [png(1), png(2)]
    result = c.infer("a", [files_input(images[:1])])  # outputs unnamed: all, binary
    logits = result.as_numpy("logits")
    assert np.array_equal(logits[0], v1_logits(server, images[0], "a"))
    probs = result.as_numpy("probabilities")
    assert np.array_equal(probs, torch.from_numpy(logits.copy()).softmax(1).numpy())
    both = c.infer("a", [files_input(images)]).as_numpy("logits")
    for row, image in zip(both, images, strict=True):
        assert np.allclose(row, v1_logits(server, image, "a"), rtol=1e-5, atol=1e-6)


def test_json_tensors_on_the_base_are_the_backbone(server, patchset, backbone):
    c = httpclient.InferenceServerClient(server)
    image = png(3)
    pre = patchset.model.preprocess
    x = pre.normalize(to_image_tensor(decode_image(image, "t")[None], pre.size))
    with torch.inference_mode():
        want = backbone(x).numpy()
    out = httpclient.InferRequestedOutput("logits", binary_data=False)
    result = c.infer("__base__", [image_input(x.numpy(), binary=False)], outputs=[out])
    assert result.get_output("logits")["data"]  # it did come as JSON
    assert np.array_equal(result.as_numpy("logits"), want)
    result = c.infer("__base__", [image_input(x.numpy(), binary=True)])
    assert np.array_equal(result.as_numpy("logits"), want)
    assert np.array_equal(result.as_numpy("logits")[0], v1_logits(server, image, "__base__"))


def test_fanout_with_an_outputs_subset(server):
    c = httpclient.InferenceServerClient(server)
    image = png(4)
    outs = [httpclient.InferRequestedOutput("b"),
            httpclient.InferRequestedOutput("__base__", binary_data=False)]
    result = c.infer("__fanout__", [files_input([image])], outputs=outs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["b", "__base__"]
    assert result.as_numpy("a") is None
    for name in ("b", "__base__"):
        assert np.array_equal(result.as_numpy(name)[0], v1_logits(server, image, name))
    with pytest.raises(httpclient.InferenceServerException, match="no patch named 'zz'"):
        c.infer("__fanout__", [files_input([image])],
                outputs=[httpclient.InferRequestedOutput("zz")])
