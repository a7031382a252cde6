"""``deltapatch serve``: serve the base task and every Δ-patch under --patches over HTTP
(docs/SERVING.md)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import socket
from pathlib import Path

from ..devices import resolve_device
from ..errors import DeltaPatchError
from .common import backbone_args, command, device_args, load_model, patch_limit_args


def arguments(p: argparse.ArgumentParser) -> None:
    backbone_args(p)
    patch_limit_args(p)
    device_args(p)
    p.add_argument("--patches", type=Path, required=True,
                   help="folder of patch folders (each train --out of a Δ-family method); all "
                        "are loaded at start, and a bad one stops the start")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=32, help="requests per batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="waiting requests before new ones get 503 + Retry-After (default 256)")
    p.add_argument("--api-key-file", type=Path, default=None,
                   help="file holding the key that admin endpoints (upload, delete) require as "
                        "'Authorization: Bearer KEY'; default: none, they are open")
    p.add_argument("--batch-base", action="store_true",
                   help="batch base-task requests too (faster; their logits may then differ "
                        "from the plain backbone's on one image in the last bits, unless "
                        "measured bit-identical on this device: docs/SERVING.md)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="largest image accepted, in pixels (default 40,000,000)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve as a Ray Serve deployment of --replicas replicas, on a new local "
                        "Ray instance or the cluster at ADDRESS; patches are added and removed "
                        "by writing / deleting folders under --patches (docs/SERVING.md; "
                        "default: off, one process)")
    p.add_argument("--replicas", type=int, default=1,
                   help="Ray Serve replicas, each holding the backbone and every patch "
                        "(with --ray; default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=1.0,
                   help="with --ray on a CUDA --device: the share of a GPU each replica asks "
                        "Ray for; a fraction (e.g. 0.5) puts several replicas on one GPU "
                        "(default 1)")


def _api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise DeltaPatchError(f"cannot read --api-key-file {path}: {err}") from None
    if len(key) < 16:
        raise DeltaPatchError(f"--api-key-file {path} holds a key of {len(key)} characters; use "
                              "at least 16 (e.g. `python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))' > key.txt`)")
    return key


@command("serve", "serve the base task and Δ-patches over HTTP with dynamic batching", arguments)
def run(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "multipart")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise DeltaPatchError(f"serve needs {', '.join(missing)}: pip install 'deltapatch[serve]'")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    if args.max_batch < 1 or args.max_queue < 1 or not 0 <= args.max_wait_ms <= 10_000:
        raise ValueError("--max-batch and --max-queue must be ≥ 1, --max-wait-ms 0..10000")
    if args.max_image_pixels < 4:
        raise ValueError("--max-image-pixels must be ≥ 4")
    if not args.patches.is_dir():
        raise DeltaPatchError(f"--patches {args.patches} is not a folder")
    args.device = str(resolve_device(args.device))  # not there: one line, before any port
    if args.ray is not None:
        return _run_on_ray(args)
    key = _api_key(args.api_key_file)
    _check_bindable(args.host, args.port)  # before minutes of loading, not after
    import uvicorn

    from ..serve.app import create_app
    from ..serve.inputs import Limits
    from ..serve.patchset import PatchSet

    server_cls = _server_class()
    model = load_model(args).eval()
    patchset = PatchSet(model)
    names = patchset.load_dir(args.patches)
    print(f"deltapatch serve: {len(names)} patches loaded from {args.patches}; "
          f"http://{args.host}:{args.port}", flush=True)
    app = create_app(patchset, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_queue=args.max_queue, api_key=key, exact_base=not args.batch_base,
                     limits=Limits(max_image_pixels=args.max_image_pixels))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=30)
    server = server_cls(config)
    try:
        server.run()
    except SystemExit:  # uvicorn's own exit(3) when the bind fails after all (a race)
        if server.started:
            raise
        raise DeltaPatchError(f"cannot serve on --host {args.host} --port {args.port}: the "
                              "bind failed (uvicorn's reason is above)") from None
    return 0 if server.started else 1


def _check_bindable(host: str, port: int) -> None:
    """Bind every address ``host`` resolves to, as uvicorn (asyncio's ``create_server``) will,
    and let go: a taken port or an address this machine lacks is one line and exit 2 here,
    instead of uvicorn's log line and exit 3 after the model is loaded."""
    where = f"--host {host} --port {port}"
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise DeltaPatchError(f"cannot serve on {where}: the host does not resolve "
                              f"({getattr(err, 'strerror', None) or err})") from None
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            try:
                s.bind(address)
            except OSError as err:
                raise DeltaPatchError(f"cannot serve on {where}: binding {address[0]} failed "
                                      f"({err.strerror or err}); choose a free port or an "
                                      "address of this machine (127.0.0.1, 0.0.0.0)") from None


def _run_on_ray(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise ValueError(f"--replicas must be ≥ 1, got {args.replicas}")
    share = args.gpus_per_replica
    if not (0 < share <= 1 or share == int(share)):
        raise ValueError(f"--gpus-per-replica must be a fraction in (0, 1] or a whole number, "
                         f"got {share:g}")
    if args.api_key_file is not None:
        raise DeltaPatchError("--ray serves no admin endpoints (patches come from the --patches "
                              "folder), so --api-key-file has nothing to guard; leave it out")
    from ..serve import on_ray

    on_ray.run(args.backbone, args.weights, args.patches, replicas=args.replicas,
               host=args.host, port=args.port, max_batch=args.max_batch,
               max_wait_ms=args.max_wait_ms, exact_base=not args.batch_base,
               max_image_pixels=args.max_image_pixels,
               address=None if args.ray == "local" else args.ray,
               device=resolve_device(args.device), gpu_share=share)
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, so the process would
        die by the signal; after a clean drain we exit 0 like every other command."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    getattr(self, "_captured_signals", []).clear()

    return Server
