"""Batching, queue limits, runtime add/remove and shutdown under concurrent requests (httpx
against the ASGI app in-process, one event loop, the forward in the batcher's worker thread)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import torch
from conftest import png, run_async, save_patch

import deltapatch as dp
from deltapatch.data.sets import to_image_tensor
from deltapatch.data.sources import decode_image


def body(seed: int, **fields) -> dict:
    return {"image": base64.b64encode(png(seed)).decode(), "return_logits": True, **fields}


def test_mixed_requests_land_in_one_batch_and_match_the_library(patchset, library):
    tasks = ["a", "b", "__base__", "a", "b", "__base__"]

    routed: list[int] = []  # rows of each call of the model's own forward (the routed path)
    hook = patchset.model.register_forward_pre_hook(lambda _m, args: routed.append(len(args[0])))

    async def go(client, app):
        rs = await asyncio.gather(*(client.post("/v1/predict", json=body(i, patch=t))
                                    for i, t in enumerate(tasks)))
        return [r.json() for r in rs], list(app.state.batcher.recent), \
            (await client.get("/metrics")).text

    try:
        answers, batches, metrics = run_async(patchset, go, max_batch=6, max_wait_ms=2000)
    finally:
        hook.remove()
    assert routed == [4]  # one routed forward for the four patched rows of two patches
    assert len(batches) == 1  # all six rode in one batch (in the order their images decoded)
    assert sorted(batches[0]) == sorted((t,) for t in tasks)
    assert "deltapatch_batch_patches_sum 3.0" in metrics
    x = torch.cat([to_image_tensor(decode_image(png(i), "t")[None], 32) for i in range(6)])
    x = library.preprocess.normalize(x)
    with torch.inference_mode():
        for i, (t, answer) in enumerate(zip(tasks, answers, strict=True)):
            got = torch.tensor(answer["logits"])
            alone = library(x[i:i + 1], patch=t)[0]
            if t == dp.BASE:  # base rows run the plain backbone on their own image: exact
                assert torch.equal(got, alone)
            else:  # a routed row in a batch of 4 may differ from batch 1 in the last bits only
                assert torch.allclose(got, alone, rtol=1e-5, atol=1e-6)


def _hold_batches(batcher, gate: threading.Event) -> None:
    """Every batch waits for ``gate`` before its forward: requests pile up behind it."""
    run = batcher._run
    batcher._run = lambda batch: (gate.wait(30), run(batch))[1]


def test_queue_full_is_503_with_retry_after(patchset):
    gate = threading.Event()

    async def go(client, app):
        batcher = app.state.batcher
        _hold_batches(batcher, gate)
        pending = [asyncio.ensure_future(client.post("/v1/predict", json=body(i)))
                   for i in range(3)]
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        gate.set()
        return [r.status_code for r in await asyncio.gather(*pending)], \
            [r.headers.get("retry-after") for r in await asyncio.gather(*pending)]

    codes, retry = run_async(patchset, go, max_batch=1, max_wait_ms=0, max_queue=1)
    assert 503 in codes and set(codes) <= {200, 503} and codes.count(200) >= 1
    assert all(r == "1" for c, r in zip(codes, retry, strict=True) if c == 503)


def test_delete_during_traffic_lets_queued_requests_finish(patchset):
    gate = threading.Event()

    async def go(client, app):
        batcher = app.state.batcher
        _hold_batches(batcher, gate)
        first = [asyncio.ensure_future(client.post("/v1/predict", json=body(i, patch="a")))
                 for i in range(4)]
        while patchset._inflight.get("a", 0) < 4 or not batcher.recent:  # all held, one runs
            await asyncio.sleep(0.01)
        deleting = asyncio.ensure_future(client.delete("/v1/patches/a"))
        await asyncio.sleep(0.2)
        late = await client.post("/v1/predict", json=body(9, patch="a"))
        still_there = "a" in patchset.model.patches and not deleting.done()
        gate.set()
        return [r.status_code for r in await asyncio.gather(*first)], late.status_code, \
            still_there, (await deleting).status_code

    codes, late, still_there, deleted = run_async(patchset, go, max_batch=2, max_wait_ms=0)
    assert codes == [200] * 4  # every request that got in before the DELETE is answered
    assert late == 404  # a new one is not: the patch is invisible at once
    assert still_there  # ... but stays in the model until the held requests are done
    assert deleted == 200 and "a" not in patchset.model.patches


def test_concurrent_uploads_and_deletes_of_one_name_stay_consistent(patchset, backbone,
                                                                    tmp_path):
    folder = save_patch(backbone, tmp_path, "c", 4, 2)
    files = {n: (n, (folder / n).read_bytes()) for n in ("config.json", "patch.safetensors")}

    async def go(client, app):
        calls = []
        for i in range(12):
            calls.append(client.post("/v1/patches", files=files) if i % 2 == 0
                         else client.delete("/v1/patches/c"))
            calls.append(client.post("/v1/predict", json=body(i, patch="c")))
        rs = await asyncio.gather(*calls)
        listed = [p["name"] for p in (await client.get("/v1/patches")).json()["patches"]]
        final = await client.post("/v1/predict", json=body(0, patch="c"))
        return [(r.request.method, r.url.path, r.status_code) for r in rs], listed, \
            final.status_code

    results, listed, final = run_async(patchset, go)
    for method, path, status in results:
        if path == "/v1/patches":
            assert status in (201, 409)
        elif method == "DELETE":
            assert status in (200, 404)
        else:
            assert status in (200, 404)
    assert ("c" in listed) == ("c" in patchset.model.patches) == (final == 200)
    assert any(s == 201 for _, p, s in results if p == "/v1/patches")


def test_shutdown_drains_in_flight_requests(patchset):
    import httpx

    from deltapatch.serve.app import create_app

    app = create_app(patchset, max_batch=2, max_wait_ms=50)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            async with app.router.lifespan_context(app):
                batcher, queued = app.state.batcher, []
                submit = batcher.submit
                batcher.submit = lambda job: (queued.append(job), submit(job))[1]
                pending = [asyncio.ensure_future(client.post("/v1/predict",
                                                             json=body(i, patch="b")))
                           for i in range(6)]
                deadline = time.monotonic() + 30  # a busy machine decodes slowly
                while len(queued) < 6 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # until every request is queued; then stop
            codes = [r.status_code for r in await asyncio.wait_for(asyncio.gather(*pending), 60)]
            after = await client.post("/v1/predict", json=body(0))
            ready = await client.get("/ready")
        return codes, after.status_code, ready.status_code

    codes, after, ready = asyncio.run(main())
    assert codes == [200] * 6 and after == 503 and ready == 503
