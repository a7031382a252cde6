"""The batcher driven directly (no HTTP): its queue bound and refusals word for word, a refused
request leaves nothing queued, a batch leaves when full or at its deadline and takes late
arrivals before it, a failed forward is every job's answer and a gone client costs nobody
theirs, the batch metrics, one device thread for every batch (none left after closing), Λ per
image, and the batch in the model's dtype."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from dataclasses import replace

import pytest
import torch
from helpers import random_backbone

import deltapatch as dp
from deltapatch.serve.batcher import Batcher, Closed, Job, QueueFull
from deltapatch.serve.metrics import ServeMetrics
from deltapatch.serve.readout import Ask

BOUND = 10.0
"""Seconds any awaited answer may take here; far above a forward of the tiny model (ms)."""


@pytest.fixture(scope="module")
def model() -> dp.PatchedModel:
    m = dp.PatchedModel(random_backbone())
    m.add_patch("a", num_classes=4, stages=1)
    return m.eval()


def job(seed: int, name: str = "a") -> Job:
    g = torch.Generator().manual_seed(seed)
    return Job(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g), (name,),
               False, (Ask(4 if name == "a" else 10, 2),), dp.Preprocess(32))


def run(body, model: dp.PatchedModel, **settings):
    """``await body(batcher)`` on a fresh batcher (started unless ``start=False``), closed after."""
    start = settings.pop("start", True)

    async def main():
        batcher = Batcher(model, ServeMetrics(), **settings)
        if start:
            batcher.start()
        try:
            return await asyncio.wait_for(body(batcher), 3 * BOUND)
        finally:  # bounded too: a loop that never stops is a failure, not a hung test
            await asyncio.wait_for(batcher.close(), BOUND)

    return asyncio.run(main())


def test_the_queue_holds_max_queue_jobs_and_refuses_the_next_in_words(model):
    async def body(b):
        b.submit(job(0))
        b.submit(job(1))
        with pytest.raises(QueueFull) as err:
            b.submit(job(2))
        return str(err.value), len(b._queue)

    message, queued = run(body, model, max_queue=2, start=False)
    assert message == "2 requests are waiting (--max-queue 2); retry shortly"
    assert queued == 2


def test_a_request_that_does_not_fit_is_refused_whole_and_queues_nothing(model):
    async def body(b):
        b.submit(job(0))
        fits = b.submit_all([job(1), job(2)])  # 1 + 2 = max_queue: accepted
        with pytest.raises(QueueFull) as err:
            b.submit_all([job(3)])
        return len(fits), str(err.value), len(b._queue)

    n, message, queued = run(body, model, max_queue=3, start=False)
    assert n == 2 and queued == 3
    assert message == "3 requests are waiting and this one brings 1 (--max-queue 3); retry shortly"


def test_a_request_larger_than_the_room_left_queues_none_of_its_jobs(model):
    async def body(b):
        b.submit(job(0))
        with pytest.raises(QueueFull):
            b.submit_all([job(1), job(2), job(3)])  # the first two would fit alone
        return len(b._queue)

    assert run(body, model, max_queue=3, start=False) == 1


def test_a_closing_batcher_refuses_new_jobs_in_words(model):
    async def body(b):
        b._closing = True  # what close() sets first
        with pytest.raises(Closed) as one:
            b.submit(job(0))
        with pytest.raises(Closed) as many:
            b.submit_all([job(1)])
        return str(one.value), str(many.value)

    assert run(body, model, start=False) == ("the server is shutting down",) * 2


def test_a_full_batch_leaves_at_once_without_waiting_for_the_deadline(model):
    """max_wait is 60 s: only a batch that leaves when full answers within the bound."""
    async def body(b):
        futures = [b.submit(job(0)), b.submit(job(1))]
        await asyncio.wait_for(asyncio.gather(*futures), BOUND)
        return list(b.recent)

    assert run(body, model, max_batch=2, max_wait_ms=60_000) == [[("a",), ("a",)]]


def test_a_lone_job_leaves_when_its_deadline_passes(model):
    """Nothing else arrives: the batch of one leaves after max_wait (50 ms), not never."""
    async def body(b):
        await asyncio.wait_for(b.submit(job(0)), BOUND)
        await asyncio.wait_for(b.submit(job(1)), BOUND)  # and the loop goes on after it
        return list(b.recent)

    assert run(body, model, max_batch=4, max_wait_ms=50) == [[("a",)], [("a",)]]


def test_a_batch_waits_for_jobs_that_arrive_before_its_deadline(model):
    async def body(b):
        first = b.submit(job(0))
        await asyncio.sleep(0.05)  # far inside the 60 s window
        second = b.submit(job(1))
        await asyncio.wait_for(asyncio.gather(first, second), BOUND)
        return list(b.recent)

    assert run(body, model, max_batch=2, max_wait_ms=60_000) == [[("a",), ("a",)]]


def test_a_forward_that_fails_outside_any_group_is_every_jobs_error(model, monkeypatch):
    boom = RuntimeError("staging failed")

    def fail(batch):
        raise boom

    async def body(b):
        monkeypatch.setattr(b, "_run", fail)
        futures = [b.submit(job(i)) for i in range(3)]
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), BOUND)
        return done

    assert run(body, model, max_batch=3, max_wait_ms=60_000) == [boom] * 3


def _device_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("deltapatch-device")}


def test_closing_finishes_queued_jobs_and_leaves_no_device_thread(model):
    before = _device_threads()  # other tests' servers may still hold theirs

    async def body(b):
        futures = [b.submit(job(i)) for i in range(3)]
        await b.close()  # before any batch left: close drains the queue
        return [f.result() for f in futures], _device_threads() - before

    answers, left = run(body, model, max_batch=8, max_wait_ms=60_000)
    assert [list(a) for a in answers] == [["a"]] * 3
    assert not left


def test_with_no_wait_every_job_still_gets_its_answer(model):
    """max_wait 0: each batch leaves at once, and the loop goes on serving the next."""
    async def body(b):
        for i in range(3):
            await asyncio.wait_for(b.submit(job(i)), BOUND)
        return list(b.recent)

    assert run(body, model, max_batch=4, max_wait_ms=0) == [[("a",)]] * 3


def test_a_client_that_went_away_does_not_cost_the_others_their_answers(model):
    async def body(b):
        futures = [b.submit(job(i)) for i in range(3)]
        futures[0].cancel()  # before the batch leaves: its row still runs, its answer is dropped
        rest = await asyncio.wait_for(asyncio.gather(*futures[1:]), BOUND)
        return futures[0].cancelled(), [list(a) for a in rest], list(b.recent)

    gone, rest, recent = run(body, model, max_batch=3, max_wait_ms=60_000)
    assert gone and rest == [["a"], ["a"]] and recent == [[("a",)] * 3]


def test_batch_metrics_count_each_batch_its_size_tasks_and_compute_time(model):
    async def body(b):
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(b.submit(job(0)), b.submit(job(1, dp.BASE))),
                               BOUND)
        elapsed = time.perf_counter() - t0
        value = b.metrics.registry.get_sample_value
        return elapsed, {k: value(f"deltapatch_{k}") for k in (
            "batch_seconds_count", "batch_seconds_sum", "batch_size_sum", "batch_patches_sum",
            "queue_depth")}

    elapsed, seen = run(body, model, max_batch=2, max_wait_ms=60_000, exact_base=False)
    assert 0 < seen.pop("batch_seconds_sum") <= elapsed
    assert seen == {"batch_seconds_count": 1, "batch_size_sum": 2, "batch_patches_sum": 2,
                    "queue_depth": 0}


def test_each_image_of_a_batch_gets_its_own_lambdas(model):
    """Λ is computed per image (that image alone), also when it shares a routed group."""
    jobs = [replace(job(i), lambdas=("a",)) for i in range(3)]

    async def body(b):
        return await asyncio.wait_for(asyncio.gather(*(b.submit(j) for j in jobs)), BOUND)

    answers = run(body, model, max_batch=3, max_wait_ms=60_000)
    names = model.stage_names
    for j, answer in zip(jobs, answers, strict=True):
        with torch.inference_mode():
            alone = model.lambdas(j.prepared(j.x[None]), patch="a")
        assert answer["a"].lambdas == {s: (names[s], t.float().tolist()) for s, t in alone.items()}
        assert all(len(rows) == 1 for _, rows in answer["a"].lambdas.values())


def test_a_float64_model_gets_its_batch_in_float64(model):
    """The batch is cast to the model's dtype on the device, whatever dtype staging made."""
    double = copy.deepcopy(model).double()
    j = replace(job(0), asks=(Ask(4, 4, logits=True),))

    async def body(b):
        return await asyncio.wait_for(b.submit(j), BOUND)

    answer = run(body, double, max_batch=1)["a"]
    with torch.inference_mode():
        want = double(j.prepared(j.x[None]).double(), patch="a")[0]
    assert answer.logits == want.float().tolist()


def test_defaults_and_bounds(model):
    b = Batcher(model, ServeMetrics())
    assert (b.max_batch, b.max_wait, b.max_queue, b.exact_base) == (32, 0.005, 256, True)
    assert b.recent.maxlen == 256  # what tests and debugging see stays bounded
    assert Batcher(model, ServeMetrics(), max_wait_ms=250).max_wait == 0.25
    Batcher(model, ServeMetrics(), max_batch=1, max_queue=1, max_wait_ms=0)  # the smallest
    for bad in ({"max_batch": 0}, {"max_queue": 0}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError) as err:
            Batcher(model, ServeMetrics(), **bad)
        assert str(err.value) == "max_batch and max_queue must be ≥ 1, max_wait_ms ≥ 0"


def test_every_batch_runs_on_the_one_device_thread(model, monkeypatch):
    """A GPU's context and stream are used from one thread only, batch after batch."""
    threads = []

    async def body(b):
        run_batch = b._run

        def recorded(batch):
            threads.append(threading.current_thread())
            return run_batch(batch)

        monkeypatch.setattr(b, "_run", recorded)
        for i in range(20):
            await asyncio.wait_for(b.submit(job(i)), BOUND)

    run(body, model, max_batch=1, max_wait_ms=0)
    assert len(threads) == 20 and len(set(threads)) == 1


def test_a_batcher_that_never_started_closes(model):
    async def body(b):
        return b._task

    assert run(body, model, start=False) is None  # and run() closed it without error
