"""The measurements of benchmarks/gpu_check.sh, one section per call, each side by side on one
device in one process (variants interleaved, order rotated each round, medians of per-round
ratios) and written as JSON to ``--out``; ``summary`` prints every ratio next to its goal
(issue 23). Sizes: ResNet-50 at 224 px on a GPU; ``--tiny`` shrinks everything (CIFAR ResNet-20
at 32 px, batch 4, a few steps) so that the whole script can be dry-run on a CPU.

    python benchmarks/gpu_bench.py machine --device cuda --out DIR
    python benchmarks/gpu_bench.py train   --device cuda --out DIR   # Δ(1) ± cache, LoRA, full FT
    python benchmarks/gpu_bench.py mixed   --device cuda --out DIR   # 8/64-patch batches, fan-out
    python benchmarks/gpu_bench.py serve   --device cuda --out DIR   # served base, 1 vs 128 patches
    python benchmarks/gpu_bench.py paper   --device cuda --out DIR   # one paper-suite cell
    python benchmarks/gpu_bench.py summary --out DIR
    python benchmarks/gpu_bench.py train --device cpu --tiny --out /tmp/dry   # dry run

Training is timed as a loop of ``model(x, patch=...)`` + backward + AdamW on one batch that is
already on the device (no data loading), so it measures the library's forward and backward, not
the input path.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from _common import interleaved, med, ratio
from torch import Tensor, nn

from deltapatch import PatchedModel, load_backbone
from deltapatch.cache import frozen_parts
from deltapatch.devices import autocast, grad_scaler, resolve_device, synchronize
from deltapatch.hardware import describe, device_facts
from deltapatch.metrics import count_params

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"delta_cache_vs_lora": (">=", 3.0), "delta_nocache_vs_lora": (">=", 1.0),
         "mixed64_vs_base": ("<=", 1.3), "server_128_vs_1_throughput": (">=", 0.9),
         "server_p99_over_p50_at_70pct": ("<=", 2.0)}
SETTINGS = [("fp32", False), ("bf16", False), ("bf16", True)]  # (precision, channels_last)


class Sizes(NamedTuple):
    """What is measured at which size (a NamedTuple: the tests load this script unregistered,
    where a dataclass cannot resolve its own module)."""

    backbone: str
    image: int
    train_batch: int
    steps: int
    rounds: int
    infer_batch: int
    cache_batches: int


def sizes_for(tiny: bool) -> Sizes:
    if tiny:
        return Sizes("cifar_resnet20", 32, 4, 2, 1, 8, 2)
    return Sizes("resnet50", 224, 64, 12, 3, 256, 4)


# ---------------------------------------------------------------- shared helpers
def save(out: Path, section: str, record: dict) -> None:
    """``out/SECTION.json``, and the same record on stdout (the log keeps it too)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{section}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)


def synced(device: torch.device, fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` followed by a wait for the device, so a wall-clock time covers its GPU work."""
    def run() -> None:
        fn()
        synchronize(device)
    return run


def patched(sizes: Sizes, device: torch.device, channels_last: bool = False) -> PatchedModel:
    """The backbone (random weights) on ``device``, wrapped, at the measured image size."""
    torch.manual_seed(0)
    backbone = load_backbone(sizes.backbone, device=device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    model = PatchedModel(backbone).eval()
    model.preprocess = model.preprocess.with_size(sizes.image)
    return model


def batch(sizes: Sizes, n: int, device: torch.device, channels_last: bool = False) -> Tensor:
    x = torch.randn(n, 3, sizes.image, sizes.image, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------- training
def trainer(forward: Callable[[object], Tensor], params: list[nn.Parameter], device: torch.device,
            precision: str, inputs: Callable[[int], object], y: Tensor, steps: int
            ) -> Callable[[], None]:
    """``steps`` AdamW steps of ``forward`` on ``inputs(step)`` under ``precision``."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = grad_scaler(device, precision)

    def run() -> None:
        for i in range(steps):
            with autocast(device, precision):
                loss = F.cross_entropy(forward(inputs(i)), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return synced(device, run)


def feature_cache(model: PatchedModel, x: Tensor, start: int, n: int, precision: str
                  ) -> list[tuple[Tensor, ...]]:
    """``n`` batches of frozen features kept on the device in the precision's dtype (bf16 /
    fp16 halve them), as the cache keeps them; read back as float32, as the cache does."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.no_grad():
        return [tuple(p.to(dtype) for p in frozen_parts(model, x.roll(i, 0), start))
                for i in range(n)]


def delta_variants(model: PatchedModel, x: Tensor, y: Tensor, sizes: Sizes, precision: str
                   ) -> tuple[dict[str, Callable[[], None]], dict]:
    """Δ(1) trained on images and on cached features (the cache built once, timed aside)."""
    model.add_patch("p", 10, stages=1)
    params = [p for p in model.get_patch("p").parameters() if p.requires_grad]
    start = model.first_patched_stage(["p"])
    t0 = time.perf_counter()
    cache = feature_cache(model, x, start, sizes.cache_batches, precision)
    synchronize(x.device)
    build = time.perf_counter() - t0

    def from_cache(parts: tuple[Tensor, ...]) -> Tensor:
        return model.forward_from(parts[0].float(), start, patch="p",
                                  first_residual=parts[1].float() if len(parts) > 1 else None)

    model.train()
    variants = {
        "delta1_nocache": trainer(lambda v: model(v, patch="p"), params, x.device, precision,
                                  lambda i: x, y, sizes.steps),
        "delta1_cache": trainer(from_cache, params, x.device, precision,
                                lambda i: cache[i % len(cache)], y, sizes.steps)}
    info = {"delta_trainable_params": model.trainable_parameters("p"),
            "cache_build_images_per_s": round(sizes.cache_batches * len(x) / build, 1)}
    return variants, info


def lora_variant(model: PatchedModel, x: Tensor, y: Tensor, sizes: Sizes, precision: str
                 ) -> tuple[Callable[[], None], dict]:
    """PEFT LoRA on the last stage's convs at the rank that matches Δ(1)'s parameters (head
    excluded), as ``--method lora``'s automatic rank picks it."""
    from deltapatch.methods.lora import LoraTask, adapters, auto_rank, lora_net, stage_convs

    head = model.get_patch("p").head
    budget = model.trainable_parameters("p") - count_params(head, trainable=True)
    targets = stage_convs(model, [model.num_stages - 1])
    rank = auto_rank(model, targets, budget)
    net = lora_net(model, targets, rank, float(rank))
    task = LoraTask(net, nn.Linear(model._head.in_features, 10), model.spec).to(x.device)
    task.train()
    owned = nn.ModuleDict({"lora": adapters(net), "head": task.head})
    params = [p for p in owned.parameters() if p.requires_grad]
    run = trainer(task, params, x.device, precision, lambda i: x, y, sizes.steps)
    return run, {"lora_rank": rank, "lora_params": count_params(owned["lora"], trainable=True)}


def full_ft_variant(model: PatchedModel, x: Tensor, y: Tensor, sizes: Sizes, precision: str
                    ) -> Callable[[], None]:
    """Every backbone weight + a new head, BatchNorms in train mode, on a copy."""
    from bench_train import full_finetune

    ft = full_finetune(model.backbone, 10).to(x.device).train()
    if x.is_contiguous(memory_format=torch.channels_last):
        ft = ft.to(memory_format=torch.channels_last)
    return trainer(ft, [p for p in ft.parameters() if p.requires_grad], x.device, precision,
                   lambda i: x, y, sizes.steps)


def train_setting(sizes: Sizes, device: torch.device, precision: str, channels_last: bool
                  ) -> dict:
    """Images/s of Δ(1) ± cache, rank-matched LoRA and full fine-tuning, side by side."""
    model = patched(sizes, device, channels_last)
    x = batch(sizes, sizes.train_batch, device, channels_last)
    y = torch.arange(len(x), device=device) % 10
    variants, info = delta_variants(model, x, y, sizes, precision)
    try:
        variants["lora"], lora_info = lora_variant(model, x, y, sizes, precision)
        info.update(lora_info)
    except Exception as err:  # noqa: BLE001  (peft missing: measure the rest)
        info["lora_error"] = f"{type(err).__name__}: {err}"
    variants["full_finetune"] = full_ft_variant(model, x, y, sizes, precision)
    times = interleaved(variants, sizes.rounds)
    images = sizes.train_batch * sizes.steps
    out = {"precision": precision, "channels_last": channels_last, **info,
           "images_per_s": {k: round(images / med(t), 1) for k, t in times.items()},
           "seconds": {k: [round(v, 4) for v in t] for k, t in times.items()}}
    if "lora" in times:  # per-round time ratios: LoRA's time over Δ's = Δ's img/s over LoRA's
        out["delta_cache_vs_lora"] = round(ratio(times, "lora", "delta1_cache"), 3)
        out["delta_nocache_vs_lora"] = round(ratio(times, "lora", "delta1_nocache"), 3)
    out["delta_cache_vs_full_ft"] = round(ratio(times, "full_finetune", "delta1_cache"), 3)
    return out


def section_train(sizes: Sizes, device: torch.device) -> dict:
    results = []
    for precision, channels_last in SETTINGS:
        try:
            results.append(train_setting(sizes, device, precision, channels_last))
        except Exception as err:  # noqa: BLE001  (one setting failing must not hide the rest)
            results.append({"precision": precision, "channels_last": channels_last,
                            "error": f"{type(err).__name__}: {err}"})
        print(json.dumps(results[-1]), flush=True)
    return {"batch": sizes.train_batch, "steps_per_round": sizes.steps, "rounds": sizes.rounds,
            "settings": results}


# ---------------------------------------------------------------- mixed batches, fan-out
def mixed_variants(model: PatchedModel, x: Tensor, names: list[str]
                   ) -> dict[str, Callable[[], object]]:
    """One base forward; a batch whose rows go to 8 / 64 patches round robin; fan-out of the
    base + 8 patches vs the nine forwards it replaces."""
    rows = {k: [names[i % k] for i in range(len(x))] for k in (8, 64)}
    nine = ["__base__", *names[:8]]

    def nine_forwards() -> None:
        for n in nine:
            model(x, patch=None if n == "__base__" else n)

    return {"base": lambda: model(x), "mixed8": lambda: model(x, patches=rows[8]),
            "mixed64": lambda: model(x, patches=rows[64]),
            "fanout9": lambda: model.fanout(x, nine), "nine_forwards": nine_forwards}


def section_mixed(sizes: Sizes, device: torch.device) -> dict:
    model = patched(sizes, device)
    names = [f"p{i:02d}" for i in range(64)]
    for n in names:
        model.add_patch(n, 10, stages=1)
    x = batch(sizes, sizes.infer_batch, device)
    out = {"batch": len(x), "patches": len(names), "rounds": 3 * sizes.rounds}
    for precision in ("fp32", "bf16"):
        with torch.inference_mode(), autocast(device, precision):
            variants = {k: synced(device, f) for k, f in mixed_variants(model, x, names).items()}
            times = interleaved(variants, 3 * sizes.rounds)
        out[precision] = {
            "median_ms": {k: round(1e3 * med(t), 2) for k, t in times.items()},
            "mixed8_vs_base": round(ratio(times, "mixed8", "base"), 3),
            "mixed64_vs_base": round(ratio(times, "mixed64", "base"), 3),
            "fanout9_vs_nine_forwards": round(ratio(times, "fanout9", "nine_forwards"), 3)}
        print(json.dumps(out[precision]), flush=True)
    return out


# ---------------------------------------------------------------- serving
def jpegs(n: int, size: int) -> list[bytes]:
    """Seeded random photos as JPEG files (nothing to download on a bare machine)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def served_base(sizes: Sizes, device: torch.device) -> dict:
    """The server's base answers (in process, batcher on ``device``) vs ``backbone(x)`` on the
    same device for the same decoded image: top-5 indices and scores."""
    from fastapi.testclient import TestClient

    from deltapatch.serve.app import create_app
    from deltapatch.serve.inputs import Limits, image_tensor
    from deltapatch.serve.patchset import PatchSet

    model = patched(sizes, device)
    files = jpegs(8, sizes.image)
    exact, max_diff, same_top = True, 0.0, True
    with TestClient(create_app(PatchSet(model))) as client, torch.inference_mode():
        for data in files:
            r = client.post("/v1/predict", files={"image": ("x.jpg", data, "image/jpeg")},
                            data={"patch": "__base__", "top_k": "5"})
            r.raise_for_status()
            got = r.json()["top_k"]
            x = model.preprocess.normalize(image_tensor(data, model.preprocess, Limits())[None]
                                           .to(device))
            probs = model.backbone(x).float().softmax(1)[0].cpu()
            want = probs.topk(5)
            same_top &= [g["index"] for g in got] == want.indices.tolist()
            diffs = [abs(g["score"] - float(probs[g["index"]])) for g in got]
            max_diff = max(max_diff, *diffs)
            exact &= max(diffs) == 0.0
    return {"images": len(files), "top5_indices_equal": same_top,
            "scores_bit_identical": exact, "max_score_diff": max_diff}


def has_flag(argv: list[str], flag: str) -> bool:
    """Whether ``argv --help`` lists ``flag`` (the serving and training owners add --device)."""
    help_text = subprocess.run([*argv, "--help"], capture_output=True, text=True, env=env(),
                               timeout=120).stdout
    return flag in help_text


def env() -> dict[str, str]:
    """This checkout's package first on the path of every child process."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def device_flag(argv: list[str], device: torch.device) -> list[str] | None:
    """``--device D`` where ``argv`` takes it; nothing on the CPU (every command's old path);
    None when a GPU is asked for and ``argv`` has no --device yet."""
    if has_flag(argv, "--device"):
        return ["--device", str(device)]
    return [] if device.type == "cpu" else None


def load_test(tiny: bool, device: torch.device) -> dict:
    """benchmarks/serve_load.py: 1 vs 128 patches, closed loop, then open loop at 70 % of each
    mix's measured maximum; throughput ratio and p99/p50."""
    script = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py")]
    flag = device_flag(script, device)
    if flag is None:
        return {"status": "not available: serve_load.py has no --device yet"}
    mixes = ["1", "8"] if tiny else ["1", "128"]
    sizing = (["--seconds", "2", "--max-requests", "60", "--clients", "4", "--images", "4"]
              if tiny else ["--seconds", "10", "--max-requests", "20000", "--clients", "64",
                            "--max-batch", "64", "--threads", "4"])
    cmd = [*script, "--mixes", *mixes, "--open-loop", "0.7", *sizing, *flag]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=400)
    out = {"command": " ".join(cmd[1:]), "returncode": run.returncode, "stdout": run.stdout,
           "stderr_tail": run.stderr[-2000:]}
    out.update(parse_load(run.stdout, mixes))
    return out


def parse_load(text: str, mixes: list[str]) -> dict:
    """req/s per mix from serve_load's table rows, p50/p99 from its open-loop lines (in order)."""
    rps = {m.group(1): float(m.group(2))
           for m in re.finditer(r"^\| (\d+) \| uniform over \d+ \| [^|]+\| ([\d.]+) \|", text,
                                re.M)}
    tails = [float(v) for v in re.findall(r"p99/p50 ([\d.]+)", text)]
    out: dict = {"req_per_s": rps, "open_loop_p99_over_p50": dict(zip(mixes, tails))}
    if set(mixes) <= set(rps):
        out["server_128_vs_1_throughput"] = round(rps[mixes[1]] / rps[mixes[0]], 3)
    if mixes[1] in out["open_loop_p99_over_p50"]:
        out["server_p99_over_p50_at_70pct"] = out["open_loop_p99_over_p50"][mixes[1]]
    return out


def section_serve(sizes: Sizes, device: torch.device, tiny: bool) -> dict:
    out = {}
    for name, fn in (("served_base", lambda: served_base(sizes, device)),
                     ("load", lambda: load_test(tiny, device))):
        try:
            out[name] = fn()
        except Exception as err:  # noqa: BLE001  (one failure must not hide the other)
            out[name] = {"error": f"{type(err).__name__}: {err}"}
    return out


# ---------------------------------------------------------------- one paper cell
def fake_npz(path: Path, classes: int, n: int, size: int) -> str:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    np.savez(path, x_train=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 255, (n // 2, size, size, 3), dtype=np.uint8),
             y_test=y[:n // 2])
    return str(path)


def toml_table(name: str, values: dict) -> str:
    """A TOML table of plain values (JSON spells strings, numbers and booleans as TOML does)."""
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def paper_cell(folder: Path, tiny: bool) -> Path:
    """The shipped paper suite cut to one cell (single / ResNet-50 / GTSRB / Δ(1), one seed,
    one epoch, random weights, a slice of fake data): its defaults, variant and protocol."""
    from deltapatch.bench.suite import load_suite

    paper = load_suite("paper")
    variant = paper.variants["delta1"]
    size, n, backbone = (32, 16, "resnet18") if tiny else (224, 512, "resnet50")
    defaults = {**paper.defaults, "epochs": 1, "image_size": size, "lambda_images": 16,
                "max_test": n // 2, "val_fraction": 0.25, "batch_size": 4 if tiny else 64}
    base = fake_npz(folder / "base.npz", 10, n, size)
    text = (f'name = "paper-cell"\ndescription = "one cell of the paper suite on a GPU"\n'
            f"seeds = 1\n\n{toml_table('defaults', defaults)}\n"
            + toml_table(f"backbones.{backbone}", {"base_data": base}) + "\n"
            + toml_table("tasks.gtsrb", {"data": fake_npz(folder / "gtsrb.npz", 5, n, size)})
            + "\n" + toml_table("variants.delta1", {"method": variant.method, "label": variant.label,
                                             "stages": variant.stages})
            + f'\n[[scenarios]]\nkind = "single"\ntable = "single"\nbackbones = ["{backbone}"]\n'
            'tasks = ["gtsrb"]\nvariants = ["delta1"]\n')
    path = folder / "paper_cell.toml"
    path.write_text(text)
    return path


def section_paper(device: torch.device, tiny: bool) -> dict:
    cli = [sys.executable, "-m", "deltapatch", "bench"]
    flag = device_flag(cli, device)
    if flag is None:
        return {"status": "not available: deltapatch bench has no --device yet"}
    if flag and has_flag(cli, "--precision"):
        flag += ["--precision", "bf16"]
    with tempfile.TemporaryDirectory(prefix="gpu-paper-") as tmp:
        suite = paper_cell(Path(tmp), tiny)
        cmd = [*cli, "--suite", str(suite), "--out", str(Path(tmp) / "out"), "--no-progress",
               *flag]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=400)
        found = [json.loads(p.read_text())
                 for p in sorted((Path(tmp) / "out").glob("runs/**/*.json"))]
        suite_text = suite.read_text()
    records = [r for r in found if "status" in r]  # run records, not the runner's own files
    return {"command": " ".join(["deltapatch", "bench", "--suite", "paper_cell.toml", *flag]),
            "suite": suite_text, "returncode": run.returncode, "wall_seconds": round(time.perf_counter() - t0, 1),
            "stdout_tail": run.stdout[-3000:], "stderr_tail": run.stderr[-2000:],
            "records": [{k: r.get(k) for k in ("status", "reason", "result", "hardware")}
                        for r in records]}


# ---------------------------------------------------------------- summary
def verdict(key: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    op, goal = GOALS[key]
    met = value >= goal if op == ">=" else value <= goal
    return f"{value:.3f} (goal {op} {goal:g}: {'met' if met else 'NOT met'})"


def load(out: Path, section: str) -> dict:
    path = out / f"{section}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_lines(out: Path) -> list[str]:
    """Every ratio next to its goal; a missing section says so."""
    machine = load(out, "machine")
    lines = [f"machine: {machine.get('line', 'not recorded')}"]
    if machine.get("tiny"):
        lines.append("DRY RUN (--tiny): tiny sizes, not the measured configuration; these are "
                     "no GPU results")
    for s in load(out, "train").get("settings", []):
        tag = f"train {s['precision']}{' + channels_last' if s['channels_last'] else ''}"
        if "error" in s:
            lines.append(f"{tag}: error {s['error']}")
            continue
        lines.append(f"{tag}: images/s {s['images_per_s']}")
        for key in ("delta_cache_vs_lora", "delta_nocache_vs_lora"):
            lines.append(f"  {key}: {verdict(key, s.get(key))}")
        lines.append(f"  delta_cache_vs_full_ft: {s['delta_cache_vs_full_ft']:.3f} (no goal)")
    mixed = load(out, "mixed")
    for precision in ("fp32", "bf16"):
        m = mixed.get(precision)
        if m:
            lines.append(f"mixed {precision} batch {mixed['batch']}: ms {m['median_ms']}")
            lines.append(f"  mixed64_vs_base: {verdict('mixed64_vs_base', m['mixed64_vs_base'])}"
                         f"; mixed8_vs_base {m['mixed8_vs_base']:.3f}; fanout9_vs_nine_forwards "
                         f"{m['fanout9_vs_nine_forwards']:.3f} (no goal)")
    serve = load(out, "serve")
    lines.append(f"served base vs backbone(x): {serve.get('served_base', 'not measured')}")
    load_test_ = serve.get("load", {})
    lines.append(f"server load: {load_test_.get('status', load_test_.get('error', ''))}".rstrip())
    for key in ("server_128_vs_1_throughput", "server_p99_over_p50_at_70pct"):
        lines.append(f"  {key}: {verdict(key, load_test_.get(key))}")
    paper = load(out, "paper")
    lines.append("paper cell: " + (paper.get("status") or json.dumps(
        {"returncode": paper.get("returncode"), "wall_seconds": paper.get("wall_seconds"),
         "status": [r.get("status") for r in paper.get("records", [])]})))
    return lines


# ---------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=["machine", "train", "mixed", "serve", "paper", "summary"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="dry-run sizes (CPU, minutes)")
    a = p.parse_args()
    if a.section == "summary":
        lines = summary_lines(a.out)
        (a.out / "summary.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    device = resolve_device(a.device)
    sizes = sizes_for(a.tiny)
    sections = {"machine": lambda: {"line": describe(device), "facts": device_facts(device),
                                    "tiny": a.tiny, "sizes": sizes._asdict()},
                "train": lambda: section_train(sizes, device),
                "mixed": lambda: section_mixed(sizes, device),
                "serve": lambda: section_serve(sizes, device, a.tiny),
                "paper": lambda: section_paper(device, a.tiny)}
    save(a.out, a.section, {"section": a.section, "device": str(device), "tiny": a.tiny,
                            **sections[a.section]()})


if __name__ == "__main__":
    main()
