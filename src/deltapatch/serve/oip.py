"""The Open Inference Protocol, REST (the "V2" protocol of KServe, Triton, Seldon/MLServer,
OpenVINO Model Server), beside ``/v1`` on the same server, batcher and patch set, so that their
clients (``tritonclient``, KServe's SDK), load tools and gateways reach every patch unchanged.

Models: every loaded patch, ``"__base__"`` (the untouched backbone) and ``"__fanout__"``, which
answers every task on each image with one output per task, named ``"__base__"`` and each patch's
name, as the exported ONNX fan-out graph does (the request's ``outputs`` pick the tasks). A patch
named ``"__fanout__"`` is reachable through ``/v1`` only.

Inputs (exactly one): ``image``, FP32 ``[N, 3, S, S]`` already normalized as the model's
metadata says (the ONNX graph's input), or ``image_bytes``, BYTES ``[N]``: image files, decoded
exactly as ``/v1/predict`` decodes them (binary, or base64 text in a JSON tensor, since JSON
strings cannot hold arbitrary bytes). Each image becomes the same :class:`~.batcher.Job` that
``/v1/predict`` makes, so answers equal its logits (bit for bit when alone in a batch); an
``image`` row is marked ``normalized`` and only cast on the device. Outputs of a task model:
``logits`` FP32 ``[N, C]`` and ``probabilities`` (the softmax ``/v1`` scores with).

Errors are ``{"error": ...}`` with ``/v1``'s statuses (the app's handlers answer them): 400
malformed, 404 unknown model or task, 413 too large, 415 / 422 bad images, 503 queue full or
shutting down. Tensor encoding, JSON and binary, is :mod:`.oip_codec`'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from torch import Tensor

from ..model import BASE
from ..preprocess import Preprocess
from ..version import __version__
from .batcher import Closed, Job, QueueFull
from .inputs import HTTPFail, Limits, image_tensor, read_body
from .metrics import ServeMetrics
from .oip_codec import (
    BYTES,
    HEADER,
    InferRequest,
    InputTensor,
    OutputRequest,
    OutputTensor,
    decode_request,
    encode_response,
)
from .patchset import PatchInfo, PatchSet, UnknownPatch
from .readout import Answer, Ask

FANOUT = "__fanout__"
VERSION = "1"
"""Models here have one version; ``/versions/1/...`` routes answer as the unversioned ones."""
PLATFORM = "deltapatch"
LOGITS, PROBABILITIES = "logits", "probabilities"
RETRY_AFTER_S = 1
EXTENSIONS = ["binary_tensor_data"]
INPUT_NOTE = "RGB resized to image_size x image_size, scaled to [0, 1], then (x - mean) / std"


@dataclass(frozen=True)
class ModelView:
    """One protocol model: the tasks it answers (one, or every fan-out task) and its outputs."""

    name: str
    tasks: list[PatchInfo]
    fanout: bool

    @property
    def pre(self) -> Preprocess:
        return self.tasks[0].preprocess

    def outputs(self) -> dict[str, int]:
        """Output name → classes."""
        if self.fanout:
            return {t.name: t.num_classes for t in self.tasks}
        return dict.fromkeys((LOGITS, PROBABILITIES), self.tasks[0].num_classes)

    def metadata(self) -> dict:
        size = self.pre.size
        return {"name": self.name, "versions": [VERSION], "platform": PLATFORM,
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, size, size]},
                           {"name": "image_bytes", "datatype": BYTES, "shape": [-1]}],
                "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, c]}
                            for n, c in self.outputs().items()],
                "parameters": self.parameters()}

    def parameters(self) -> dict[str, str | int]:
        """Class names and preprocessing. Protocol parameters are scalars, so lists and
        objects are given as JSON text."""
        pre = self.pre
        out: dict[str, str | int] = {"image_size": pre.size, "mean": json.dumps(list(pre.mean)),
                                     "std": json.dumps(list(pre.std)), "input": INPUT_NOTE}
        if self.fanout:
            out["tasks"] = json.dumps({t.name: {"num_classes": t.num_classes,
                                                "class_names": t.labels} for t in self.tasks})
            return out
        task = self.tasks[0]
        return {**out, "num_classes": task.num_classes, "class_names": json.dumps(task.labels),
                "method": task.method, "stages": json.dumps(task.stages)}


def oip_router(patchset: PatchSet, limits: Limits, metrics: ServeMetrics) -> APIRouter:
    """The ``/v2`` routes of a server whose app holds ``state.batcher`` and ``state.ready``."""
    router = APIRouter(prefix="/v2")

    @router.get("")
    async def server_metadata():
        return {"name": PLATFORM, "version": __version__, "extensions": EXTENSIONS}

    @router.get("/health/live")
    async def live():
        return {"live": True}

    @router.get("/health/ready")
    async def ready(request: Request):
        _ready(request)
        return {"ready": True}

    @router.get("/models/{name}")
    @router.get("/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = VERSION):
        _version(version)
        return _view(patchset, name).metadata()

    @router.get("/models/{name}/ready")
    @router.get("/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = VERSION):
        _version(version)
        _view(patchset, name)
        _ready(request)
        return {"name": name, "ready": True}

    @router.post("/models/{name}/infer")
    @router.post("/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = VERSION):
        t0 = time.perf_counter()
        _version(version)
        body = await read_body(request, limits.max_request_bytes)
        if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise HTTPFail(415, "send the inference request uncompressed (no Content-Encoding)")
        req = decode_request(body, request.headers.get(HEADER))
        names = _task_names(patchset, name, req)
        try:  # the tasks are held until every job of the request is done
            async with patchset.holding(names) as hold:
                view = ModelView(name, hold.infos, name == FANOUT)
                done = await _queue(request.app.state.batcher, view, req, limits, names)
                hold.until(done)
                answers = _results(await asyncio.shield(done))  # a client that leaves unqueues nothing
        except UnknownPatch as err:
            raise HTTPFail(404, str(err)) from None
        outputs = [OutputTensor(o.name, _array(answers, view, o.name), o.binary)
                   for o in _wanted(view, req)]
        metrics.answered(list(names), time.perf_counter() - t0, api="v2")
        head = {"model_name": name, "model_version": VERSION}
        if req.id is not None:
            head["id"] = req.id
        content, headers = encode_response(head, outputs)
        return Response(content, headers=headers)

    return router


async def _queue(batcher, view: ModelView, req: InferRequest, limits: Limits,
                 names: tuple[str, ...]) -> asyncio.Future:
    """One job per image, all queued (or none, raising): a future of every job's result."""
    if any(t.preprocess != view.pre for t in view.tasks):
        raise HTTPFail(422, "a fan-out needs tasks with the same input preprocessing; these "
                            "differ: " + ", ".join(t.name for t in view.tasks))
    wanted = {o.name for o in _wanted(view, req)}
    images, normalized = await asyncio.to_thread(host_images, req, view.pre, limits,
                                                 batcher.max_queue)
    asks = tuple(_ask(t, view, wanted) for t in view.tasks)
    jobs = [Job(x, names, view.fanout, asks, view.pre, normalized=normalized) for x in images]
    try:
        futures = batcher.submit_all(jobs)
    except (QueueFull, Closed) as err:
        raise HTTPFail(503, str(err), {"Retry-After": str(RETRY_AFTER_S)}) from None
    return asyncio.gather(*futures, return_exceptions=True)


def _results(results: list) -> list[dict[str, Answer]]:
    for r in results:
        if isinstance(r, BaseException):
            raise r  # a bug or a device failure: the app answers 500 and logs it
    return results


def _ask(task: PatchInfo, view: ModelView, wanted: set[str]) -> Ask:
    """Logits always; every class's score when ``probabilities`` is asked (its top k with
    k = C: the same softmax bits, scattered back into class order)."""
    everything = not view.fanout and PROBABILITIES in wanted
    return Ask(task.num_classes, task.num_classes if everything else 1, logits=True)


def _logits(answers: list[dict[str, Answer]], view: ModelView, output: str) -> np.ndarray:
    task = output if view.fanout else view.tasks[0].name
    return np.asarray([a[task].logits for a in answers], dtype=np.float32)


def _probabilities(answers: list[dict[str, Answer]], view: ModelView, _output: str
                   ) -> np.ndarray:
    task = view.tasks[0]
    out = np.zeros((len(answers), task.num_classes), dtype=np.float32)
    for row, a in zip(out, answers, strict=True):
        row[a[task.name].indices] = a[task.name].scores
    return out


_OUTPUTS: dict[str, Callable[[list[dict[str, Answer]], ModelView, str], np.ndarray]] = {
    LOGITS: _logits, PROBABILITIES: _probabilities}
"""A task model's outputs."""


def _array(answers: list[dict[str, Answer]], view: ModelView, output: str) -> np.ndarray:
    """One output over the request's images; a fan-out's outputs are its tasks' logits."""
    return _logits(answers, view, output) if view.fanout else \
        _OUTPUTS[output](answers, view, output)


# ------------------------------------------------------------------ inputs → host images
def host_images(req: InferRequest, pre: Preprocess, limits: Limits, max_queue: int
                ) -> tuple[list[Tensor], bool]:
    """The request's images as the batcher takes them, and whether they are normalized."""
    if len(req.inputs) != 1 or req.inputs[0].name not in _INPUTS:
        raise HTTPFail(400, f"give one input: 'image' (FP32 [N, 3, {pre.size}, {pre.size}], "
                            "normalized) or 'image_bytes' (BYTES [N], image files); got "
                            + ", ".join(repr(t.name) for t in req.inputs))
    tensor = req.inputs[0]
    n = tensor.shape[0] if tensor.shape else 0
    if n < 1:
        raise HTTPFail(400, f"input '{tensor.name}' holds no image (its first dimension is N)")
    most = min(limits.max_images, max_queue)
    if n > most:
        raise HTTPFail(413, f"{n} images in one request is over the limit of {most}")
    return _INPUTS[tensor.name](tensor, pre, limits)


def _normalized_images(tensor: InputTensor, pre: Preprocess, _limits: Limits
                       ) -> tuple[list[Tensor], bool]:
    want = [tensor.shape[0], 3, pre.size, pre.size]
    if tensor.datatype != "FP32" or list(tensor.shape) != want:
        raise HTTPFail(400, f"input 'image' must be FP32 of shape {want} (this model's "
                            f"image_size is {pre.size}); got {tensor.datatype} "
                            f"{list(tensor.shape)}")
    if not np.isfinite(tensor.data).all():
        raise HTTPFail(422, "input 'image' holds NaN or infinite values")
    return list(torch.from_numpy(np.array(tensor.data))), True


def _encoded_images(tensor: InputTensor, pre: Preprocess, limits: Limits
                    ) -> tuple[list[Tensor], bool]:
    if tensor.datatype != BYTES or tensor.shape not in ((tensor.shape[0],), (tensor.shape[0], 1)):
        raise HTTPFail(400, f"input 'image_bytes' must be BYTES of shape [N] (one image file "
                            f"each); got {tensor.datatype} {list(tensor.shape)}")
    files = tensor.data if tensor.binary else [_unbase64(s) for s in tensor.data]
    return [image_tensor(f, pre, limits) for f in files], False


def _unbase64(text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPFail(400, "input 'image_bytes' in a JSON tensor holds base64 text of image "
                            "files (or send it as binary data)") from None


_INPUTS: dict[str, Callable[[InputTensor, Preprocess, Limits], tuple[list[Tensor], bool]]] = {
    "image": _normalized_images, "image_bytes": _encoded_images}


# ------------------------------------------------------------------ models and checks
def _view(patchset: PatchSet, name: str) -> ModelView:
    """The model ``name`` with every task it answers now (404 when unknown)."""
    try:
        if name == FANOUT:
            return ModelView(FANOUT, [patchset.base, *patchset.infos()], True)
        return ModelView(name, [patchset.info(name)], False)
    except UnknownPatch as err:
        raise HTTPFail(404, f"no model named '{name}' (models: every patch, "
                            f"'{BASE}', '{FANOUT}'): {err}") from None


def _task_names(patchset: PatchSet, name: str, req: InferRequest) -> tuple[str, ...]:
    """The tasks one request runs: the model's own, or a fan-out's chosen by ``outputs``."""
    if name != FANOUT:
        return (name,)
    if req.outputs:
        return tuple(dict.fromkeys(o.name for o in req.outputs))
    return tuple(t.name for t in _view(patchset, FANOUT).tasks)


def _wanted(view: ModelView, req: InferRequest) -> list[OutputRequest]:
    """The outputs to answer, in the order asked (every output when none is named)."""
    if not req.outputs:
        return [OutputRequest(n, req.binary_output) for n in view.outputs()]
    known = view.outputs()
    unknown = [o.name for o in req.outputs if o.name not in known]
    if unknown:
        raise HTTPFail(400, f"model '{view.name}' has no output '{unknown[0]}' (outputs: "
                            + ", ".join(known) + ")")
    return list({o.name: o for o in req.outputs}.values())


def _version(version: str) -> None:
    if version != VERSION:
        raise HTTPFail(404, f"no model version '{version}' (every model has version "
                            f"{VERSION} only)")


def _ready(request: Request) -> None:
    if not request.app.state.ready:
        raise HTTPFail(503, "not ready (starting or shutting down)",
                       {"Retry-After": str(RETRY_AFTER_S)})
