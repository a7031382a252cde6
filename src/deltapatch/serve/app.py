"""The HTTP API of ``deltapatch serve`` (DESIGN.md, "Interfaces added in the second round").

Routes parse and check input (:mod:`.inputs`), hold the named patches in the patch set for the
request's whole life, and hand the image to the batcher. Every failure is ``{"error": ...}`` with
a 4xx status that says whose fault it is; a 5xx means a bug or a shutdown (503), never bad input.
A client that leaves before its request is read is one log line and a 499, not a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from torch import Tensor

from ..errors import DeltaPatchError
from ..model import BASE
from ..patch import CONFIG_FILE, TENSORS_FILE
from .batcher import Batcher, Closed, Job, QueueFull
from .inputs import HTTPFail, Limits, PredictInput, image_tensor, media_type, predict_input, read_body
from .metrics import CONTENT_TYPE, ServeMetrics
from .oip import oip_router
from .page import mount_page
from .patchset import DuplicatePatch, Hold, PatchInfo, PatchSet, UnknownPatch
from .readout import Answer, Ask

log = logging.getLogger("deltapatch.serve")
RETRY_AFTER_S = 1
CLIENT_CLOSED = 499
"""nginx's "client closed request": the client left before its request was read. Not the
server's fault, so never a 5xx: anyone could otherwise fill the log and page the operator."""


def create_app(patchset: PatchSet, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_queue: int = 256, api_key: str | None = None, exact_base: bool = True,
               limits: Limits | None = None) -> FastAPI:
    """The ASGI app serving ``patchset``'s model (patches already loaded into it)."""
    limits = limits or Limits()
    metrics = ServeMetrics()
    metrics.loaded.set(len(patchset))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = Batcher(patchset.model, metrics, max_batch, max_wait_ms, max_queue,
                                    exact_base)
        app.state.batcher.start()
        app.state.ready = True
        try:
            yield
        finally:  # graceful: refuse new work, answer everything queued
            app.state.ready = False
            await app.state.batcher.close()

    app = FastAPI(title="deltapatch", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.ready = False
    app.state.patchset, app.state.metrics = patchset, metrics
    _errors(app, metrics)
    app.include_router(oip_router(patchset, limits, metrics))  # /v2: Open Inference Protocol

    def admin(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise HTTPFail(401, "admin endpoint: send 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(auth[7:].strip().encode(), api_key.encode()):
            raise HTTPFail(403, "admin endpoint: the key is wrong")

    mount_page(app, patchset.model)  # GET /: the web page (issue 26)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not app.state.ready:
            raise HTTPFail(503, "not ready (starting or shutting down)",
                           {"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ready", "patches": len(patchset)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/patches")
    async def list_patches():
        return {"patches": [i.public() for i in patchset.infos()]}

    @app.post("/v1/patches", status_code=201)
    async def upload(request: Request):
        admin(request)
        if media_type(request) != "multipart/form-data":
            raise HTTPFail(415, "upload a patch as multipart/form-data with files "
                                f"{CONFIG_FILE} and {TENSORS_FILE}")
        await read_body(request, limits.max_upload_bytes)
        form = await request.form(max_files=2, max_fields=0, max_part_size=1 << 20)
        files = _patch_files(form)
        tmp = Path(tempfile.mkdtemp(prefix="deltapatch-upload-"))
        try:
            for fixed, upload_file in files.items():  # our names, never the client's
                (tmp / fixed).write_bytes(await upload_file.read())
            name = await asyncio.to_thread(patchset.add, tmp)
        except DuplicatePatch as err:
            raise HTTPFail(409, str(err)) from None
        except DeltaPatchError as err:  # NotBatchable, PatchError, ...
            raise HTTPFail(422, str(err).replace(str(tmp), "the upload")) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        metrics.loaded.set(len(patchset))
        log.info("patch %s added", name)
        return JSONResponse({"name": name}, status_code=201)

    @app.delete("/v1/patches/{name}")
    async def delete(name: str, request: Request):
        admin(request)
        try:
            await asyncio.to_thread(patchset.remove, name)  # waits for requests holding it
        except UnknownPatch as err:
            raise HTTPFail(404, str(err)) from None
        metrics.forget(name)
        metrics.loaded.set(len(patchset))
        log.info("patch %s removed", name)
        return {"removed": name}

    @app.post("/v1/predict")
    async def predict(request: Request):
        t0 = time.perf_counter()
        req = await predict_input(request, limits)
        try:
            async with patchset.holding(req.names) as hold:
                answers = await _answer(app.state.batcher, req, hold, limits)
        except UnknownPatch as err:
            raise HTTPFail(404, str(err)) from None
        metrics.answered(list(req.names), time.perf_counter() - t0)
        return predict_body(req, hold.infos, answers)

    return app


async def _answer(batcher: Batcher, req: PredictInput, hold: Hold, limits: Limits) -> list:
    """Queue one /v1 request on the batcher and wait for its answers; the tasks stay held
    until the job is done, even if the client leaves (the job is never unqueued)."""
    infos = hold.infos
    pre = infos[0].preprocess
    if any(i.preprocess != pre for i in infos):
        raise HTTPFail(422, "a fan-out needs tasks with the same input preprocessing; "
                            "these differ: " + ", ".join(i.name for i in infos))
    x = await asyncio.to_thread(image_tensor, req.image, pre, limits)
    try:
        queued = batcher.submit(predict_job(x, req, infos))
    except (QueueFull, Closed) as err:
        raise HTTPFail(503, str(err), {"Retry-After": str(RETRY_AFTER_S)}) from None
    hold.until(queued)
    return await asyncio.shield(queued)


def _patch_files(form) -> dict[str, UploadFile]:
    """The two files of a patch folder, found by field name or file name; nothing else."""
    found: dict[str, UploadFile] = {}
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        which = key if key in (CONFIG_FILE, TENSORS_FILE) else value.filename
        if which not in (CONFIG_FILE, TENSORS_FILE) or which in found:
            raise HTTPFail(400, f"a patch upload holds exactly the files {CONFIG_FILE} and "
                                f"{TENSORS_FILE}; got '{value.filename or key}'")
        found[which] = value
    missing = [f for f in (CONFIG_FILE, TENSORS_FILE) if f not in found]
    if missing:
        raise HTTPFail(400, f"the upload lacks {' and '.join(missing)} (send a patch folder's "
                            f"files {CONFIG_FILE} and {TENSORS_FILE})")
    return found


def predict_job(x: Tensor, req: PredictInput, infos: list[PatchInfo]) -> Job:
    """The batcher's job for a checked predict request: its image and, per task, what the
    answer needs (the task's classes, ``top_k``, logits or not)."""
    return Job(x, req.names, req.fanout,
               tuple(Ask(i.num_classes, req.top_k, req.return_logits) for i in infos),
               infos[0].preprocess, lambda_tasks(req, infos))


def lambda_tasks(req: PredictInput, infos: list[PatchInfo]) -> tuple[str, ...]:
    """The tasks whose Λ a ``return_lambdas`` request gets: its Δ-patches (those with Δ-stages).
    A fan-out's other tasks answer without Λ; one task without Δ-stages is refused (422)."""
    if not req.return_lambdas:
        return ()
    names = tuple(i.name for i in infos if i.stages)
    if not names and not req.fanout:
        what = "the base task" if infos[0].name == BASE else \
            f"patch '{infos[0].name}' (method {infos[0].method}) has no Δ-stages"
        raise HTTPFail(422, f"return_lambdas: {what}; there is no Λ to return (Λ exists for "
                            "patches with Δ-stages only)")
    return names


def predict_body(req: PredictInput, infos: list[PatchInfo], answers: dict[str, Answer]) -> dict:
    """The JSON answer of ``POST /v1/predict`` (DESIGN.md): one task's, or every task's of a
    fan-out under ``results``."""
    out = {i.name: _task_answer(answers[i.name], i) for i in infos}
    if req.fanout:
        return {"results": out}
    return {"patch": infos[0].name, **out[infos[0].name]}


def _task_answer(answer: Answer, info: PatchInfo) -> dict:
    out = {"top_k": [{"index": i, "label": info.labels[i], "score": p}
                     for p, i in zip(answer.scores, answer.indices, strict=True)]}
    if answer.logits is not None:
        out["logits"] = answer.logits
    if answer.lambdas is not None:  # {stage: [[Λ of this image]]}, and each stage's name and k
        out["lambdas"] = {str(s): rows for s, (_, rows) in answer.lambdas.items()}
        out["lambda_stages"] = {str(s): {"name": name, "k": _blocks(len(rows[0]))}
                                for s, (name, rows) in answer.lambdas.items()}
    return out


def _blocks(pairs: int) -> int:
    """k for Λ of k(k+1)/2 values."""
    return round(((8 * pairs + 1) ** 0.5 - 1) / 2)


def _errors(app: FastAPI, metrics: ServeMetrics) -> None:
    """Every failure as ``{"error": ...}``; counted by status."""

    def fail(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(status=str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPFail)
    async def _fail(_request: Request, err: HTTPFail):
        return fail(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, err: StarletteHTTPException):
        return fail(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _err: ClientDisconnect):
        log.warning("client went away before its request was read: %s %s (counted as %d)",
                    request.method, request.url.path, CLIENT_CLOSED)
        return fail(CLIENT_CLOSED, "client closed the request")  # sent to nobody

    @app.exception_handler(Exception)
    async def _bug(_request: Request, err: Exception):
        log.exception("unexpected error")
        return fail(500, f"internal error ({type(err).__name__}); see the server log")
