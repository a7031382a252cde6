"""PatchedModel: one untouched backbone, any number of named patches, per-sample routing.

The base task always runs ``backbone(x)`` itself, so its output is bit-identical to the plain
model. A patched forward runs the same frozen modules stage by stage through the backbone's
:class:`StageSpec`, replacing only the patched stages by their Δ-stages and the head by the
patch's head. The backbone is wrapped, never copied; its BatchNorms stay in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from .backbones.check import check_spec
from .backbones.registry import (
    backbone_name,
    base_class_names,
    default_preprocess,
    family_init,
)
from .backbones.spec import StageSpec, block_split, spec_for
from .delta import resolve_init
from .devices import own_dtype, placement
from .errors import PatchError
from .metrics import count_params, tensor_bytes
from .patch import (
    CLASSIFICATION,
    Patch,
    PatchConfig,
    StageShape,
    check_head,
    check_name,
    check_tensors,
    class_labels,
    fingerprint,
    read_patch,
    write_patch,
)
from .preprocess import Preprocess, size_limit
from .routing import delta_fn, group_rows, mixed_stage, scatter_rows

BASE = "__base__"
"""Name that routes a sample to the base task (the backbone's own head)."""


class PatchedModel(nn.Module):
    """A frozen backbone plus named patches.

    Args:
        backbone: the pretrained model; its parameters get ``requires_grad=False`` and it is put
            in eval mode, nothing else about it changes.
        spec: how to see it as stages (default: the registered spec of its type).
        name: the backbone's name in patch configs (default: what ``load_backbone`` recorded).
    """

    def __init__(self, backbone: nn.Module, spec: StageSpec | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.spec = spec if spec is not None else spec_for(backbone)
        self.backbone_name = name or backbone_name(backbone)
        self.preprocess: Preprocess = default_preprocess(backbone)
        self.patches = nn.ModuleDict()
        self.active: str | None = None
        probe = check_spec(self.backbone, self.spec, self.preprocess.size)  # raises SpecError
        self._shapes = [StageShape(*shape) for shape in probe]
        # resolved once: slice stages are views built per lookup, and forward runs them often
        self._stages = tuple(self.spec.stage_module(self.backbone, s)
                             for s in range(self.spec.num_stages))
        self._head: nn.Linear = self.spec.head_module(self.backbone)
        self._fingerprint: str | None = None
        self.max_image_size: int | None = None
        """Largest ``preprocess.size`` a loaded patch may ask for; ``None``: ``size_limit`` of
        the backbone's own size (the CLI's ``--max-image-size`` sets it)."""

    # ----------------------------------------------------------------- structure
    @property
    def num_stages(self) -> int:
        return len(self._stages)

    @property
    def stage_names(self) -> list[str]:
        return self.spec.stage_names()

    @property
    def fingerprint(self) -> str:
        """Hash of the backbone's weights and buffers (computed once; they never change)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.backbone)
        return self._fingerprint

    @property
    def base_head(self) -> nn.Linear:
        """The backbone's own classifier: the base task's head, frozen like the rest of it."""
        return self._head

    @property
    def feature_width(self) -> int:
        """Width of the pooled features every task head reads."""
        return self._head.in_features

    @property
    def base_classes(self) -> int:
        """How many classes the base task has."""
        return self._head.out_features

    @property
    def base_class_names(self) -> list[str] | None:
        """The base task's class names where its weights have them (a named set such as
        ``cifar10`` or ``imagenet``, or a factory's ``deltapatch_class_names``), else None."""
        return base_class_names(self.backbone, self.base_classes)

    @property
    def base_labels(self) -> list[str]:
        """The base task's label of each class: its name, else its index as text."""
        return class_labels(self.base_class_names, self.base_classes)

    def stage_shapes(self) -> list[StageShape]:
        """Channels in/out and sub-block count per stage, measured by the spec check's probe."""
        return list(self._shapes)

    def resolve_stages(self, stages: int | str | Sequence[int | str]) -> list[int]:
        """Δ(n) as an int (the last n stages), or explicit 0-based indices / stage names."""
        n = self.num_stages
        if isinstance(stages, int):
            if not 0 <= stages <= n:
                raise ValueError(f"stages={stages}: this backbone has {n} stages (0..{n})")
            return list(range(n - stages, n))
        items = [stages] if isinstance(stages, str) else list(stages)
        out = []
        for s in items:
            if isinstance(s, str):
                if s not in self.stage_names:
                    raise ValueError(f"unknown stage '{s}'; stages are {self.stage_names}")
                s = self.stage_names.index(s)
            if not 0 <= int(s) < n:
                raise ValueError(f"stage index {s} out of range 0..{n - 1} "
                                 f"({', '.join(self.stage_names)})")
            out.append(int(s))
        return sorted(set(out))

    # ----------------------------------------------------------------- patches
    def add_patch(self, name: str, num_classes: int, stages: int | Sequence[int | str] = 1, *,
                  gate: str = "delta", norm: str = "output", reduction: int = 4,
                  init: str | None = None, class_names: Sequence[str] | None = None,
                  preprocess: Preprocess | None = None, method: str = "delta",
                  task: str = CLASSIFICATION, options: dict | None = None) -> Patch:
        """Add a new, randomly initialised patch for a ``num_classes``-way task.

        ``stages`` is Δ(n): an int for the last n stages (0 gives a head-only patch, the
        FC baseline), or a list of 0-based stage indices or names. ``gate`` and ``norm`` select
        the Table 8 ablations (see :class:`~deltapatch.delta.DeltaStage`); ``reduction`` is the
        Δ-module's second width C/r. ``init="base"`` starts the patch as exactly the base
        network, ``"random"`` is the paper's start, ``None`` the measured default for the gate
        (:func:`~deltapatch.delta.resolve_init`, docs/INIT.md). ``task`` names the head kind
        (:data:`~deltapatch.patch.HEADS`; dense heads: :func:`deltapatch.dense.add_dense_patch`),
        sized by ``options``.
        """
        self._check_new_name(name)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        config = PatchConfig(
            name=name, num_classes=int(num_classes), stages=self.resolve_stages(stages),
            backbone=self.backbone_name, fingerprint=self.fingerprint,
            preprocess=preprocess or self.preprocess, gate=gate, norm=norm, reduction=reduction,
            method=method, init=resolve_init(init, gate, family_init(self.backbone_name)),
            class_names=list(class_names) if class_names is not None else None,
            task=task, options=dict(options or {}),
        )
        patch = self._placed(Patch(config, self.stage_shapes(), self.feature_width))
        self.patches[name] = patch.train(self.training)
        return patch

    def _check_new_name(self, name: str) -> None:
        check_name(name)
        if name in self.patches:
            raise PatchError(f"a patch named '{name}' exists; remove_patch('{name}') first")

    def _placed(self, patch: Patch) -> Patch:
        """``patch`` on the backbone's device and floating dtype, as a PEFT adapter follows its
        base layer: a patch added or loaded after ``model.to(...)`` runs where the model runs."""
        device, dtype = placement(self.backbone)
        return patch.to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        """Where the backbone (and so every patch) lives."""
        return placement(self.backbone)[0]

    def _apply(self, fn, recurse: bool = True):  # what .to(), .cuda(), .half() all run
        self.fingerprint  # of the weights as loaded: a later cast must not change what fits
        return super()._apply(fn, recurse)

    def get_patch(self, name: str) -> Patch:
        if name not in self.patches:
            known = ", ".join(self.patches) or "none"
            raise PatchError(f"no patch named '{name}' (loaded: {known})")
        return self.patches[name]

    def remove_patch(self, name: str) -> None:
        self.get_patch(name)
        del self.patches[name]
        if self.active == name:
            self.active = None

    def set_patch(self, name: str | None) -> None:
        """Make ``name`` the patch that ``model(x)`` uses; ``None`` serves the base task."""
        if name is not None and name != BASE:
            self.get_patch(name)
        self.active = None if name == BASE else name

    @contextmanager
    def disable_patch(self) -> Iterator[None]:
        """Serve the base task inside the block, whatever patch is active."""
        active, self.active = self.active, None
        try:
            yield
        finally:
            self.active = active

    def save_patch(self, name: str, path: str | Path) -> Path:
        """Write patch ``name`` as a small folder (config JSON + safetensors), atomically."""
        patch = self.get_patch(name)
        patch.config.trainable_params = self.trainable_parameters(name)
        return write_patch(path, patch.config, patch.state_dict())

    def load_patch(self, path: str | Path, name: str | None = None) -> str:
        """Load a patch folder; returns its name. Refused, with the model unchanged, if it was
        made for another backbone or its files are corrupt or do not match its config."""
        config, tensors = read_patch(path)
        return self.attach_patch(config, tensors, name)

    def attach_patch(self, config: PatchConfig, tensors: dict[str, Tensor],
                     name: str | None = None) -> str:
        """Build a patch from a checked config and its tensors and add it (what ``load_patch``
        and the method loaders share); every check runs before the model changes."""
        self.check_fits(config)
        config.name = name or config.name
        self._check_new_name(config.name)
        try:
            config.stages = self.resolve_stages(config.stages)
        except ValueError as err:
            raise PatchError(f"patch config does not fit this backbone: {err}") from None
        check_head(config, tensors, self.feature_width)
        patch = Patch(config, self.stage_shapes(), self.feature_width)
        check_tensors(patch, tensors)
        patch.load_state_dict(tensors)
        self.patches[config.name] = self._placed(patch).train(self.training)
        return config.name

    def check_fits(self, config: PatchConfig) -> None:
        """Refuse a task trained on another backbone or other weights, or one whose input size
        costs more than this backbone can use (``max_image_size``)."""
        native = default_preprocess(self.backbone).size
        limit = self.max_image_size or size_limit(native)
        if config.preprocess.size > limit:
            raise PatchError(
                f"patch '{config.name}' asks for {config.preprocess.size} px inputs, over the "
                f"limit of {limit} px for this {native} px backbone; if you trust the patch, "
                f"pass --max-image-size {config.preprocess.size}")
        if config.backbone != self.backbone_name or config.fingerprint != self.fingerprint:
            raise PatchError(
                f"patch '{config.name}' was made for backbone '{config.backbone}' with weights "
                f"fingerprint {config.fingerprint}; this model is '{self.backbone_name}' with "
                f"{self.fingerprint}. Load it onto the backbone and weights it was trained on.")

    # ----------------------------------------------------------------- parameters
    def trainable_parameters(self, name: str) -> int:
        """Number of parameters patch ``name`` trains (its Δ-stages, norms and head)."""
        return count_params(self.get_patch(name), trainable=True)

    def patch_bytes(self, name: str) -> int:
        """Bytes of the patch's tensors (what its safetensors file stores, less the header)."""
        return tensor_bytes(self.get_patch(name).state_dict().values())

    def print_trainable_parameters(self, name: str | None = None) -> None:
        name = name or self.active
        if name is None:
            raise PatchError("no patch given and none active")
        total = count_params(self.backbone) + count_params(self.get_patch(name))
        n = self.trainable_parameters(name)
        print(f"trainable params: {n:,} || all params: {total:,} || "
              f"trainable%: {100 * n / total:.4f}")

    def train(self, mode: bool = True) -> PatchedModel:
        """Patches follow ``mode``; the backbone stays in eval mode (its statistics are sacred)."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, patch: str | None = None,
                patches: Sequence[str] | None = None) -> Tensor:
        """Logits for the base task, one patch, or one task per sample.

        With ``patches`` (one name per row, ``"__base__"`` for the base task) rows are routed in
        one pass: shared stages run once for all rows. Heads of different sizes give a tensor
        padded to the widest head with ``-inf``, so ``argmax`` and ``softmax`` stay correct.
        """
        if patches is not None:
            if len(patches) != x.shape[0]:
                raise ValueError(f"{len(patches)} patch names for a batch of {x.shape[0]}")
            return self._routed(x, group_rows(list(patches), BASE, x.device))
        name = patch if patch is not None else self.active
        if name is None or name == BASE:
            with own_dtype(x.device):
                return self.backbone(x)
        return self._routed(x, group_rows([name] * x.shape[0], name, x.device))

    def features(self, x: Tensor, patch: str | None = None) -> Tensor:
        """Pre-logit features (the head's input) of the base path or of one patch."""
        name = patch or BASE
        return self._routed(x, group_rows([name] * x.shape[0], name, x.device), head=False)

    def lambdas(self, x: Tensor, patch: str | None = None) -> dict[int, Tensor]:
        """Λ per patched stage: ``{stage index: (N, k(k+1)/2)}`` in [0, 1] for the Δ gate."""
        name = patch or self.active
        if name is None:
            raise PatchError("lambdas() needs a patch: pass patch=NAME or set_patch(NAME)")
        record: dict[str, dict[int, Tensor]] = {}
        self._routed(x, group_rows([name] * x.shape[0], name, x.device), record=record)
        return record.get(name, {})

    def stage_input(self, x: Tensor, stage: int) -> Tensor:
        """The frozen activation entering stage ``stage`` (after its transition; ``num_stages``
        gives the last stage's output). A patch whose Δ-stages all lie at or after ``stage``
        sees exactly this tensor, so it can be computed once per image and cached
        (:mod:`deltapatch.cache`); ``forward`` itself runs ``forward_from(stage_input(x, s), s)``."""
        if not 0 <= stage <= self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages}")
        return self.spec.stage_input(self.backbone, x, stage, self._run_stage)

    def _run_stage(self, s: int, h: Tensor) -> Tensor:
        return self._stages[s](h)

    def first_patched_stage(self, names: Sequence[str]) -> int:
        """The earliest stage any of ``names`` patches (``num_stages`` for head-only / base)."""
        return min((s for n in set(names) if n != BASE for s in self.get_patch(n).config.stages),
                   default=self.num_stages)

    def first_residual(self, h: Tensor, stage: int) -> Tensor:
        """F_1(h_0): the residual branch of ``stage``'s first sub-block on its input ``h``.

        In a Δ-stage it depends on h_0 and frozen weights only (the Δ-weights act on the skips),
        so it is as cacheable as h_0 itself; for ResNet-18's last stage it is ~40% of the stage.
        """
        block = next(iter(self._stages[stage]))
        return block_split(block).residual(block, h)

    def forward_from(self, h: Tensor, start: int, patch: str | None = None,
                     patches: Sequence[str] | None = None, head: bool = True,
                     first_residual: Tensor | None = None) -> Tensor:
        """Finish a forward from ``h = stage_input(x, start)``: the routed path of ``forward``.

        This is what cached-feature training runs; it refuses a ``start`` past a patched stage
        because that stage's Δ-module would silently be skipped. ``first_residual`` (from
        :meth:`first_residual`) skips recomputing F_1(h_0); it needs every row on one patch
        that patches stage ``start``.
        """
        one = patch or self.active or BASE
        names = list(patches) if patches is not None else [one] * len(h)
        first = self.first_patched_stage(names if patches is not None else [one])  # 0 rows too
        if start > first:
            raise ValueError(f"forward_from(start={start}) would skip patched stage {first}")
        if first_residual is not None and (len(set(names)) > 1 or first != start
                                           or start >= self.num_stages):
            raise ValueError("first_residual needs all rows on one patch that patches stage "
                             f"{start}")
        groups = group_rows(names, BASE if patches is not None else one, h.device)
        return self._finish(h, start, groups, head, first_residual=first_residual)

    def fanout(self, x: Tensor, patches: Sequence[str]) -> dict[str, Tensor]:
        """Logits of every task in ``patches`` on every row: ``{name: (N, classes)}``.

        Serving several tasks on one image should not pay for the frozen trunk once per task.
        The base chain runs once from the earliest patched stage (stage inputs h_s kept); each
        patch starts from the h_s of its own first stage, and patches starting at the same stage
        share F_1(h_s), the first block's residual branch (frozen weights, so task-independent).
        Every result equals ``self(x, patch=name)`` bit for bit: the same modules run on the
        same tensors. ``"__base__"`` alone is ``backbone(x)`` itself; next to patches it is the
        spec path's head, which :func:`~deltapatch.backbones.check.check_spec` proves equal to
        ``backbone(x)`` (tests/test_fanout.py checks it on every family at several batch sizes).
        Names repeated in ``patches`` are computed once.
        """
        names = list(dict.fromkeys(patches))
        for n in names:
            if n != BASE:
                self.classifier(n)
        if not names:
            return {}
        if names == [BASE]:
            return {BASE: self.backbone(x)}
        n_stages = self.num_stages
        first = {n: self.first_patched_stage([n]) for n in names}
        start = min(first.values())
        stop = max(first.values())
        hs = {start: self.stage_input(x, start)}
        for s in range(start, stop):  # the base chain, only as far as some task needs it
            hs[s + 1] = self.spec.run_from(self.backbone, hs[s], s, s + 1, self._run_stage)
        feats = (self.spec.features_from(self.backbone, hs[n_stages], n_stages)
                 if stop == n_stages else None)
        starts = [first[n] for n in names if first[n] < n_stages]
        shared = {s: self.first_residual(hs[s], s) for s in set(starts) if starts.count(s) > 1}
        out: dict[str, Tensor] = {}
        for n in names:
            if first[n] == n_stages:  # the base task and head-only patches: features are shared
                out[n] = (self._head if n == BASE else self.classifier(n).head)(feats)
                continue
            groups = {n: torch.arange(x.shape[0], device=x.device)}
            out[n] = self._finish(hs[first[n]], first[n], groups,
                                  first_residual=shared.get(first[n]))
        return out

    def _routed(self, x: Tensor, groups: dict[str, Tensor], head: bool = True,
                record: dict[str, dict[int, Tensor]] | None = None) -> Tensor:
        if set(groups) == {BASE} and head:
            return self.backbone(x)
        start = self.first_patched_stage(list(groups))
        return self._finish(self.stage_input(x, start), start, groups, head, record)

    def _finish(self, h: Tensor, start: int, groups: dict[str, Tensor], head: bool = True,
                record: dict[str, dict[int, Tensor]] | None = None,
                first_residual: Tensor | None = None) -> Tensor:
        """Stages ``start``.. on ``h`` (stage ``start``'s input), routed per row group: each stage
        runs once for all rows not patched there, and per patch only on that patch's rows."""
        patches = {n: self.classifier(n) for n in groups if n != BASE}
        run_stage = self._stage_runner(patches, groups, start, record, first_residual)
        feats = self.spec.features_from(self.backbone, h, start, run_stage)
        if not head:
            return feats
        heads: dict = {n: patches[n].head for n in patches}
        if BASE in groups:  # the base head on every row, as the backbone runs it: on fewer rows
            base = self._head(feats)  # a matmul may take another kernel and round otherwise
            heads[BASE] = lambda _rows, idx=groups[BASE]: base.index_select(0, idx)
        return scatter_rows(feats, groups, heads, fill=float("-inf"))

    def _stage_runner(self, patches: dict[str, Patch], groups: dict[str, Tensor], start: int,
                      record: dict | None = None, first_residual: Tensor | None = None):
        """``run_stage(s, h)`` for a spec walk: the frozen stage where no patch has a Δ-stage,
        else the routed Δ-stage."""
        def run_stage(s: int, h: Tensor) -> Tensor:
            deltas = {n: p.delta(s) for n, p in patches.items() if p.delta(s) is not None}
            if not deltas:
                return self._stages[s](h)
            r1 = first_residual if s == start else None
            return self._stage(h, s, self._stages[s], deltas, groups, record, r1)
        return run_stage

    def classifier(self, name: str) -> Patch:
        """Patch ``name``, refused if its head is not a classifier: a detection or
        segmentation patch answers through :mod:`deltapatch.dense`, not through logits."""
        patch = self.get_patch(name)
        if patch.config.task != CLASSIFICATION:
            raise PatchError(f"patch '{name}' is a {patch.config.task} patch; run it with "
                             "deltapatch.dense.DenseTask (or `deltapatch predict`), not as a "
                             "classifier")
        return patch

    def pyramid(self, x: Tensor, patch: str | None = None) -> dict[str, Tensor]:
        """Every stage's output ``{stage name: (N, C_s, H_s, W_s)}`` in stage order, for the base
        network or one patch (any kind): the multi-scale features a detector or segmenter reads.
        The base pyramid is the frozen stages' own outputs; a patch replaces only its Δ-stages."""
        name = patch or BASE
        groups = group_rows([name] * x.shape[0], name, x.device)
        runner = None
        if name != BASE:
            runner = self._stage_runner({name: self.get_patch(name)}, groups, 0)
        outs = self.spec.pyramid(self.backbone, x, runner)
        return dict(zip(self.stage_names, outs, strict=True))

    def _stage(self, h: Tensor, s: int, stage: nn.Module, deltas: dict, groups: dict,
               record: dict | None, first_residual: Tensor | None = None) -> Tensor:
        """One patch on every row: its Δ-stage; rows of several tasks: one pass of the stage's
        blocks with a per-row Λ (:func:`~deltapatch.routing.mixed_stage`)."""
        blocks = list(stage)
        if len(groups) == 1 and len(deltas) == 1:
            (n, d), = deltas.items()
            return delta_fn(d, blocks, s, record.setdefault(n, {}) if record is not None
                            else None, first_residual)(h)
        return mixed_stage(h, s, blocks, deltas, groups, record, first_residual)
