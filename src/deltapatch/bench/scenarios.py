"""The paper's scenarios as job builders: each turns one ``[[scenarios]]`` entry of a suite into
independent, resumable jobs.

Scenario kinds: ``single`` (Tables 1, 2, 8, 10), ``joint`` (Table 3), ``sequential`` (Tables 4,
11), ``zsda`` (Table 6); ``scratch`` and ``transfer`` (Tables 12–13, 5) live in :mod:`.full`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.sets import ImageSet, TaskData
from ..metrics import harmonic_mean
from ..run import input_size, run_one
from ..runinputs import base_task_data, build_model, native_size, task_data, test_split
from .jobs import Job, Skip, describe, fingerprint, grid, lr_grid, run_spec, scenario, tuning
from .schema import TASK_KEY, TASK_KEYS, TASK_LISTS, Shape
from .suite import Suite, Variant, train_config
from .tuning import TUNE_SEED

SINGLE_TABLES = ("single", "adapted", "ablation", "init")  # the report's single-task tables


# ---------------------------------------------------------------- single-task patching
@scenario("single", Shape({"tasks": TASK_KEYS}, SINGLE_TABLES))
def single(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """One method on one task; base and patch top-1 and their harmonic mean."""
    table = entry.get("table", "single")
    jobs = []
    for bb, v, seed in grid(suite, entry, seeds):
        for t in entry["tasks"]:
            task = suite.tasks[t]

            def run(out: Path, lr=None, bb=bb, task=task, v=v, seed=seed) -> dict:
                return run_one(run_spec(suite, bb, task, v, seed, lr), out, device=suite.device)

            jobs.append(Job(f"single/{bb}/{t}/{v.key}/seed{seed}", "single", table, bb, t,
                            v.key, v.label, seed, run, describe(v),
                            fingerprint(suite, bb, [task], v), **tuning(suite, task, v)))
    return jobs


# ---------------------------------------------------------------- zero-shot domain adaptation
@scenario("zsda", Shape({"source": TASK_KEY, "target": TASK_KEY}))
def zsda(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """Train on ``source``, test on ``target`` (same classes, other domain) without ever seeing
    target data; ``top1_by_test.target`` is the number that matters."""
    src, tgt = suite.tasks[entry["source"]], suite.tasks[entry["target"]]
    jobs = []
    for bb, v, seed in grid(suite, entry, seeds):
        def run(out: Path, lr=None, bb=bb, v=v, seed=seed) -> dict:
            spec = run_spec(suite, bb, src, v, seed, lr)
            size = input_size(spec)
            target = {"target": test_split(tgt.data, size, seed=seed,
                                           max_test=suite.settings(tgt.settings).get("max_test"))}
            if v.method == "full":  # the fully trained network ± Δ (paper Table 6)
                from .full import train_full
                return train_full(spec, out, extra_tests=target, device=suite.device)
            return run_one(spec, out, extra_tests=target, device=suite.device)

        name = f"{src.key}→{tgt.key}"
        jobs.append(Job(f"zsda/{bb}/{src.key}-{tgt.key}/{v.key}/seed{seed}", "zsda", "zsda", bb,
                        name, v.key, v.label, seed, run, describe(v),
                        fingerprint(suite, bb, [src, tgt], v), **tuning(suite, src, v)))
    return jobs


# ---------------------------------------------------------------- joint patching
def concat_tasks(parts: list[TaskData], name: str) -> TaskData:
    """Tasks' data concatenated with labels offset, one head over all classes (paper §3.1)."""
    offsets, names, off = [], [], 0
    for d in parts:
        offsets.append(off)
        names += [f"{d.name}:{c}" for c in d.class_names]
        off += d.num_classes

    def cat(split: str) -> ImageSet:
        sets = [getattr(d, split) for d in parts]
        return ImageSet(torch.cat([s.images for s in sets]),
                        torch.cat([s.labels + o for s, o in zip(sets, offsets, strict=True)]))

    hflip = all(d.hflip for d in parts)
    return TaskData(name, cat("train"), cat("val"), cat("test"), names, hflip,
                    {"offsets": offsets})


@scenario("joint", Shape({"groups": TASK_LISTS}))
def joint(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """All tasks of a group at once; reported per task (within the joint head) and as the
    harmonic mean over the base task and every patch task."""
    jobs = []
    for bb, v, seed in grid(suite, entry, seeds):
        for group in entry["groups"]:
            def run(out: Path, lr=None, bb=bb, v=v, seed=seed, group=tuple(group)) -> dict:
                tasks = [suite.tasks[t] for t in group]
                spec = run_spec(suite, bb, tasks[0], v, seed, lr)
                spec.name, spec.data = "joint", "+".join(group)
                size = input_size(spec)
                parts = [task_data(t.data, size, seed=seed,
                                   **_sizes(suite.settings(t.settings))) for t in tasks]
                data = concat_tasks(parts, "joint")
                tests = {t.key: ImageSet(p.test.images, p.test.labels + o)
                         for t, p, o in zip(tasks, parts, data.info["offsets"], strict=True)}
                result = run_one(spec, out, data=data, extra_tests=tests, device=suite.device)
                accs = list(result["top1_by_test"].values())
                if result["base_top1"] is not None:
                    accs.append(result["base_top1"])
                result["joint_harmonic_mean"] = round(harmonic_mean(*accs), 6)
                return result

            name = "+".join(group)
            jobs.append(Job(f"joint/{bb}/{name}/{v.key}/seed{seed}", "joint", "joint", bb, name,
                            v.key, v.label, seed, run, describe(v),
                            fingerprint(suite, bb, [suite.tasks[t] for t in group], v),
                            **tuning(suite, suite.tasks[group[0]], v)))
    return jobs


def _sizes(settings: dict) -> dict:
    return {"max_train": settings.get("max_train"), "max_test": settings.get("max_test"),
            "val_fraction": settings.get("val_fraction", 0.1),
            "max_val": settings.get("max_val")}


# ---------------------------------------------------------------- sequential patching
@scenario("sequential", Shape({"orders": TASK_LISTS}))
def sequential(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """Tasks patched in the given order on one model; scored at the end on every task and the
    base task (mean top-1, paper Table 4), and each task right after its own training, so any
    forgetting shows as ``drop_by_task``."""
    jobs = []
    for bb, v, seed in grid(suite, entry, seeds):
        for order in entry["orders"]:
            def run(out: Path, lr=None, bb=bb, v=v, seed=seed, order=tuple(order)) -> dict:
                return _run_sequential(suite, bb, v, seed, list(order), out, lr)

            name = "→".join(order)
            grid_ = lr_grid(suite, suite.tasks[order[0]], v)
            jobs.append(Job(f"sequential/{bb}/{'-'.join(order)}/{v.key}/seed{seed}",
                            "sequential", "sequential", bb, name, v.key, v.label, seed, run,
                            describe(v),
                            fingerprint(suite, bb, [suite.tasks[t] for t in order], v), grid_,
                            [f"single/{bb}/{t}/{v.key}/seed{TUNE_SEED}" for t in order]
                            if grid_ else []))
    return jobs


def _run_sequential(suite: Suite, bb_key: str, v: Variant, seed: int, order: list[str],
                    out: Path, lrs: list[float] | None = None) -> dict:
    """``lrs``: each task's rate (from its single-task cell's tuning), else the settings'."""
    from ..methods import BaseTask, MethodContext, get_method

    fn = get_method(v.method).sequential
    if fn is None:
        raise Skip(f"method '{v.method}' has no sequential-patching procedure")
    t0 = time.perf_counter()
    bb = suite.backbones[bb_key]
    torch.manual_seed(seed)
    model = build_model(bb.name, bb.weights, suite.defaults.get("image_size"), suite.device)
    size = model.preprocess.size
    base_size = suite.defaults.get("base_image_size") or native_size(bb.name, bb.weights)
    contexts = []
    for i, t in enumerate(order):
        task = suite.tasks[t]
        s = suite.settings(task.settings, v.settings, {"lr": lrs[i]} if lrs else {})
        data = task_data(task.data, size, seed=seed, **_sizes(s))
        contexts.append(MethodContext(model=model, name=t, data=data,
                                      train=train_config(s, seed), out=out / t,
                                      stages=v.stages, norm=v.norm, gate=v.gate,
                                      init=v.init, options=dict(v.options)))
    max_test = suite.defaults.get("max_test")
    base = BaseTask(None)
    if bb.base_data:
        base = BaseTask(test_split(bb.base_data, base_size, seed=seed, max_test=max_test),
                       lambda: base_task_data(bb.base_data, base_size, seed=seed,
                                              max_test=max_test))
    torch.manual_seed(seed)
    result = fn(model, contexts, base)
    top1 = dict(result["final_top1"])
    result["mean_top1"] = round(sum(top1.values()) / len(top1), 6)
    result.update(method=v.method, order=order, seed=seed,
                  wall_seconds=round(time.perf_counter() - t0, 2))
    return result
