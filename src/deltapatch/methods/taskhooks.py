"""Task-owned modules that act inside the frozen backbone only while their task runs.

Residual adapters (Rebuffi et al. 2017 series / 2018 parallel) and BN adaptation change what
happens *inside* a network: per-task BatchNorm, 1×1 convs after or beside each 3×3 conv. The
backbone is never edited for that: :class:`TaskModules` registers forward hooks on the backbone's
BatchNorm / conv modules inside :meth:`TaskModules.active` and removes them on exit, so the base
task (``PatchedModel(x)`` → ``backbone(x)``) runs with no hook at all and stays bit-identical.

A hooked BatchNorm returns the task's own BatchNorm (a copy with its own affine and running
statistics, initialised from the base one) applied to the layer's input; the backbone's BN still
runs in eval mode and its buffers never move. This costs one wasted BN per layer, and buys a
base path that is the untouched module's own ``forward``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

ADAPTER_MODES = ("series", "parallel")


def _key(path: str) -> str:
    return path.replace(".", "__")


class SeriesAdapter(nn.Module):
    """After a conv: y ↦ y + BN(conv1x1(y)); BN's γ starts at 0, so it starts as the identity.
    The 1×1 keeps the conv's groups: beside a depthwise conv it is a per-channel scale."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        c = conv.out_channels
        self.conv = nn.Conv2d(c, c, 1, groups=conv.groups, bias=False)
        self.bn = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return y + self.bn(self.conv(y))


class ParallelAdapter(nn.Module):
    """Beside a conv: y ↦ y + conv1x1(x) with the conv's stride; zero-initialised. It is a
    trainable centre tap of the k×k kernel, so it keeps the conv's groups too: a depthwise conv
    (MobileNet / EfficientNet blocks, ConvNeXt) gets a per-channel one, not a dense C×C matrix."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride,
                              groups=conv.groups, bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return y + self.conv(x)


ADAPTERS: dict[str, Callable[[nn.Conv2d], nn.Module]] = {
    "series": SeriesAdapter,
    "parallel": ParallelAdapter,
}


def adapted_convs(backbone: nn.Module, stages: list[nn.Module]) -> list[str]:
    """Paths in ``backbone`` of the convs that get an adapter: every k×k conv (k > 1) inside
    ``stages`` (modules, or views for slice stages), i.e. the spatial convs of the residual
    branches: dense 3×3 in a ResNet, depthwise in an inverted-residual block."""
    ids = {id(m) for stage in stages for m in stage.modules()
           if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1}
    paths = [n for n, m in backbone.named_modules() if id(m) in ids]
    if not paths:
        raise ValueError("no k×k conv in the stages to attach residual adapters to")
    return paths


def batchnorms(backbone: nn.Module) -> list[str]:
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class TaskModules(nn.Module):
    """Per-task BatchNorms (copies of ``bn_paths``), adapters on ``conv_paths``, and a head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, bn_paths: list[str],
                 conv_paths: list[str] = (), mode: str | None = None) -> None:
        super().__init__()
        self.bn_paths, self.conv_paths = list(bn_paths), list(conv_paths)
        self.bns = nn.ModuleDict({
            _key(p): copy.deepcopy(backbone.get_submodule(p)).requires_grad_(True)
            for p in self.bn_paths})
        if self.conv_paths and mode not in ADAPTERS:
            raise ValueError(f"adapter mode must be one of {ADAPTER_MODES}, got {mode!r}")
        self.adapters = nn.ModuleDict({
            _key(p): ADAPTERS[mode](backbone.get_submodule(p)) for p in self.conv_paths})
        self.head = head

    @contextmanager
    def active(self, backbone: nn.Module) -> Iterator[None]:
        """Hooks that route ``backbone``'s BNs and adapted convs through this task's modules,
        removed on exit (also on error)."""
        handles = []
        try:
            for p in self.conv_paths:
                adapter = self.adapters[_key(p)]
                handles.append(backbone.get_submodule(p).register_forward_hook(
                    lambda m, inp, out, a=adapter: a(inp[0], out)))
            for p in self.bn_paths:
                bn = self.bns[_key(p)]
                handles.append(backbone.get_submodule(p).register_forward_hook(
                    lambda m, inp, out, b=bn: b(inp[0])))
            yield
        finally:
            for h in handles:
                h.remove()
