"""``deltapatch serve --ray --replicas N``: the server's batching core as a Ray Serve deployment.

Every replica holds the backbone and every patch (patches are kilobytes to megabytes), so any
replica answers any request; Ray Serve spreads requests over the replicas. On a replica,
requests of **any** patches are batched together by ``@serve.batch`` and run through the same
core as ``deltapatch serve`` (:meth:`Batcher.forward`: one routed forward for the patched rows,
the untouched backbone for base rows, on the replica's one device thread). Batches are
deliberately not keyed by a multiplexed model id, which would split them per patch. On a CUDA
``--device`` each replica asks Ray for a share of a GPU (``--gpus-per-replica``, fractions
allowed); otherwise for one CPU.

Which patches exist is the ``--patches`` folder (on a filesystem all replicas share): each
replica re-reads it every ``sync_s`` seconds and attaches new patch folders, detaches vanished
ones (after the requests holding them finish, :class:`PatchSet`). So a patch added or
removed there reaches every replica, including replicas started later. The HTTP admin endpoints
of the single server (upload, delete) are not served here; write or delete the folder instead
(write it elsewhere and ``mv`` it in, so no replica sees half a folder).

Served routes: ``GET /health``, ``GET /v1/patches``, ``POST /v1/predict`` (JSON or multipart,
the single server's request and answer shapes).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import torch

from ..errors import DeltaPatchError, PatchError
from ..model import PatchedModel
from ..patch import CONFIG_FILE, read_config

SYNC_S = 1.0
RETRIES = 3  # model replicas an ingress tries for one request before answering 503


def _ray_serve():
    try:
        from ray import serve
    except ImportError:
        raise DeltaPatchError("serve --ray needs Ray Serve: pip install 'deltapatch[ray]'") from None
    return serve


class PatchReplica:
    """One replica: backbone, patch set, batching core. Made a Ray Serve deployment by
    :func:`deployment` (kept a plain class so it can be built and tested without Ray)."""

    def __init__(self, backbone: str, weights: str | None, patches: str, max_batch: int = 32,
                 max_wait_ms: float = 5.0, exact_base: bool = True, sync_s: float = SYNC_S,
                 max_image_pixels: int = 40_000_000, device: str = "cpu") -> None:
        from ..backbones import load_backbone
        from .batcher import Batcher
        from .inputs import Limits
        from .metrics import ServeMetrics
        from .patchset import PatchSet

        self.model = PatchedModel(load_backbone(backbone, weights, device=device)).eval()
        self.patchset = PatchSet(self.model)
        self.folder = Path(patches)
        self.limits = Limits(max_image_pixels=max_image_pixels)
        self.core = Batcher(self.model, ServeMetrics(), max_batch, max_wait_ms, 1, exact_base)
        self.batches: list[int] = []  # sizes of the last batches (tests look at them)
        self.sync()  # a bad folder at start stops the replica, as it stops `deltapatch serve`
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(sync_s,), daemon=True)
        self._syncer.start()

    # ------------------------------------------------------------ the patch set
    def sync(self) -> tuple[list[str], list[str]]:
        """Attach patch folders new under ``--patches``, detach those gone; (added, removed)."""
        on_disk: dict[str, Path] = {}
        for sub in sorted(p for p in self.folder.iterdir() if (p / CONFIG_FILE).is_file()):
            on_disk[read_config(sub).name] = sub
        loaded = {i.name for i in self.patchset.infos()}
        added = [self.patchset.add(on_disk[n]) for n in sorted(set(on_disk) - loaded)]
        removed = sorted(loaded - set(on_disk))
        for name in removed:
            self.patchset.remove(name)
        return added, removed

    def _sync_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.sync()
            except (PatchError, OSError) as err:  # a half-copied folder: try again next time
                print(f"deltapatch serve --ray: patch sync: {err}", flush=True)

    # ------------------------------------------------------------ requests
    async def predict_rows(self, jobs: list) -> list:
        """One batch of jobs (any patches mixed) through the single server's core: per job its
        ``{name: Answer}``, or the exception its group raised (answered 500, never lost)."""
        self.batches = [*self.batches[-255:], len(jobs)]
        return await self.core.forward(jobs)

    async def handle(self, request) -> tuple[int, dict]:
        """(status, JSON body) for one HTTP request."""
        from .app import predict_body, predict_job
        from .inputs import HTTPFail, image_tensor, predict_input
        from .patchset import UnknownPatch

        path, method = request.url.path.rstrip("/"), request.method
        try:
            if method == "GET" and path.endswith("/health"):
                return 200, {"status": "ok"}
            if method == "GET" and path.endswith("/v1/patches"):
                return 200, {"patches": [i.public() for i in self.patchset.infos()]}
            if not (method == "POST" and path.endswith("/v1/predict")):
                return 404, {"error": f"no route {method} {path} (GET /health, GET /v1/patches, "
                                      "POST /v1/predict)"}
            req = await predict_input(request, self.limits)
            try:
                async with self.patchset.holding(req.names) as hold:
                    infos = hold.infos
                    pre = infos[0].preprocess
                    if any(i.preprocess != pre for i in infos):
                        return 422, {"error": "a fan-out needs tasks with the same preprocessing"}
                    x = await asyncio.to_thread(image_tensor, req.image, pre, self.limits)
                    answers = await self.batched(predict_job(x, req, infos))
            except UnknownPatch as err:
                return 404, {"error": str(err)}
            if isinstance(answers, BaseException):
                return 500, {"error": f"internal error ({type(answers).__name__}); see the log"}
            return 200, predict_body(req, infos, answers)
        except HTTPFail as err:
            return err.status, {"error": err.message}

    async def batched(self, job) -> dict:
        """Replaced by the ``@serve.batch`` version in :func:`deployment`; unbatched here."""
        return (await self.predict_rows([job]))[0]


def _request(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes):
    """A Starlette request rebuilt from what the ingress forwarded (the parsers need one)."""
    from starlette.requests import Request

    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": b"", "root_path": ""}
    return Request(scope, receive)


def replica_placement(device: torch.device, gpu_share: float = 1.0) -> tuple[str, dict]:
    """(the device a replica loads its model on, the replica's ``ray_actor_options``).

    A CUDA replica asks Ray for ``gpu_share`` of a GPU (a fraction lets several replicas share
    one) and loads on ``"cuda"``: Ray points ``CUDA_VISIBLE_DEVICES`` at the GPU it assigned, so
    an index chosen on this machine would name another GPU there. Elsewhere a replica asks for
    one CPU and nothing else, as it always has."""
    if device.type == "cuda":
        return "cuda", {"num_cpus": 1, "num_gpus": gpu_share}
    return str(device), {"num_cpus": 1}


def deployment(replicas: int, max_batch: int = 32, max_wait_ms: float = 5.0,
               actor_options: dict | None = None):
    """(ingress, model) Ray Serve deployment classes.

    The model deployment: ``replicas`` copies of :class:`PatchReplica`, each with
    ``actor_options`` (default one CPU; :func:`replica_placement`), requests batched by
    ``@serve.batch`` (any patches in one batch). The ingress (no CPU reserved) reads each HTTP
    request and hands it to a model replica through a deployment handle, and hands it to
    another when that replica dies under it (a predict is idempotent), so killing a replica
    loses no request.
    """
    serve = _ray_serve()
    from ray.exceptions import RayActorError
    from starlette.responses import JSONResponse

    from .inputs import HTTPFail, Limits, read_body

    @serve.deployment(num_replicas=replicas, ray_actor_options=actor_options or {"num_cpus": 1},
                      max_ongoing_requests=max(64, 4 * max_batch))
    class DeltaPatchServe(PatchReplica):
        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_wait_ms / 1e3)
        async def batched(self, jobs: list) -> list[dict]:
            return await self.predict_rows(jobs)

        async def answer(self, method: str, path: str, headers: list, body: bytes):
            return await self.handle(_request(method, path, headers, body))

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=1024)
    class DeltaPatchIngress:
        def __init__(self, model) -> None:
            self.model = model
            self.limit = Limits().max_request_bytes

        async def __call__(self, request):
            try:
                body = await read_body(request, self.limit)
            except HTTPFail as err:
                return JSONResponse({"error": err.message}, status_code=err.status)
            headers = [(k.encode(), v.encode()) for k, v in request.headers.items()]
            for attempt in range(1, RETRIES + 1):
                try:
                    status, payload = await self.model.answer.remote(
                        request.method, request.url.path, headers, body)
                    return JSONResponse(payload, status_code=status)
                except RayActorError:  # the replica died while holding it: another one
                    if attempt == RETRIES:
                        return JSONResponse({"error": "no model replica answered; retry"},
                                            status_code=503, headers={"Retry-After": "1"})

    return DeltaPatchIngress, DeltaPatchServe


def run(backbone: str, weights: str | None, patches: Path, *, replicas: int, host: str,
        port: int, max_batch: int = 32, max_wait_ms: float = 5.0, exact_base: bool = True,
        max_image_pixels: int = 40_000_000, address: str | None = None,
        device: torch.device = torch.device("cpu"), gpu_share: float = 1.0,
        blocking: bool = True) -> None:
    """Start (or join, ``address``) Ray, start Serve's HTTP proxy on host:port, deploy
    replicas on ``device`` (a CUDA one: ``gpu_share`` of a GPU each)."""
    import ray

    serve = _ray_serve()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    on, options = replica_placement(device, gpu_share)
    ingress, model = deployment(replicas, max_batch, max_wait_ms, options)
    app = ingress.bind(model.bind(backbone, weights, str(Path(patches).resolve()), max_batch,
                                  max_wait_ms, exact_base, SYNC_S, max_image_pixels, on))
    serve.run(app, name="deltapatch", route_prefix="/", blocking=False)
    print(f"deltapatch serve --ray: {replicas} replicas on {on}; http://{host}:{port}",
          flush=True)
    if not blocking:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:  # the deployment, Serve and (when we started it) Ray go with us
        serve.delete("deltapatch")
        serve.shutdown()
        if started:
            ray.shutdown()
