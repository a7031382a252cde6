"""The paper's scenarios as job builders: each turns one ``[[scenarios]]`` entry of a suite into
independent, resumable jobs. ``SCENARIOS[kind](suite, entry, seeds) -> list[Job]``.

Scenario kinds: ``single`` (Tables 1, 2, 8, 10), ``joint`` (Table 3), ``sequential`` (Tables 4,
11), ``zsda`` (Table 6), ``scratch`` (Tables 12–13) and ``transfer`` (Table 5, Δ on top of
fine-tuning). A job whose method is not registered (yet) is marked ``skipped``, not run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import metrics
from ..data.sets import ImageSet, TaskData
from ..train import evaluate, fit
from .run import RunSpec, base_task_data, build_model, cap, input_size, run_one, task_data, test_split
from .suite import Suite, Task, Variant, data_settings, train_config


class Skip(Exception):
    """A job that cannot run here and now (method not registered, scenario not supported)."""


@dataclass
class Job:
    key: str  # where its JSON lives under runs/, unique in a suite
    scenario: str
    table: str
    backbone: str
    task: str
    variant: str
    label: str
    seed: int
    run: Callable[[Path], dict] = field(repr=False)
    method: dict = field(default_factory=dict)  # the variant: method, stages, gate, norm
    config: str = ""  # fingerprint of every setting that shapes the run's numbers

    def context(self) -> dict:
        return {"key": self.key, "scenario": self.scenario, "table": self.table,
                "backbone": self.backbone, "task": self.task, "variant": self.variant,
                "label": self.label, "seed": self.seed, "method": self.method,
                "config": self.config}


def fingerprint(suite: Suite, bb: str, tasks: list[Task], v: Variant, **extra) -> str:
    """A short hash of what determines a run: backbone, every task's data and settings, the
    variant. A stored run whose fingerprint differs (the suite file changed) is redone, and two
    tables that ask for the same run share one."""
    blob = {"backbone": asdict(suite.backbones[bb]), "variant": {**asdict(v), "label": None},
            "tasks": [[t.data, suite.settings(t.settings, v.settings)] for t in tasks], **extra}
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


SCENARIOS: dict[str, Callable[[Suite, dict, int], list[Job]]] = {}


def scenario(kind: str):
    def deco(fn):
        SCENARIOS[kind] = fn
        return fn
    return deco


def _require_method(name: str) -> None:
    from ..methods import METHODS
    if name not in METHODS:
        raise Skip(f"method '{name}' is not registered (yet)")


def _spec(suite: Suite, bb_key: str, task: Task, v: Variant, seed: int, **kw) -> RunSpec:
    bb = suite.backbones[bb_key]
    s = suite.settings(task.settings, v.settings)
    return RunSpec(backbone=bb.name, weights=bb.weights, data=task.data, method=v.method,
                   stages=v.stages, norm=v.norm, gate=v.gate, base_data=bb.base_data,
                   seed=seed, train=train_config(s, seed), options=dict(v.options),
                   lambda_images=int(s.get("lambda_images", 0)), name=task.key,
                   **data_settings(s), **kw)


def _describe(v: Variant) -> dict:
    return {"name": v.method, "stages": v.stages, "gate": v.gate, "norm": v.norm}


def _grid(suite: Suite, entry: dict, seeds: int):
    for bb in entry["backbones"]:
        for v in entry["variants"]:
            for seed in range(seeds):
                yield bb, suite.variants[v], seed


# ---------------------------------------------------------------- single-task patching
@scenario("single")
def single(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """One method on one task; base and patch top-1 and their harmonic mean."""
    table = entry.get("table", "single")
    jobs = []
    for bb, v, seed in _grid(suite, entry, seeds):
        for t in entry["tasks"]:
            task = suite.tasks[t]

            def run(out: Path, bb=bb, task=task, v=v, seed=seed) -> dict:
                _require_method(v.method)
                return run_one(_spec(suite, bb, task, v, seed), out)

            jobs.append(Job(f"single/{bb}/{t}/{v.key}/seed{seed}", "single", table, bb, t,
                            v.key, v.label, seed, run, _describe(v),
                            fingerprint(suite, bb, [task], v)))
    return jobs


# ---------------------------------------------------------------- zero-shot domain adaptation
@scenario("zsda")
def zsda(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """Train on ``source``, test on ``target`` (same classes, other domain) without ever seeing
    target data; ``top1_by_test.target`` is the number that matters."""
    src, tgt = suite.tasks[entry["source"]], suite.tasks[entry["target"]]
    jobs = []
    for bb, v, seed in _grid(suite, entry, seeds):
        def run(out: Path, bb=bb, v=v, seed=seed) -> dict:
            _require_method(v.method)
            spec = _spec(suite, bb, src, v, seed)
            size = input_size(spec)
            target = test_split(tgt.data, size, seed=seed,
                                max_test=suite.settings(tgt.settings).get("max_test"))
            return run_one(spec, out, extra_tests={"target": target})

        name = f"{src.key}→{tgt.key}"
        jobs.append(Job(f"zsda/{bb}/{src.key}-{tgt.key}/{v.key}/seed{seed}", "zsda", "zsda", bb,
                        name, v.key, v.label, seed, run, _describe(v),
                        fingerprint(suite, bb, [src, tgt], v)))
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


@scenario("joint")
def joint(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """All tasks of a group at once; reported per task (within the joint head) and as the
    harmonic mean over the base task and every patch task."""
    jobs = []
    for bb, v, seed in _grid(suite, entry, seeds):
        for group in entry["groups"]:
            def run(out: Path, bb=bb, v=v, seed=seed, group=tuple(group)) -> dict:
                _require_method(v.method)
                tasks = [suite.tasks[t] for t in group]
                spec = _spec(suite, bb, tasks[0], v, seed)
                spec.name, spec.data = "joint", "+".join(group)
                size = input_size(spec)
                parts = [task_data(t.data, size, seed=seed,
                                   **_sizes(suite.settings(t.settings))) for t in tasks]
                data = concat_tasks(parts, "joint")
                tests = {t.key: ImageSet(p.test.images, p.test.labels + o)
                         for t, p, o in zip(tasks, parts, data.info["offsets"], strict=True)}
                result = run_one(spec, out, data=data, extra_tests=tests)
                accs = list(result["top1_by_test"].values())
                if result["base_top1"] is not None:
                    accs.append(result["base_top1"])
                result["joint_harmonic_mean"] = round(_hmean(accs), 6)
                return result

            name = "+".join(group)
            jobs.append(Job(f"joint/{bb}/{name}/{v.key}/seed{seed}", "joint", "joint", bb, name,
                            v.key, v.label, seed, run, _describe(v),
                            fingerprint(suite, bb, [suite.tasks[t] for t in group], v)))
    return jobs


def _sizes(settings: dict) -> dict:
    return {"max_train": settings.get("max_train"), "max_test": settings.get("max_test"),
            "val_fraction": settings.get("val_fraction", 0.1),
            "max_val": settings.get("max_val")}


def _hmean(values: list[float]) -> float:
    if not values or min(values) <= 0:
        return 0.0
    return len(values) / sum(1 / v for v in values)


# ---------------------------------------------------------------- sequential patching
@dataclass
class SeqBase:
    """The base task for sequential patching: its test split, and (for methods that choose on
    it, like PAINT's α) the full task, loaded only when asked for."""

    test: ImageSet | None
    full: Callable[[], TaskData] | None = None


SEQUENTIAL: dict[str, Callable] = {}
"""Methods that can patch tasks in sequence: ``fn(model, contexts, base: SeqBase) -> dict`` with
``final_top1`` (task → top-1 after the last task, ``base`` included). Methods whose patches are
separate modules (delta, linear) are patch-per-task; PAINT carries its interpolated weights
forward."""


def register_sequential(method: str):
    def deco(fn):
        SEQUENTIAL[method] = fn
        return fn
    return deco


def _sequential_fn(method: str) -> Callable:
    _require_method(method)
    if method not in SEQUENTIAL:
        raise Skip(f"method '{method}' has no sequential-patching procedure (yet)")
    return SEQUENTIAL[method]


@scenario("sequential")
def sequential(suite: Suite, entry: dict, seeds: int) -> list[Job]:
    """Tasks patched in the given order on one model; scored at the end on every task and the
    base task (mean top-1, paper Table 4), and each task right after its own training, so any
    forgetting shows as ``drop_by_task``."""
    jobs = []
    for bb, v, seed in _grid(suite, entry, seeds):
        for order in entry["orders"]:
            def run(out: Path, bb=bb, v=v, seed=seed, order=tuple(order)) -> dict:
                return _run_sequential(suite, bb, v, seed, list(order), out)

            name = "→".join(order)
            jobs.append(Job(f"sequential/{bb}/{'-'.join(order)}/{v.key}/seed{seed}",
                            "sequential", "sequential", bb, name, v.key, v.label, seed, run,
                            _describe(v),
                            fingerprint(suite, bb, [suite.tasks[t] for t in order], v)))
    return jobs


def _run_sequential(suite: Suite, bb_key: str, v: Variant, seed: int, order: list[str],
                    out: Path) -> dict:
    from ..methods import MethodContext

    fn = _sequential_fn(v.method)
    t0 = time.perf_counter()
    bb = suite.backbones[bb_key]
    torch.manual_seed(seed)
    model = build_model(bb.name, bb.weights)
    size = model.preprocess.size
    contexts = []
    for t in order:
        task = suite.tasks[t]
        s = suite.settings(task.settings, v.settings)
        data = task_data(task.data, size, seed=seed, **_sizes(s))
        contexts.append(MethodContext(model=model, name=t, data=data,
                                      train=train_config(s, seed), out=out / t,
                                      stages=v.stages, norm=v.norm, gate=v.gate,
                                      options=dict(v.options)))
    max_test = suite.defaults.get("max_test")
    base = SeqBase(None)
    if bb.base_data:
        base = SeqBase(test_split(bb.base_data, size, seed=seed, max_test=max_test),
                       lambda: base_task_data(bb.base_data, size, seed=seed, max_test=max_test))
    torch.manual_seed(seed)
    result = fn(model, contexts, base)
    top1 = dict(result["final_top1"])
    result["mean_top1"] = round(sum(top1.values()) / len(top1), 6)
    result.update(method=v.method, order=order, seed=seed,
                  wall_seconds=round(time.perf_counter() - t0, 2))
    return result


def _patch_per_task(method: str, model, contexts, base: SeqBase) -> dict:
    """Δ / FC sequential patching: each task gets its own patch; earlier ones are untouched."""
    from ..methods import get_method

    outcomes, after = [], {}
    for ctx in contexts:
        torch.manual_seed(ctx.train.seed)
        outcome = get_method(method)(ctx)
        model.eval()
        after[ctx.name] = evaluate(outcome.patch_forward, ctx.data.test, model.preprocess)
        outcomes.append(outcome)
    final = {}
    if base.test is not None:
        final["base"] = round(evaluate(outcomes[-1].base_forward, base.test,
                                       model.preprocess), 6)
    for ctx, outcome in zip(contexts, outcomes, strict=True):
        final[ctx.name] = round(evaluate(outcome.patch_forward, ctx.data.test,
                                         model.preprocess), 6)
    return {"final_top1": final, "after_training_top1": {k: round(a, 6) for k, a in after.items()},
            "drop_by_task": {k: round(after[k] - final[k], 6) for k in after},
            "trainable_params": sum(o.trainable_params for o in outcomes),
            "patch_bytes": sum(o.patch_bytes for o in outcomes),
            "n_test": {ctx.name: len(ctx.data.test) for ctx in contexts}}


def _per_task(method: str) -> Callable:
    return lambda model, contexts, base: _patch_per_task(method, model, contexts, base)


for _m in ("delta", "linear"):
    register_sequential(_m)(_per_task(_m))


@register_sequential("paint")
def _paint_sequential(model, contexts, base: SeqBase) -> dict:
    """Sequential PAINT (paper §3.1, Table 11) through the method's own
    ``paint_sequential_step``: fine-tune the last interpolated network on the next task, pick α
    by the mean val top-1 over all tasks so far (base included), carry θ_α forward."""
    try:
        from ..methods.paint import EvalTask, paint_sequential_step, task_forward
    except ImportError:
        raise Skip("the paint module has no paint_sequential_step (yet)") from None
    if base.full is None:
        raise Skip("sequential PAINT needs the suite's base_data (α is chosen on it)")
    full = base.full()
    val_max = int(contexts[0].options.get("base_val_max", 2000))
    tasks = [EvalTask("base", cap(full.val, val_max, contexts[0].train.seed), None, base.test)]
    previous, heads, after, steps = None, {}, {}, []
    for ctx in contexts:
        torch.manual_seed(ctx.train.seed)
        step = paint_sequential_step(model, previous, tasks, ctx.data, ctx.train,
                                     ctx.out / "run", name=ctx.name, score="mean")
        previous, heads[ctx.name] = step.net, step.head
        after[ctx.name] = evaluate(task_forward(step.net, model.spec, step.head),
                                   ctx.data.test, model.preprocess)
        tasks.append(EvalTask(ctx.name, ctx.data.val, step.head, ctx.data.test))
        steps.append(step)
    net = previous
    final = {"base": round(evaluate(net, base.test, model.preprocess), 6)}
    for ctx in contexts:
        final[ctx.name] = round(evaluate(task_forward(net, model.spec, heads[ctx.name]),
                                         ctx.data.test, model.preprocess), 6)
    last = steps[-1].choice
    return {"final_top1": final, "after_training_top1": {k: round(a, 6) for k, a in after.items()},
            "drop_by_task": {k: round(after[k] - final[k], 6) for k in after},
            "alpha_by_step": [s.choice.alpha for s in steps], "alpha": last.alpha,
            "alpha_table": [{k: (round(x, 6) if isinstance(x, float) else x)
                             for k, x in row.items()} for row in last.table],
            "trainable_params": max(s.trainable_params for s in steps),
            "patch_bytes": sum(p.numel() * p.element_size() for p in net.state_dict().values())
            + sum(p.numel() * p.element_size() for h in heads.values() for p in h.parameters()),
            "n_test": {ctx.name: len(ctx.data.test) for ctx in contexts}}


# ---------------------------------------------------------------- full training ± Δ
def train_full(spec: RunSpec, out: Path) -> dict:
    """Train every weight of the backbone (random init: from scratch; pretrained: plain
    fine-tuning) with a new head, and with ``spec.stages`` > 0 Δ-stages trained jointly.
    The backbone's BatchNorms train too: this is ordinary training, not patching."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = build_model(spec.backbone, spec.weights, spec.image_size)
    data = task_data(spec.data, model.preprocess.size, seed=spec.seed,
                     max_train=spec.max_train, max_test=spec.max_test,
                     val_fraction=spec.val_fraction, max_val=spec.max_val)
    torch.manual_seed(spec.seed)
    model.add_patch("task", data.num_classes, stages=spec.stages, gate=spec.gate,
                    norm=spec.norm if spec.stages else "none", method="full")
    model.backbone.requires_grad_(True)
    owned = nn.ModuleDict({"backbone": model.backbone, "patch": model.get_patch("task")})
    forward = lambda x: model(x, patch="task")
    result = fit(forward, owned, data, model.preprocess, spec.train, run_dir=out / "run",
                 set_mode=owned.train)
    owned.eval()
    top1 = evaluate(forward, data.test, model.preprocess)
    return metrics.report(method="full", data=spec.data, patch_top1=top1, base_top1=None,
                          trainable_params=sum(p.numel() for p in owned.parameters()),
                          patch_bytes=sum(t.numel() * t.element_size()
                                          for t in owned.state_dict().values()),
                          n_test=len(data.test), seed=spec.seed, best_epoch=result.best_epoch,
                          val_top1=result.best_val_top1, delta_stages=spec.stages,
                          wall_seconds=round(time.perf_counter() - t0, 2))


def _full(kind: str):
    def build(suite: Suite, entry: dict, seeds: int) -> list[Job]:
        jobs = []
        for bb, v, seed in _grid(suite, entry, seeds):
            for t in entry["tasks"]:
                task = suite.tasks[t]

                def run(out: Path, bb=bb, task=task, v=v, seed=seed) -> dict:
                    spec = _spec(suite, bb, task, v, seed)
                    if kind == "scratch":
                        spec.weights = None
                    return train_full(spec, out)

                jobs.append(Job(f"{kind}/{bb}/{t}/{v.key}/seed{seed}", kind, kind, bb, t,
                                v.key, v.label, seed, run, _describe(v),
                                fingerprint(suite, bb, [task], v)))
        return jobs
    return build


scenario("scratch")(_full("scratch"))
scenario("transfer")(_full("transfer"))
