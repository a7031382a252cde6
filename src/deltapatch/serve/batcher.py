"""Dynamic batching: requests for any mix of patches wait at most ``max_wait_ms`` and leave as one
batch of at most ``max_batch``; the batch's patched rows run as **one routed forward**
``model(x, patches=[...])`` whatever patches they name.

The model's device is owned by **one worker thread** (a single-thread executor): every batch
runs there, one after another, so a GPU's context and stream are only ever used from that
thread, and the event loop keeps accepting requests while the device computes. A batch's images
go to the device as uint8 in one copy (:mod:`.staging`) and are normalized there, a group at a
time, as training and ``deltapatch predict`` do (:func:`deltapatch.batches.model_inputs`); softmax and
top-k run on the device and the answers come back in one copy (:mod:`.readout`).

A request that names ``"__base__"`` runs alone by default (``exact_base``), **on every device**:
its base answer is then ``backbone(x)`` of that image alone (the model's base path), because
kernels need not be batch-invariant (on the CPU a row's logits in a batch of 16 differ in the
last bits from the same image alone, measured for cifar_resnet20 and resnet18; GPU kernels
choose algorithms by batch size too). So a base answer equals ``deltapatch predict`` /
``model(x)`` on that image bit for bit. ``exact_base=False`` lets such requests ride in the
batch like any other: faster, and exact only on a device where batched base rows were measured
bit-identical (docs/SERVING.md says where and how). Fan-out requests run ``model.fanout``;
those naming the same tasks are stacked. A patched row's logits may differ in the last bits
with the batch it rode in, for the same reason.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..devices import placement
from ..model import BASE, PatchedModel
from ..preprocess import Preprocess
from .metrics import ServeMetrics
from .readout import Answer, Ask, read_out
from .staging import stage

Result = dict[str, Answer] | BaseException
"""A job's answer per task, or the error its group raised (answered 500, never lost)."""


class QueueFull(RuntimeError):
    """The bounded queue is full: HTTP 503 with Retry-After."""


class Closed(RuntimeError):
    """The server is shutting down: HTTP 503."""


@dataclass
class Job:
    """One image and the tasks it asks for (several: a fan-out), with what each answer needs."""

    x: Tensor  # (3, S, S) uint8 on the host: normalized on the device, with ``pre``
    names: tuple[str, ...]
    fanout: bool
    asks: tuple[Ask, ...]  # one per name
    pre: Preprocess  # the tasks' input preprocessing (a fan-out's tasks share one)
    lambdas: tuple[str, ...] = ()  # tasks whose Λ to return too (Δ-patches among ``names``)
    future: asyncio.Future = field(repr=False, default=None)  # {name: Answer}
    normalized: bool = False
    """``x`` is float32 already normalized as ``pre`` says (the Open Inference Protocol's
    ``image`` input, as the ONNX graph takes it): only cast on the device, never normalized
    again. Such rows form their own groups."""

    def prepared(self, x: Tensor) -> Tensor:
        """A staged group of jobs like this one, as the model takes it (before the cast)."""
        return x if self.normalized else self.pre.normalize(x)


class Batcher:
    def __init__(self, model: PatchedModel, metrics: ServeMetrics, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, exact_base: bool = True) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be ≥ 1, max_wait_ms ≥ 0")
        self.model, self.metrics = model, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1e3, max_queue
        self.exact_base = exact_base
        self.recent: collections.deque[list[tuple[str, ...]]] = collections.deque(maxlen=256)
        """The task names of each job of the last batches (what tests and debugging look at)."""
        self._queue: collections.deque[Job] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deltapatch-device")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Refuse new jobs, finish every queued one, stop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job``; its future gets its :data:`Result`."""
        if self._closing:
            raise Closed("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue "
                            f"{self.max_queue}); retry shortly")
        job.future = asyncio.get_running_loop().create_future()
        self._queue.append(job)
        self.metrics.queue_depth.set(len(self._queue))
        self._arrived.set()
        return job.future

    def submit_all(self, jobs: list[Job]) -> list[asyncio.Future]:
        """Queue every job of one request, or none (so a refused request leaves no work)."""
        if not self._closing and len(self._queue) + len(jobs) > self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are waiting and this one brings "
                            f"{len(jobs)} (--max-queue {self.max_queue}); retry shortly")
        return [self.submit(job) for job in jobs]

    async def forward(self, batch: list[Job]) -> list[Result]:
        """One batch on the device's worker thread; never raises (a failure is every job's)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._run,
                                                                    batch)
        except Exception as err:  # noqa: BLE001  (answered as an error, never lost)
            return [err] * len(batch)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = loop.time() + self.max_wait
            while len(self._queue) < self.max_batch and not self._closing:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self.metrics.queue_depth.set(len(self._queue))
            self._record(batch)
            t0 = time.perf_counter()
            results = await self.forward(batch)
            self.metrics.forward_seconds.observe(time.perf_counter() - t0)
            for job, result in zip(batch, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _record(self, batch: list[Job]) -> None:
        self.recent.append([job.names for job in batch])
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_patches.observe(len({n for job in batch for n in job.names}))

    # ------------------------------------------------------------ the worker thread
    def _run(self, batch: list[Job]) -> list[Result]:
        groups = self._groups(batch)
        device, dtype = placement(self.model.backbone)
        logits: list[dict[str, Tensor] | BaseException] = [None] * len(batch)
        lams: dict[int, dict] = {}  # job → {name: Λ per stage}, for jobs that ask
        with torch.inference_mode():
            staged = stage([[batch[i].x for i in rows] for rows in groups.values()], device)
            for ((kind, *_), rows), x in zip(groups.items(), staged, strict=True):
                try:
                    x = batch[rows[0]].prepared(x).to(dtype)
                    out = self._run_group(kind, x, [batch[i] for i in rows])
                    lams.update(self._lambdas(x, rows, batch))
                except Exception as err:  # noqa: BLE001  (answered as an error, never lost)
                    out = [err] * len(rows)
                for i, r in zip(rows, out, strict=True):
                    logits[i] = r
            return _with_lambdas(_answers(batch, logits), lams)

    def _lambdas(self, x: Tensor, rows: list[int], batch: list[Job]) -> dict[int, dict]:
        """Λ of each asking job's Δ-patches, each on its image alone (``model.lambdas`` on that
        row: the same values as the library gives for the image); brought to the host."""
        names = self.model.stage_names
        return {i: {n: {s: (names[s], t.float().cpu().tolist())
                        for s, t in self.model.lambdas(x[r:r + 1], patch=n).items()}
                    for n in batch[i].lambdas}
                for r, i in enumerate(rows) if batch[i].lambdas}

    def _groups(self, batch: list[Job]) -> dict[tuple, list[int]]:
        """Rows that run together: routed rows (any tasks), fan-outs of the same tasks; each
        group of one image shape, preprocessing and input form. Under ``exact_base`` a job
        naming the base task runs alone, as a fan-out of its tasks (``model.fanout`` of one
        task is ``model(x, patch=that task)`` bit for bit, and of ``__base__``, ``backbone(x)``)."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(batch):
            if self.exact_base and BASE in job.names:  # alone: a fan-out of its own tasks
                key: tuple = ("fanout", i)
            else:
                key = ("fanout" if job.fanout else "routed", job.names if job.fanout else (),
                       tuple(job.x.shape), job.pre, job.normalized)
            groups.setdefault(key, []).append(i)
        return groups

    def _run_group(self, kind: str, x: Tensor, jobs: list[Job]) -> list[dict[str, Tensor]]:
        if kind == "routed":
            names = [job.names[0] for job in jobs]
            logits = self.model(x, patches=names)
            return [{n: row} for n, row in zip(names, logits, strict=True)]
        out = self.model.fanout(x, patches=list(jobs[0].names))
        return [{n: t[i] for n, t in out.items()} for i in range(len(jobs))]


def _with_lambdas(results: list[Result], lams: dict[int, dict]) -> list[Result]:
    for i, lam in lams.items():
        if not isinstance(results[i], BaseException):
            results[i] = {n: replace(a, lambdas=lam[n]) if n in lam else a
                          for n, a in results[i].items()}
    return results


def _answers(batch: list[Job], logits: list[dict[str, Tensor] | BaseException]) -> list[Result]:
    """Each job's answers from its logits rows, read out together (one host copy)."""
    rows = [(out[n], ask) for job, out in zip(batch, logits, strict=True)
            if not isinstance(out, BaseException) for n, ask in zip(job.names, job.asks,
                                                                    strict=True)]
    answers = iter(read_out(rows))
    return [out if isinstance(out, BaseException) else {n: next(answers) for n in job.names}
            for job, out in zip(batch, logits, strict=True)]
