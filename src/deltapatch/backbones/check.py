"""A stage spec proves itself: on a small probe batch the spec's walk must give ``backbone(x)``
bit for bit, or :class:`~deltapatch.errors.SpecError` says which spec field is wrong.

A wrong spec does not crash: it silently trains patches on a network that is not the backbone
(a block left out of a slice, a forgotten ``post`` in a block split, a stem that drops part of
its output). So ``PatchedModel`` runs :func:`check_spec` once when it wraps a backbone. The check
records the input of every module while ``backbone(x)`` runs (forward pre-hooks, removed
afterwards), then walks the spec step by step and compares at each stage input, at each block and
at the head's input, so the error names the first place where the two paths part.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import SpecError
from .spec import StageSpec, Step, block_split, resolve, stage_module

PROBE_SIZE = 64
"""Probe images are at most this many pixels a side (the backbone's own size if it fails)."""


def check_spec(net: nn.Module, spec: StageSpec, size: int) -> list[tuple[int, int, int]]:
    """Prove that ``spec`` describes ``net``; returns (in channels, out channels, blocks) per
    stage, measured on the probe.

    Runs in eval mode under ``torch.no_grad`` (each module's mode is restored afterwards), so no
    parameter or buffer changes. Costs about two forwards at ``min(size, 64)`` pixels.

    Raises:
        SpecError: naming the spec field, stage or block where the spec path leaves
            ``backbone(x)``.
    """
    with torch.no_grad(), _eval(net):
        _check_structure(net, spec)
        path_of = {id(m): p for p, m in net.named_modules()}
        paths = [[path_of[id(b)] for b in _blocks(net, spec, s)] for s in range(spec.num_stages)]
        rec = _record(net, size, {p for stage in paths for p in stage})
        return _walk(net, spec, rec, paths)


def _check_structure(net: nn.Module, spec: StageSpec) -> None:
    """Every path resolves, stages hold registered blocks, the head is a Linear."""
    for part, steps in [("stem", spec.stem), ("pre_logits", spec.pre_logits),
                        *((f"transitions[{s}]", t) for s, t in spec.transitions.items())]:
        for i, step in enumerate(steps):
            _resolve(net, step, f"spec.{part}[{i}]")
    n = spec.num_stages
    if n == 0:
        raise SpecError("spec.stages is empty: name at least one stage of residual blocks")
    if spec.names is not None and len(spec.names) != n:
        raise SpecError(f"spec.names has {len(spec.names)} names for {n} stages")
    bad = [s for s in spec.transitions if not (isinstance(s, int) and 0 <= s < n)]
    if bad:
        raise SpecError(f"spec.transitions has keys {bad}; keys are stage indices 0..{n - 1} "
                        "(steps after the last stage belong in spec.pre_logits)")
    for s, name in enumerate(spec.stage_names()):
        for j, block in enumerate(_blocks(net, spec, s)):
            try:
                block_split(block)
            except TypeError as err:
                raise SpecError(f"stage '{name}' block {j}: {err}") from None
    head = _resolve(net, spec.head, "spec.head")
    if not isinstance(head, nn.Linear):
        raise SpecError(f"spec.head '{spec.head}' is a {type(head).__name__}; it must be the "
                        "final nn.Linear classifier")


def _blocks(net: nn.Module, spec: StageSpec, s: int) -> list[nn.Module]:
    path = spec.stages[s]
    try:
        blocks = list(stage_module(net, path))
    except (ValueError, TypeError, AttributeError) as err:
        raise SpecError(f"spec.stages[{s}] '{path}' must be a container of sub-blocks in "
                        f"{type(net).__name__} (nn.Sequential, nn.ModuleList, or "
                        f"'list[i:j]'): {_line(err)}") from None
    if not blocks:
        raise SpecError(f"spec.stages[{s}] '{path}' holds no sub-blocks")
    return blocks


def _resolve(net: nn.Module, step: Step, field: str):
    try:
        return resolve(net, step)
    except ValueError:
        raise SpecError(f"{field} names '{step}', which is not a submodule of "
                        f"{type(net).__name__}") from None


@contextmanager
def _eval(net: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _probe(net: nn.Module, size: int) -> Tensor:
    """Two seeded random images on the backbone's device and dtype (global RNG untouched)."""
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    floating = first is not None and first.is_floating_point()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.to(device=first.device if first is not None else "cpu",
                dtype=first.dtype if floating else torch.float32)


@dataclass
class _Record:
    """One ``backbone(x)``: its output, every module call's input in call order, and the first
    output of each module whose path is in ``watch`` (the stages' blocks)."""

    x: Tensor
    out: object
    calls: list[tuple[str, Tensor]] = field(default_factory=list)
    outputs: dict[str, Tensor] = field(default_factory=dict)

    def input_of(self, path: str) -> Tensor | None:
        return next((t for p, t in self.calls if p == path), None)


def _record(net: nn.Module, size: int, watch: set[str]) -> _Record:
    """``backbone(x)`` on a probe. The probe is small; a backbone that needs its full input
    size (fixed-size pooling) gets that instead."""
    error: Exception | None = None
    for side in dict.fromkeys((min(size, PROBE_SIZE), size)):
        try:
            rec = _recorded_forward(net, _probe(net, side), watch)
        except Exception as err:  # noqa: BLE001  (any failure: try the full size, then report)
            error = err
            continue
        if not isinstance(rec.out, Tensor):
            raise SpecError(f"backbone(x) returns a {type(rec.out).__name__}, not a logits "
                            "tensor; PatchedModel serves backbone(x) as the base task, so wrap "
                            "the model in a module whose forward returns the logits alone")
        return rec
    raise SpecError(f"backbone(x) fails on a probe batch of shape (2, 3, {size}, {size}): "
                    f"{_line(error)}. Set model.deltapatch_preprocess = "
                    "deltapatch.Preprocess(SIZE) to the input size it takes")


def _recorded_forward(net: nn.Module, x: Tensor, watch: set[str]) -> _Record:
    rec = _Record(x, None)

    def before(path: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                rec.calls.append((path, args[0].clone()))  # a clone: later ops may work in place
        return hook

    def after(path: str):
        def hook(_module: nn.Module, _args: tuple, out: object) -> None:
            if isinstance(out, Tensor) and path not in rec.outputs:
                rec.outputs[path] = out.clone()
        return hook

    handles = []
    for p, m in net.named_modules():
        if p:
            handles.append(m.register_forward_pre_hook(before(p)))
        if p in watch:
            handles.append(m.register_forward_hook(after(p)))
    try:
        rec.out = net(x)
    finally:
        for h in handles:
            h.remove()
    return rec


def _walk(net: nn.Module, spec: StageSpec, rec: _Record, paths: list[list[str]]
          ) -> list[tuple[int, int, int]]:
    """Stem, then per stage: its input, each block (against the backbone's own run of it),
    then pre-logits and head; the first disagreement raises."""
    names = spec.stage_names()
    inside = {a for stage in paths for p in stage for a in _ancestors(p)}
    shapes = []
    h = _run(net, spec.stem, rec.x, "spec.stem")
    for s in range(spec.num_stages):
        agreed, h = h, _run(net, spec.transition(s), h, f"spec.transitions[{s}]")
        if s == 0:
            agreed, last, steps = rec.x, "the input image", [*spec.stem, *spec.transition(0)]
            fix = "spec.stem" + (" and spec.transitions[0]" if spec.transition(0) else "")
        else:
            last, steps, fix = f"stage '{names[s - 1]}'", spec.transition(s), \
                f"spec.transitions[{s}]"
        _agree(h, rec.input_of(paths[s][0]), f"the input of stage '{names[s]}'",
               f"{fix} must hold every step backbone(x) runs between {last} and stage "
               f"'{names[s]}'", _hint(rec, agreed, inside, steps, last))
        out = _check_stage(net, spec, s, h, rec, paths[s])
        shapes.append((h.shape[1], out.shape[1], len(paths[s])))
        h = out
    _check_head(net, spec, h, rec, inside, names[-1])
    return shapes


def _check_stage(net: nn.Module, spec: StageSpec, s: int, h: Tensor, rec: _Record,
                 paths: list[str]) -> Tensor:
    """The stage's output on ``h`` (= the backbone's own input of its first block). Each block
    is checked on the input the backbone gave it: its registered split must compute its output,
    and it must take the previous block's output."""
    name = spec.stage_names()[s]
    stage = spec.stage_module(net, s)
    out = h
    for j, (block, path) in enumerate(zip(stage, paths, strict=True)):
        where = f"stage '{name}' block {j} ('{path}')"
        given, own = rec.input_of(path), rec.outputs.get(path)
        if given is None or own is None:
            raise SpecError(f"backbone(x) never runs {where}: spec.stages[{s}] names blocks "
                            "the backbone's forward does not use")
        if not (given.shape == out.shape and torch.equal(given, out)):
            raise SpecError(f"{where} does not take block {j - 1}'s output in backbone(x): "
                            f"spec.stages[{s}] '{spec.stages[s]}' must list consecutive blocks "
                            "that feed each other")
        _check_split(block, given, own, where)
        out = own
    if type(stage).forward is not nn.Sequential.forward and not torch.equal(stage(h), out):
        raise SpecError(f"stage '{name}': its forward differs from running its sub-blocks one "
                        f"after another; spec.stages[{s}] must name a container of the blocks only")
    return out


def _check_head(net: nn.Module, spec: StageSpec, h: Tensor, rec: _Record, inside: set[str],
                last_stage: str) -> None:
    feats = _run(net, spec.pre_logits, h, "spec.pre_logits")
    head = spec.head_module(net)
    if feats.dim() != 2 or feats.shape[1] != head.in_features:
        raise SpecError(f"spec.head '{spec.head}' takes {head.in_features} features but "
                        f"spec.pre_logits give shape {tuple(feats.shape)}: name the classifier "
                        "backbone(x) ends with, and end spec.pre_logits at its input")
    after = f"stage '{last_stage}'"
    _agree(feats, rec.input_of(spec.head), f"the input of spec.head '{spec.head}'",
           f"spec.pre_logits must hold every step backbone(x) runs between {after} and the "
           "head", _hint(rec, h, inside, spec.pre_logits, after))
    if not torch.equal(head(feats), rec.out):
        raise SpecError(f"backbone(x) differs from spec.head '{spec.head}''s output on the same "
                        "input: the backbone's forward must end with the head (no softmax or "
                        "other step after it)")


def _run(net: nn.Module, steps: Sequence[Step], h: Tensor, field: str) -> Tensor:
    """The steps on ``h``; a step may hand a tuple to the next, but the last must give a tensor."""
    for i, step in enumerate(steps):
        given = _describe(h)
        try:
            h = resolve(net, step)(h)
        except Exception as err:  # noqa: BLE001  (a user's step: report it with its field)
            raise SpecError(f"{field}[{i}] {_show(step)} fails on {given}: {_line(err)}") from None
    if not isinstance(h, Tensor):
        raise SpecError(f"{field}[{len(steps) - 1}] {_show(steps[-1])} returns a "
                        f"{type(h).__name__}, not a tensor: add a step that combines it the way "
                        "backbone.forward does")
    return h


def _describe(h: object) -> str:
    return (f"a tensor of shape {tuple(h.shape)}" if isinstance(h, Tensor)
            else f"a {type(h).__name__}")


def _check_split(block: nn.Module, h: Tensor, own: Tensor, where: str) -> None:
    """The registered split must compute the block's own output (up to rounding: a fused
    add in the block's forward may round differently; a missing activation does not)."""
    kind = type(block).__qualname__
    split = block_split(block)
    try:
        parts = split.post(block, split.residual(block, h) + split.shortcut(block, h))
    except Exception as err:  # noqa: BLE001
        raise SpecError(f"{where}: the registered split of {kind} fails: {_line(err)}") from None
    if parts.shape != own.shape or not torch.allclose(parts, own, rtol=1e-4, atol=1e-5):
        raise SpecError(f"{where}: the registered split of {kind}, post(residual(h) + "
                        "shortcut(h)), differs from the block's own forward; fix "
                        f"register_block({kind}, ...) (a missing post= activation?)")


def _agree(got: Tensor, want: Tensor | None, where: str, fix: str, hint: str) -> None:
    if want is None:
        raise SpecError(f"backbone(x) never runs {where.removeprefix('the input of ')}: "
                        "the spec names a module the backbone's forward does not use")
    if got.shape != want.shape:
        raise SpecError(f"{where} has shape {tuple(got.shape)} through the spec but "
                        f"{tuple(want.shape)} in backbone(x): {fix}{hint}")
    if not torch.equal(got, want):
        raise SpecError(f"{where} differs from the one in backbone(x): {fix}{hint}")


def _hint(rec: _Record, agreed: Tensor, inside: set[str], steps: Sequence[Step],
          after: str) -> str:
    """Which module backbone(x) ran next on the last tensor both paths agree on, if the spec
    runs something else there (a block left out of a slice shows up this way)."""
    nxt = next((p for p, t in rec.calls if p not in inside and t.shape == agreed.shape
                and torch.equal(t, agreed)), None)
    first = next((s for s in steps if isinstance(s, str)), None)
    if nxt is None or nxt == first:
        return ""
    return f" (after {after}, backbone(x) runs '{nxt}', which the spec does not run there)"


def _ancestors(path: str) -> list[str]:
    """``a.b.c`` → ``a``, ``a.b``: containers that hold a block and are not steps of their own."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _show(step: Step) -> str:
    return f"'{step}'" if isinstance(step, str) else getattr(step, "__name__", repr(step))


def _line(err: BaseException | None) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0] if text else ""
