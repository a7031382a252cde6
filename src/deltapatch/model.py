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

from . import execution
from .backbones.catalog import (
    backbone_name,
    base_class_names,
    default_preprocess,
    family_init,
)
from .backbones.check import check_spec
from .backbones.spec import StageSpec, spec_for
from .delta import resolve_init
from .devices import placement
from .errors import PatchError
from .execution import BaseTask, Record, Task, Trunk
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
from .routing import group_rows

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
        self._stages = tuple(self.spec.stage_module(self.backbone, s)
                             for s in range(self.spec.num_stages))
        self._trunk = Trunk(self.backbone, self.spec, self._stages)
        self._head: nn.Linear = self.spec.head_module(self.backbone)
        self._base = BaseTask(self._head)
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
        _ = self.fingerprint  # of the weights as loaded: a later cast must not change what fits
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
    def task(self, name: str) -> Task:
        """The base task (``"__base__"``) or patch ``name``, as a forward runs it."""
        return self._base if name == BASE else self.get_patch(name)

    def logit_task(self, name: str) -> Task:
        """Task ``name`` if it answers with logits: the base task or a classification patch.
        A detection or segmentation patch answers through :mod:`deltapatch.dense` instead."""
        task = self.task(name)
        kind = task.config.task if isinstance(task, Patch) else CLASSIFICATION
        if kind != CLASSIFICATION:
            raise PatchError(f"patch '{name}' is a {kind} patch; run it with "
                             "deltapatch.dense.DenseTask (or `deltapatch predict`), not as a "
                             "classifier")
        return task

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
            return self._routed(x, list(patches), empty=BASE)
        name = patch if patch is not None else self.active or BASE
        return self._routed(x, [name] * x.shape[0], empty=name)

    def features(self, x: Tensor, patch: str | None = None) -> Tensor:
        """Pre-logit features (the head's input) of the base path or of one patch."""
        name = patch or BASE
        return self._routed(x, [name] * x.shape[0], empty=name, head=False)

    def lambdas(self, x: Tensor, patch: str | None = None) -> dict[int, Tensor]:
        """Λ per patched stage: ``{stage index: (N, k(k+1)/2)}`` in [0, 1] for the Δ gate."""
        name = patch or self.active
        if name is None:
            raise PatchError("lambdas() needs a patch: pass patch=NAME or set_patch(NAME)")
        record: Record = {}
        self._routed(x, [name] * x.shape[0], empty=name, record=record)
        return record.get(name, {})

    def _routed(self, x: Tensor, names: list[str], empty: str, head: bool = True,
                record: Record | None = None) -> Tensor:
        """One forward for rows of any tasks (an empty batch takes task ``empty``'s width)."""
        tasks = {n: self.logit_task(n) for n in dict.fromkeys(names or [empty])}
        return execution.forward(self._trunk, x, names, tasks, head, record)

    def stage_input(self, x: Tensor, stage: int) -> Tensor:
        """The frozen activation entering stage ``stage`` (after its transition; ``num_stages``
        gives the last stage's output). A patch whose Δ-stages all lie at or after ``stage``
        sees exactly this tensor, so it can be computed once per image and cached
        (:mod:`deltapatch.cache`); ``forward`` itself runs ``forward_from(stage_input(x, s), s)``."""
        if not 0 <= stage <= self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages}")
        return self._trunk.stage_input(x, stage)

    def first_patched_stage(self, names: Sequence[str]) -> int:
        """The earliest stage any of ``names`` patches (``num_stages`` for head-only / base)."""
        return execution.first_stage([self.task(n) for n in set(names)], self.num_stages)

    def first_residual(self, h: Tensor, stage: int) -> Tensor:
        """F_1(h_0): the residual branch of ``stage``'s first sub-block on its input ``h``.

        In a Δ-stage it depends on h_0 and frozen weights only (the Δ-weights act on the skips),
        so it is as cacheable as h_0 itself; for ResNet-18's last stage it is ~40% of the stage.
        """
        return self._trunk.first_residual(h, stage)

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
        tasks = {n: self.logit_task(n) for n in groups}
        return execution.run_from(self._trunk, h, start, tasks, groups, head,
                                  first_residual=first_residual)

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
        tasks = {n: self.logit_task(n) for n in dict.fromkeys(patches)}
        return execution.fanout(self._trunk, x, tasks)

    def pyramid(self, x: Tensor, patch: str | None = None) -> dict[str, Tensor]:
        """Every stage's output ``{stage name: (N, C_s, H_s, W_s)}`` in stage order, for the base
        network or one patch (any kind): the multi-scale features a detector or segmenter reads.
        The base pyramid is the frozen stages' own outputs; a patch replaces only its Δ-stages."""
        name = patch or BASE
        groups = group_rows([name] * x.shape[0], name, x.device)
        outs = execution.pyramid(self._trunk, x, name, self.task(name), groups)
        return dict(zip(self.stage_names, outs, strict=True))
