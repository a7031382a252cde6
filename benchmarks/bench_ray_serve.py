"""Load test of ``deltapatch serve --ray``: 1 vs 2 Ray Serve replicas (one CPU each) on a local
Ray instance bound to 127.0.0.1, closed-loop HTTP clients spreading requests over 16 Δ(1)
patches and the base task; then, with 2 replicas, one replica killed mid-load (``ray.kill``),
counting the requests that got no 200 answer (lost).

Backbone: resnet18 (random init, weights in a temp file so every replica loads the same) at
``--size`` px. Every phase is bounded in seconds; Ray and Serve are shut down at the end.

    PYTHONPATH=src python benchmarks/bench_ray_serve.py               # ~3 min on 2 shared cores
    PYTHONPATH=src python benchmarks/bench_ray_serve.py --seconds 10
    PYTHONPATH=src python benchmarks/bench_ray_serve.py --device cuda --gpus-per-replica 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from _common import header
from safetensors.torch import save_file
from serve_load import png_noise

from deltapatch import PatchedModel, load_backbone
from deltapatch.devices import resolve_device

SRC = Path(__file__).resolve().parents[1] / "src"
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def make_patches(root: Path, n: int) -> Path:
    torch.manual_seed(0)
    backbone = load_backbone("resnet18")
    weights = root / "resnet18.safetensors"
    save_file(backbone.state_dict(), str(weights))
    model = PatchedModel(backbone)
    for i in range(n):
        model.add_patch(f"p{i:02d}", 10, stages=1)
        model.save_patch(f"p{i:02d}", root / "patches" / f"p{i:02d}")
        model.remove_patch(f"p{i:02d}")
    return weights


async def load(url: str, names: list[str], bodies: list[str], clients: int, seconds: float,
               during=None) -> dict:
    """``clients`` loops of one request at a time for ``seconds``; ``during`` (a callable) runs
    in a thread halfway through. A request without a 200 answer (error status or exception)
    is counted as lost."""
    rng = random.Random(0)
    lat: list[float] = []
    codes: dict[str, int] = {}

    async def one(client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            body = {"image": rng.choice(bodies), "patch": rng.choice(names), "top_k": 1}
            t0 = time.perf_counter()
            try:
                code = str((await client.post("/v1/predict", json=body)).status_code)
            except httpx.HTTPError as err:
                code = type(err).__name__
            lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        warm = time.monotonic() + 3
        await asyncio.gather(*(one(client, warm) for _ in range(clients)))
        lat.clear()
        codes.clear()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(one(client, t0 + seconds)) for _ in range(clients)]
        if during is not None:
            await asyncio.sleep(seconds / 2)
            await asyncio.to_thread(during)
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
    ok = codes.get("200", 0)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"ok": ok, "lost": sum(codes.values()) - ok, "codes": codes, "rps": ok / elapsed,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def wait_ready(url: str, replicas: int, timeout: float = 300) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            app = serve.status().applications.get("deltapatch")
            running = app.deployments["DeltaPatchServe"].replica_states.get("RUNNING", 0)
            if running == replicas and httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except (httpx.HTTPError, AttributeError, KeyError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{replicas} replicas not running after {timeout} s")


def kill_one_replica() -> None:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if "SERVE_REPLICA" in a["name"] and "DeltaPatchServe" in a["name"]]
    actor = ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
    ray.kill(actor, no_restart=False)
    print(f"  killed replica {names[0]['name']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--patches", type=int, default=16)
    p.add_argument("--device", default="cpu", help="the replicas' --device (default cpu)")
    p.add_argument("--gpus-per-replica", type=float, default=0.5,
                   help="with a CUDA --device: each replica's share of a GPU (default 0.5, so "
                        "2 replicas fit on one GPU)")
    args = p.parse_args()
    device = resolve_device(args.device)
    header(f"deltapatch serve --ray: 1 vs 2 replicas on {device}, resnet18 at {args.size} px, "
           f"{args.patches} Δ(1) patches + base, {args.clients} closed-loop clients, "
           f"{args.seconds:g} s per phase")
    import ray
    from ray import serve
    from ray._private import ray_constants

    from deltapatch.serve import on_ray

    os.environ[LOOPBACK_ONLY] = "0"  # keep Ray on 127.0.0.1
    ray_constants.ENABLE_RAY_CLUSTER = False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="deltapatch-raybench-"))
    weights = make_patches(tmp, args.patches)
    names = [f"p{i:02d}" for i in range(args.patches)] + ["__base__"]
    bodies = [base64.b64encode(png_noise(i, args.size)).decode() for i in range(8)]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}})
    try:
        results = {}
        for replicas in (1, 2):
            on_ray.run("resnet18", str(weights), tmp / "patches", replicas=replicas,
                       host="127.0.0.1", port=port, device=device,
                       gpu_share=args.gpus_per_replica, blocking=False)
            wait_ready(url, replicas)
            results[replicas] = asyncio.run(load(url, names, bodies, args.clients, args.seconds))
            r = results[replicas]
            print(f"{replicas} replica(s): {r['rps']:6.1f} req/s  p50 {r['p50_ms']:.0f} ms  "
                  f"p99 {r['p99_ms']:.0f} ms  lost {r['lost']}  {r['codes']}", flush=True)
        print(f"ratio 2/1: {results[2]['rps'] / results[1]['rps']:.2f}x")
        killed = asyncio.run(load(url, names, bodies, args.clients, args.seconds,
                                  during=kill_one_replica))
        print(f"2 replicas, one killed mid-load: {killed['rps']:6.1f} req/s  "
              f"lost {killed['lost']} of {killed['ok'] + killed['lost']}  {killed['codes']}")
    finally:
        serve.shutdown()
        ray.shutdown()
        print(f"# load avg at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
