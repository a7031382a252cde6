"""The Open Inference Protocol (``/v2``) in-process: every endpoint, JSON and binary tensors, both
inputs, answers equal to the backbone and to ``/v1/predict`` bit for bit, ``__fanout__`` with an
``outputs`` subset, every error path, and bodies whose declared sizes lie refused before
anything is allocated. Requests are built here by hand, byte for byte as the protocol says, so
the server's codec is checked against the spec rather than against itself."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import png, run_async
from fastapi.testclient import TestClient

import deltapatch as dp
from deltapatch.data.sets import to_image_tensor
from deltapatch.data.sources import decode_image
from deltapatch.serve.app import create_app
from deltapatch.serve.inputs import HTTPFail, Limits
from deltapatch.serve.oip_codec import decode_request

HEADER = "Inference-Header-Content-Length"


def client(patchset, **settings) -> TestClient:
    return TestClient(create_app(patchset, **settings), raise_server_exceptions=False)


def normalized(image: bytes, pre: dp.Preprocess) -> torch.Tensor:
    """What a client of the ONNX graph feeds it: the file decoded, resized and normalized."""
    return pre.normalize(to_image_tensor(decode_image(image, "t")[None], pre.size))


def bytes_elements(files: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "little") + f for f in files)


def request(inputs: dict | list[dict], raw: list[bytes] = (), outputs: list[dict] | None = None,
            **params) -> dict:
    """httpx keyword arguments of one infer request (one input or a list): the JSON head, then
    ``raw`` binary data."""
    doc = {"inputs": [inputs] if isinstance(inputs, dict) else inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    if params:
        doc["parameters"] = params
    head = json.dumps(doc).encode()
    if not raw:
        return {"content": head, "headers": {"content-type": "application/json"}}
    return {"content": head + b"".join(raw), "headers": {HEADER: str(len(head))}}


def image_input(x: torch.Tensor, binary: bool = True) -> tuple[dict, list[bytes]]:
    spec = {"name": "image", "datatype": "FP32", "shape": list(x.shape)}
    if not binary:
        return {**spec, "data": x.tolist()}, []  # nested lists, as the protocol allows
    raw = x.numpy().astype("<f4").tobytes()
    return {**spec, "parameters": {"binary_data_size": len(raw)}}, [raw]


def bytes_input(files: list[bytes], binary: bool = True) -> tuple[dict, list[bytes]]:
    spec = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)]}
    if not binary:
        return {**spec, "data": [base64.b64encode(f).decode() for f in files]}, []
    raw = bytes_elements(files)
    return {**spec, "parameters": {"binary_data_size": len(raw)}}, [raw]


def outputs_of(response) -> dict[str, np.ndarray]:
    """Every output of an infer answer as an array, whichever form each came in."""
    assert response.status_code == 200, response.text
    body = response.content
    n = int(response.headers.get(HEADER, len(body)))
    doc, rest, out = json.loads(body[:n]), body[n:], {}
    for o in doc["outputs"]:
        assert o["datatype"] == "FP32"
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(rest[:size], "<f4").reshape(o["shape"])
            rest = rest[size:]
    assert not rest
    return out


def v1_logits(c: TestClient, image: bytes, patch: str) -> torch.Tensor:
    r = c.post("/v1/predict", json={"image": base64.b64encode(image).decode(), "patch": patch,
                                    "return_logits": True})
    return torch.tensor(r.json()["logits"])


def test_health_server_and_model_metadata(patchset):
    with client(patchset) as c:
        assert c.get("/v2").json() == {"name": "deltapatch", "version": dp.__version__,
                                       "extensions": ["binary_tensor_data"]}
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2/models/a").json()
        assert meta["name"] == "a" and meta["versions"] == ["1"]
        assert meta["inputs"] == [
            {"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]},
                                   {"name": "probabilities", "datatype": "FP32",
                                    "shape": [-1, 5]}]
        p = meta["parameters"]
        assert json.loads(p["class_names"]) == [f"a-{i}" for i in range(5)]
        assert (p["image_size"], json.loads(p["mean"]), json.loads(p["std"])) == (
            32, list(patchset.model.preprocess.mean), list(patchset.model.preprocess.std))
        assert all(isinstance(v, (str, int, float, bool)) for v in p.values())  # spec: scalars
        assert c.get("/v2/models/__base__").json()["outputs"][0]["shape"] == [-1, 10]
        fan = c.get("/v2/models/__fanout__").json()
        assert [(o["name"], o["shape"]) for o in fan["outputs"]] == [
            ("__base__", [-1, 10]), ("a", [-1, 5]), ("b", [-1, 3])]
        assert json.loads(fan["parameters"]["tasks"])["b"]["class_names"] == ["b-0", "b-1", "b-2"]
        assert c.get("/v2/models/a/versions/1").json() == meta
        for name in ("a", "__base__", "__fanout__"):
            assert c.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
        assert c.get("/v2/models/a/versions/1/ready").status_code == 200
        for bad in ("/v2/models/zz", "/v2/models/zz/ready", "/v2/models/a/versions/2",
                    "/v2/models/a/versions/2/ready"):
            r = c.get(bad)
            assert (r.status_code, list(r.json())) == (404, ["error"]), bad


@pytest.mark.parametrize("binary", [True, False])
def test_base_answers_are_the_backbone_bit_for_bit(patchset, backbone, binary):
    images = [png(s) for s in range(3)]
    x = torch.cat([normalized(im, patchset.model.preprocess) for im in images])
    with torch.inference_mode():
        want = [backbone(x[i:i + 1])[0] for i in range(3)]  # each image alone
    spec, raw = image_input(x, binary)
    with client(patchset) as c:
        got = outputs_of(c.post("/v2/models/__base__/infer",
                                **request([spec], raw, binary_data_output=binary)))
        for i in range(3):
            assert torch.equal(torch.from_numpy(got["logits"][i].copy()), want[i])
            assert torch.equal(torch.from_numpy(got["probabilities"][i].copy()),
                               want[i][None].softmax(1)[0])
        spec, raw = bytes_input(images, binary)
        files = outputs_of(c.post("/v2/models/__base__/infer", **request([spec], raw)))
        assert np.array_equal(files["logits"], got["logits"])


@pytest.mark.parametrize("binary", [True, False])
def test_patch_answers_equal_v1_predict(patchset, binary):
    image = png(7)
    x = normalized(image, patchset.model.preprocess)
    with client(patchset) as c:
        for name in ("a", "b"):
            want = v1_logits(c, image, name)
            for spec, raw in (bytes_input([image], binary), image_input(x, binary)):
                out = [{"name": "logits", "parameters": {"binary_data": binary}},
                       {"name": "probabilities"}]  # this one as the request's default: JSON
                r = c.post(f"/v2/models/{name}/infer", **request([spec], raw, out))
                got = outputs_of(r)
                assert list(got) == ["logits", "probabilities"]
                assert torch.equal(torch.from_numpy(got["logits"][0].copy()), want)
                assert torch.equal(torch.from_numpy(got["probabilities"][0].copy()),
                                   want[None].softmax(1)[0])
                assert (HEADER in r.headers) == binary
        only = c.post("/v2/models/a/infer", **request(*bytes_input([image]),
                                                      [{"name": "probabilities"}]))
        assert list(outputs_of(only)) == ["probabilities"]
        tagged = c.post("/v2/models/a/versions/1/infer", **request(*bytes_input([image])))
        assert json.loads(tagged.content[:int(tagged.headers.get(HEADER, 10**9))])[
            "model_name"] == "a"


def test_fanout_answers_the_tasks_its_outputs_name(patchset, library):
    images = [png(3), png(4)]
    with client(patchset) as c:
        subset = [{"name": "b", "parameters": {"binary_data": True}}, {"name": "__base__"}]
        got = outputs_of(c.post("/v2/models/__fanout__/infer",
                                **request(*bytes_input(images), subset)))
        assert list(got) == ["b", "__base__"]
        for i, image in enumerate(images):
            for name in ("b", "__base__"):
                assert torch.equal(torch.from_numpy(got[name][i].copy()),
                                   v1_logits(c, image, name))
        every = outputs_of(c.post("/v2/models/__fanout__/infer",
                                  **request(*bytes_input(images), binary_data_output=True)))
        assert list(every) == ["__base__", "a", "b"] and every["a"].shape == (2, 5)
        assert np.array_equal(every["b"], got["b"])
        body = request(*bytes_input(images), [{"name": "a"}, {"name": "zz"}])
        r = c.post("/v2/models/__fanout__/infer", **body)
        assert r.status_code == 404 and "no patch named 'zz'" in r.json()["error"]


def test_an_id_is_echoed_and_requests_count_per_api(patchset):
    image = png(1)
    with client(patchset) as c:
        doc = {"id": "req-7", "inputs": [bytes_input([image], binary=False)[0]]}
        r = c.post("/v2/models/a/infer", json=doc)
        assert r.json()["id"] == "req-7" and r.headers["content-type"] == "application/json"
        v1_logits(c, image, "a")
        text = c.get("/metrics").text
        assert 'deltapatch_requests_total{patch="a"} 2.0' in text
        assert 'deltapatch_api_requests_total{api="v1",patch="a"} 1.0' in text
        assert 'deltapatch_api_requests_total{api="v2",patch="a"} 1.0' in text
        c.delete("/v1/patches/a")
        assert 'patch="a"' not in c.get("/metrics").text


def _errors(pre: dp.Preprocess) -> list[tuple[int, str, dict]]:
    good, _ = bytes_input([png(0)], binary=False)
    x = normalized(png(0), pre)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    return [
        (400, "a", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
        (400, "a", {"json": ["a list"]}),
        (400, "a", {"json": {"inputs": []}}),
        (400, "a", {"json": {"inputs": [good, {**good, "name": "image"}]}}),
        (400, "a", {"json": {"inputs": [{**good, "name": "pixels"}]}}),
        (400, "a", {"json": {"inputs": [{**good, "datatype": "INT8"}]}}),
        (400, "a", {"json": {"inputs": [{**good, "shape": [1, 1, 1]}]}}),
        (400, "a", {"json": {"inputs": [{**good, "data": ["%%% not base64"]}]}}),
        (400, "a", {"json": {"inputs": [{**good, "data": [5]}]}}),
        (400, "a", {"json": {"inputs": [{**good, "shape": [0], "data": []}]}}),
        (400, "a", {"json": {"inputs": [good], "outputs": [{"name": "scores"}]}}),
        (400, "a", {"json": {"inputs": [good], "parameters": {"binary_data_output": "yes"}}}),
        (400, "a", {"json": {"inputs": [{"name": "image", "datatype": "FP32",
                                         "shape": [1, 3, 16, 16], "data": [0.0] * 768}]}}),
        (400, "a", {"json": {"inputs": [{"name": "image", "datatype": "FP32",
                                         "shape": [1, 3, 32, 32], "data": [True] * 3072}]}}),
        (400, "a", {"json": {"inputs": [good], "id": 5}}),
        (404, "zz", {"json": {"inputs": [good]}}),
        (404, "__fanout__", {"json": {"inputs": [good], "outputs": [{"name": "nope"}]}}),
        (413, "a", {"json": {"inputs": [{**good, "shape": [9], "data": good["data"] * 9}]}}),
        (413, "a", {"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}),
        (413, "a", request(*bytes_input([png(0, size=64)]))),  # over max_image_pixels
        (415, "a", request(*bytes_input([b"GIF89a but not really an image"]))),
        (415, "a", {"json": {"inputs": [good]}, "headers": {"content-encoding": "gzip"}}),
        (422, "a", request(*bytes_input([png(0, size=1)]))),
        (422, "a", request(*image_input(nan))),
    ]


def test_bad_requests_are_4xx_with_an_error_never_a_5xx(patchset):
    limits = Limits(max_request_bytes=200_000, max_image_pixels=40 * 40, max_images=8)
    with client(patchset, limits=limits) as c:
        for status, model, kwargs in _errors(patchset.model.preprocess):
            r = c.post(f"/v2/models/{model}/infer", **kwargs)
            assert (r.status_code, list(r.json())) == (status, ["error"]), (kwargs, r.text)
        assert c.get("/v2/models/a/infer").status_code == 405
        assert c.post("/v2/models/a/versions/3/infer",
                      json={"inputs": [bytes_input([png(0)], False)[0]]}).status_code == 404
        assert 'deltapatch_errors_total{status="500"}' not in c.get("/metrics").text
        assert not patchset._inflight  # every refused request let go of its tasks


def _lies() -> dict[str, tuple[bytes, str | None]]:
    """Bodies whose declared sizes are not what they hold (JSON head, header value)."""
    def body(spec: dict, raw: bytes = b"") -> tuple[bytes, str]:
        head = json.dumps({"inputs": [spec]}).encode()
        return head + raw, str(len(head))

    fp32 = {"name": "image", "datatype": "FP32"}
    files = {"name": "image_bytes", "datatype": "BYTES"}
    return {
        "binary size past the body": body({**fp32, "shape": [1, 3, 32, 32],
                                           "parameters": {"binary_data_size": 1 << 40}}, b"\0" * 64),
        "huge shape, small data": body({**fp32, "shape": [10**12, 3, 1 << 20, 1 << 20],
                                        "parameters": {"binary_data_size": 64}}, b"\0" * 64),
        "shape product not the data length": body({**fp32, "shape": [1, 3, 32, 32],
                                                   "parameters": {"binary_data_size": 64}},
                                                  b"\0" * 64),
        "JSON data not the shape": (json.dumps({"inputs": [{**fp32, "shape": [10**15],
                                                           "data": [0.5, 1.5]}]}).encode(), None),
        "bytes left over": body({**fp32, "shape": [4], "parameters": {"binary_data_size": 16}},
                                b"\0" * 20),
        "a BYTES length past its data": body({**files, "shape": [1], "parameters": {
            "binary_data_size": 8}}, b"\xff\xff\xff\xff" + b"abcd"),
        "more BYTES elements than bytes": body({**files, "shape": [10**9], "parameters": {
            "binary_data_size": 8}}, bytes_elements([b"abcd"])),
        "header longer than the body": (b'{"inputs": []}', "1000000"),
        "header not a number": (b'{"inputs": []}', "-5"),
        "data nested too deep": (json.dumps({"inputs": [{**fp32, "shape": [1], "data":
                                                         [[[[[[[[[[0.5]]]]]]]]]]}]}).encode(),
                                 None),
    }


@pytest.mark.parametrize("why", list(_lies()))
def test_sizes_that_lie_are_refused_before_anything_is_allocated(why):
    body, header = _lies()[why]
    tracemalloc.start()
    try:
        with pytest.raises(HTTPFail) as err:
            decode_request(body, header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.status == 400, err.value.message
    assert peak < 1 << 20, f"{why}: {peak} bytes allocated while refusing"


def test_lying_sizes_over_http_are_400(patchset):
    with client(patchset) as c:
        for why, (body, header) in _lies().items():
            headers = {HEADER: header} if header else {"content-type": "application/json"}
            r = c.post("/v2/models/a/infer", content=body, headers=headers)
            assert (r.status_code, list(r.json())) == (400, ["error"]), (why, r.text)


def test_a_full_queue_is_503_and_nothing_of_the_request_is_queued(patchset):
    """The worker held on its first batch; two queued images fill the queue (2); one more image
    is refused whole, and everything queued is answered once the worker goes on."""
    gate = threading.Event()

    async def go(c, app):
        batcher = app.state.batcher
        run = batcher._run
        batcher._run = lambda batch: (gate.wait(30), run(batch))[1]
        post = lambda n: c.post("/v2/models/a/infer",  # noqa: E731
                                **request(*bytes_input([png(i) for i in range(n)])))
        first = asyncio.create_task(post(1))
        while not batcher.recent:
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(post(2))
        while len(batcher._queue) < 2:
            await asyncio.sleep(0.01)
        refused = await post(1)
        gate.set()
        return refused, await first, await queued

    refused, first, queued = run_async(patchset, go, max_batch=1, max_queue=2)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "error" in refused.json()
    assert outputs_of(first)["logits"].shape == (1, 5)
    assert outputs_of(queued)["logits"].shape == (2, 5)
    assert not patchset._inflight


def test_normalized_and_file_rows_share_a_batch_in_their_own_groups(patchset, library):
    """A ``/v2`` float row and a ``/v1`` file row of one patch in the same batch: each is
    normalized once (never twice) and answered as the library answers."""
    image = png(5)
    x = normalized(image, patchset.model.preprocess)
    with torch.inference_mode():
        want = library(x, patch="a")[0]

    async def go(c, app):
        v2 = c.post("/v2/models/a/infer", **request(*image_input(x)))
        v1 = c.post("/v1/predict", json={"image": base64.b64encode(image).decode(),
                                         "patch": "a", "return_logits": True})
        r2, r1 = await asyncio.gather(v2, v1)
        return r2, r1, list(app.state.batcher.recent)

    r2, r1, batches = run_async(patchset, go, max_wait_ms=300)
    assert [len(b) for b in batches] == [2]  # they did share the batch
    assert torch.equal(torch.from_numpy(outputs_of(r2)["logits"][0].copy()), want)
    assert torch.equal(torch.tensor(r1.json()["logits"]), want)


def test_float_and_uint8_groups_stage_to_the_device_each_in_their_dtype(monkeypatch):
    """On (fake) CUDA a batch of file rows and already-normalized rows goes over as two flat
    copies, one per dtype, and every group runs."""
    from test_serve_device import _jobs, _run_on_fake_cuda

    from deltapatch.serve import batcher as batcher_module
    from deltapatch.serve.readout import Answer

    devices = []  # the read-out's rows (fake tensors have no values to read)
    monkeypatch.setattr(batcher_module, "read_out", lambda rows: devices.extend(
        t.device.type for t, _ in rows) or [Answer([0.0], [0], None)] * len(rows))
    jobs = _jobs()
    g = torch.Generator().manual_seed(1)
    for job in _jobs()[:8]:  # two rows of each routed task, as _jobs says
        job.x, job.normalized = torch.randn(3, 32, 32, generator=g), True
        jobs.append(job)
    results = _run_on_fake_cuda(monkeypatch, jobs)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert set(devices) == {"cuda"} and len(devices) == sum(len(j.names) for j in jobs)
