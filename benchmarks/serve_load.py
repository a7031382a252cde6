"""Load test of ``deltapatch serve``: a real uvicorn server in a subprocess on 127.0.0.1, concurrent
clients sending real JPEG photos (the shared ImageNet photos if present, else scikit-image's),
traffic spread uniformly over 1, 16 and 128 Δ(1) patches (and base-only traffic for reference).
Prints throughput, p50/p99 latency, batch sizes and the server's RSS; every phase is bounded in
requests and seconds, and every server is stopped (SIGTERM, then SIGKILL) before the next.

    PYTHONPATH=src python benchmarks/serve_load.py              # ~2.5 min on 2 shared cores
    PYTHONPATH=src python benchmarks/serve_load.py --seconds 5  # quicker, noisier
    PYTHONPATH=src python benchmarks/serve_load.py --mixes 128 --open-loop 0.7
    PYTHONPATH=src python benchmarks/serve_load.py --mixes 16 --per-task 16  # vs model copies
    PYTHONPATH=src python benchmarks/serve_load.py --device cuda --mixes 1 128 --open-loop 0.7 \
        --seconds 10 --clients 64 --max-batch 64 --threads 4 --check-base 64   # on a GPU

``--open-loop F``: after a mix's closed-loop phase measures its maximum throughput T, the same
server gets open-loop traffic at F·T requests/s (Poisson arrivals, seeded), and latency is
counted from each request's scheduled arrival, so a slow server cannot hide its queue by
slowing the senders down (no coordinated omission).

``--api v1 v2 ...``: which API the clients speak, in turn on the same server for each mix:
``v1`` JSON with base64 files (``/v1/predict``, top 5), ``v2`` the Open Inference Protocol
with binary tensors (``image_bytes``, so the server decodes the same JPEGs; logits and
probabilities back as binary). Given several, it prints the median v2/v1 throughput ratio.

``--check-base N``: N images sent at once as base-task requests (so they share batches) to a
server on ``--device``, once as served by default (base rows one image at a time) and once with
``--batch-base``; each answer's logits against ``backbone(x)`` of that image alone, computed
here on the same device. Batching base rows is exact on a device only where the second line
says N of N bit-identical.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from _common import header
from safetensors.torch import save_file

from deltapatch import PatchedModel, load_backbone
from deltapatch.devices import resolve_device
from deltapatch.paths import shared_data_dir
from deltapatch.serve.inputs import Limits, image_tensor

SRC = Path(__file__).resolve().parents[1] / "src"


def photos(n: int) -> list[bytes]:
    """JPEG files: ImageNet photos (NIPS'17 dev set, 224 px) or scikit-image's sample photos."""
    root = shared_data_dir()
    npz = root / "imagenet_nips17_dev_224_jpeg.npz" if root else None
    if npz is not None and npz.is_file():
        d = np.load(npz, allow_pickle=False)
        blob, off = d["jpeg_bytes"], d["offsets"]
        return [blob[off[i]:off[i + 1]].tobytes() for i in range(min(n, len(off) - 1))]
    import io

    from PIL import Image
    from skimage import data as skdata

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"):
        buf = io.BytesIO()
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def make_patches(root: Path, n: int) -> Path:
    """Random-init ResNet-18 weights and ``n`` Δ(1) patches (10 classes) saved under ``root``."""
    torch.manual_seed(0)
    backbone = load_backbone("resnet18")
    save_file(backbone.state_dict(), str(root / "resnet18.safetensors"))
    model = PatchedModel(backbone)
    for i in range(n):
        model.add_patch(f"p{i:03d}", 10, stages=1)
        model.save_patch(f"p{i:03d}", root / "all" / f"p{i:03d}")
        model.remove_patch(f"p{i:03d}")
    return root / "resnet18.safetensors"


def subset(root: Path, n: int, only: int | None = None) -> Path:
    """A patches folder with p000..p{n-1}, or with p{only} alone."""
    folder = root / (f"set{n}" if only is None else f"only{only}")
    folder.mkdir(exist_ok=True)
    for i in range(n) if only is None else [only]:
        link = folder / f"p{i:03d}"
        if not link.exists():
            link.symlink_to(root / "all" / f"p{i:03d}")
    return folder


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text)[1]) / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (torch's libraries) split between the processes
    mapping them, so N processes' PSS add up to the memory they really take."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"Pss:\s+(\d+)", text)[1]) / 1024


class Server:
    """``deltapatch serve`` in a subprocess; always stopped on exit."""

    def __init__(self, weights: Path, patches: Path, threads: int, max_batch: int,
                 max_wait_ms: float, batch_base: bool = False, device: str = "cpu") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deltapatch", "--threads", str(threads), "serve",
             "--backbone", "resnet18", "--weights", str(weights), "--patches", str(patches),
             "--port", str(self.port), "--max-batch", str(max_batch),
             "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024", "--device", device,
             *(["--batch-base"] if batch_base else [])],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("server not ready after 180 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


Request = Callable[[int, str], tuple[str, dict]]
"""(image number, task) → (path, httpx keyword arguments) of one prediction request."""


def v1_requests(images: list[bytes]) -> Request:
    bodies = [base64.b64encode(im).decode() for im in images]
    return lambda i, name: ("/v1/predict", {"json": {"image": bodies[i], "patch": name,
                                                     "top_k": 5}})


def v2_requests(images: list[bytes]) -> Request:
    """Open Inference Protocol infer requests with the binary tensor data extension: the file
    as one BYTES element (4-byte little-endian length, then the bytes), outputs binary."""
    bodies = []
    for im in images:
        raw = len(im).to_bytes(4, "little") + im
        head = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        bodies.append({"content": head + raw,
                       "headers": {"Inference-Header-Content-Length": str(len(head))}})
    return lambda i, name: (f"/v2/models/{name}/infer", bodies[i])


APIS: dict[str, Callable[[list[bytes]], Request]] = {"v1": v1_requests, "v2": v2_requests}


async def traffic(routes: dict[str, str], images: list[bytes], clients: int,
                  seconds: float, max_requests: int, seed: int, api: str = "v1") -> dict:
    """``clients`` concurrent loops, each sending one request at a time, until ``seconds`` or
    ``max_requests``; a short warm-up first (not counted). ``routes`` maps each patch of the mix
    to the server that answers it (one server for all, or one per task)."""
    make = APIS[api](images)
    rng = random.Random(seed)
    names = list(routes)
    plan = [(rng.randrange(len(images)), rng.choice(names)) for _ in range(max_requests)]
    lat: list[float] = []
    codes: dict[int, int] = {}
    state = {"next": 0}

    async def one(client: httpx.AsyncClient, deadline: float, record: bool) -> None:
        while time.monotonic() < deadline and state["next"] < len(plan):
            i, name = plan[state["next"]]
            state["next"] += 1
            path, kwargs = make(i, name)
            t0 = time.perf_counter()
            r = await client.post(routes[name] + path, **kwargs)
            if record:
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        warm = time.monotonic() + min(3.0, seconds / 3)
        await asyncio.gather(*(one(client, warm, False) for _ in range(clients)))
        state["next"] = 0
        t0 = time.monotonic()
        await asyncio.gather(*(one(client, t0 + seconds, True) for _ in range(clients)))
        elapsed = time.monotonic() - t0
        metrics = [(await client.get(url + "/metrics")).text for url in set(routes.values())]
    ok = codes.get(200, 0)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"n": len(lat), "ok": ok, "codes": codes, "seconds": elapsed, "rps": ok / elapsed,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "mean_batch": mean_batch(metrics)}


def mean_batch(metrics: list[str]) -> float:
    """Requests per batch over the servers whose /metrics texts these are."""
    size = [sum(float(re.search(rf"deltapatch_batch_size_{k} ([\d.e+]+)", m)[1]) for m in metrics)
            for k in ("sum", "count")]
    return size[0] / size[1]


async def open_loop(url: str, names: list[str], images: list[bytes], rate: float,
                    seconds: float, max_requests: int, seed: int, api: str = "v1") -> dict:
    """Requests sent at Poisson arrival times of ``rate`` per second for ``seconds`` (at most
    ``max_requests``); latency from the scheduled arrival to the answer."""
    make = APIS[api](images)
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while len(arrivals) < max_requests:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        arrivals.append((t, rng.randrange(len(images)), rng.choice(names)))
    lat: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def send(at: float, i: int, name: str) -> None:
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            path, kwargs = make(i, name)
            r = await client.post(path, **kwargs)
            lat.append(loop.time() - (t0 + at))
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await asyncio.gather(*(send(*a) for a in arrivals))
        elapsed = loop.time() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"n": len(lat), "ok": codes.get(200, 0), "codes": codes, "rate": rate,
            "rps": codes.get(200, 0) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixes", type=int, nargs="*", default=[0, 1, 16, 128],
                   help="patches in the traffic mix; 0 = base task only (default 0 1 16 128)")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per mix")
    p.add_argument("--max-requests", type=int, default=3000, help="cap per mix")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-base", action="store_true", help="serve with --batch-base")
    p.add_argument("--api", nargs="+", choices=sorted(APIS), default=["v1"],
                   help="the API the clients speak, each in turn on the same server per mix "
                        "(v1: JSON + base64; v2: Open Inference Protocol, binary tensors); "
                        "repeat to alternate, e.g. --api v1 v2 v1 v2")
    p.add_argument("--device", default="auto",
                   help="serve --device of every server (default auto: cuda, mps, then cpu)")
    p.add_argument("--check-base", type=int, default=0, metavar="N",
                   help="first, N base requests at once vs backbone(x) per image on --device, "
                        "served per image and with --batch-base")
    p.add_argument("--open-loop", type=float, default=None, metavar="F",
                   help="after each mix, open-loop traffic at F × its measured max req/s")
    p.add_argument("--per-task", type=int, default=0, metavar="N",
                   help="then the model-copy alternative: N server processes with one patch "
                        "each, traffic uniform over the N tasks, each sent to its own process")
    a = p.parse_args()
    a.device = str(resolve_device(a.device))
    header("deltapatch serve load test (ResNet-18 random init, Δ(1) patches, 224 px JPEGs)")
    images = photos(a.images)
    print(f"# {len(images)} photos, {a.clients} clients, {a.seconds:g} s per mix "
          f"(cap {a.max_requests} requests), server --device {a.device} --threads {a.threads} "
          f"--max-batch {a.max_batch} --max-wait-ms {a.max_wait_ms:g}"
          f"{' --batch-base' if a.batch_base else ''}, seed 0, api {' '.join(a.api)}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        weights = make_patches(root, max(a.mixes + [1, a.per_task]))
        if a.check_base:
            check_base(a, weights, subset(root, 0))
        rps: dict[int, float] = {}
        print("| patches loaded | traffic | requests (200) | req/s | p50 ms | p99 ms | "
              "mean batch | RSS after start MB | RSS after load MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in a.mixes:
            folder = subset(root, max(n, 0))
            names = [f"p{i:03d}" for i in range(n)] or ["__base__"]
            with Server(weights, folder, a.threads, a.max_batch, a.max_wait_ms,
                        a.batch_base, a.device) as server:
                start_rss, start_pss = rss_mb(server.proc.pid), pss_mb(server.proc.pid)
                by_api: dict[str, list[float]] = {}
                for api in a.api:
                    r = asyncio.run(traffic(dict.fromkeys(names, server.url), images,
                                            a.clients, a.seconds, a.max_requests, seed=0,
                                            api=api))
                    load_rss = rss_mb(server.proc.pid)
                    mix = "base only" if n == 0 else f"uniform over {n}"
                    report(str(n), f"{mix}, {api}", r, (start_rss, load_rss, start_pss))
                    by_api.setdefault(api, []).append(r["rps"])
                if a.open_loop:
                    o = asyncio.run(open_loop(server.url, names, images, a.open_loop * r["rps"],
                                              a.seconds, a.max_requests, seed=1, api=api))
            rps[n] = r["rps"]
            if len(by_api) > 1:
                med = {k: statistics.median(v) for k, v in by_api.items()}
                print(f"#   v2 / v1 throughput: {med['v2'] / med['v1']:.3f} (medians of "
                      f"{len(by_api['v2'])} and {len(by_api['v1'])} runs: "
                      + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v)
                                  for k, v in by_api.items()) + " req/s)", flush=True)
            if a.open_loop:
                print(f"#   open loop ({api}) at {a.open_loop:g} × {r['rps']:.2f} = "
                      f"{o['rate']:.2f} req/s "
                      f"(Poisson, seed 1): {o['n']} requests ({o['ok']} ok), {o['rps']:.2f} "
                      f"answered/s, p50 {o['p50_ms']:.0f} ms, p99 {o['p99_ms']:.0f} ms, "
                      f"p99/p50 {o['p99_ms'] / o['p50_ms']:.2f}; codes {o['codes']}",
                      flush=True)
        if 1 in rps:
            print("#   throughput vs 1 patch: " + ", ".join(
                f"{n} patches {v / rps[1]:.2f}×" for n, v in rps.items() if n > 1))
        if a.per_task:
            per_task(a, root, weights, images)


def check_base(a: argparse.Namespace, weights: Path, no_patches: Path) -> None:
    """Served base answers vs ``backbone(x)`` of each image alone on the same device, with base
    rows served per image (the default) and batched (``--batch-base``)."""
    device = torch.device(a.device)
    model = PatchedModel(load_backbone("resnet18", str(weights), device=device)).eval()
    images = [png_noise(seed) for seed in range(a.check_base)]
    with torch.inference_mode():
        pre = model.preprocess
        want = [model.backbone(pre.normalize(image_tensor(im, pre, Limits())[None].to(device)))[0]
                .cpu() for im in images]
    for batch_base in (False, True):
        with Server(weights, no_patches, a.threads, a.max_batch, a.max_wait_ms, batch_base,
                    a.device) as server:
            got, batch = asyncio.run(base_answers(server.url, images))
        same = sum(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        worst = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
        print(f"# served base vs backbone(x) per image on {a.device}, "
              f"{'--batch-base' if batch_base else 'per image (default)'}: {same}/{len(want)} "
              f"bit-identical, max |diff| {worst:.3g}, mean batch {batch:.1f}", flush=True)


def png_noise(seed: int, size: int = 224) -> bytes:
    """A PNG of seeded uniform noise: any number of distinct images, nothing downloaded."""
    import io

    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


async def base_answers(url: str, images: list[bytes]) -> tuple[list[torch.Tensor], float]:
    """Every image's base logits, all requests sent at once; and the server's mean batch."""
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=len(images))) as client:
        rs = await asyncio.gather(*(client.post("/v1/predict", json={
            "image": base64.b64encode(im).decode(), "top_k": 1, "return_logits": True})
            for im in images))
        metrics = (await client.get("/metrics")).text
    return [torch.tensor(r.raise_for_status().json()["logits"]) for r in rs], mean_batch([metrics])


def per_task(a: argparse.Namespace, root: Path, weights: Path, images: list[bytes]) -> None:
    """One server process per task (the backbone copied N times), all started at once."""
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(a.per_task):
            servers.append(Server(weights, subset(root, 1, only=i), a.threads, a.max_batch,
                                  a.max_wait_ms, device=a.device))
            stack.callback(servers[-1].__exit__)
        for server in servers:
            server.__enter__()
        start_rss = sum(rss_mb(s.proc.pid) for s in servers)
        start_pss = sum(pss_mb(s.proc.pid) for s in servers)
        routes = {f"p{i:03d}": s.url for i, s in enumerate(servers)}
        r = asyncio.run(traffic(routes, images, a.clients, a.seconds, a.max_requests, seed=0))
        load_rss = sum(rss_mb(s.proc.pid) for s in servers)
    report(f"{a.per_task} × 1", f"uniform over {a.per_task}, one process per task", r,
           (start_rss, load_rss, start_pss), f" (all {a.per_task} processes)")


def report(loaded: str, mix: str, r: dict, memory: tuple[float, float, float],
           summed: str = "") -> None:
    """One table row of a closed-loop phase; ``memory`` is (RSS after start, RSS after the
    load, PSS after start) in MB, summed over the processes when ``summed`` says so."""
    start_rss, load_rss, start_pss = memory
    all_ = " (all)" if summed else ""
    print(f"| {loaded} | {mix} | {r['n']} ({r['ok']}) | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
          f"{r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {start_rss:.0f}{all_} | "
          f"{load_rss:.0f}{all_} |", flush=True)
    print(f"#   PSS after start {start_pss:.0f} MB{summed}")
    if set(r["codes"]) != {200}:
        print(f"#   status codes: {r['codes']}")


if __name__ == "__main__":
    main()
