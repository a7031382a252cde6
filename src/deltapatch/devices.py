"""Where a model runs and in what precision: one rule for every command and the library.

``resolve_device("auto")`` picks CUDA, then MPS, then the CPU; a device that is not there is a
:class:`DeviceError` (one line, exit 2 on the CLI). The backbone's device and floating dtype are
read off its own tensors (:func:`placement`), so everything the library makes later (patches,
row indices, masks, mean/std) follows the model instead of a global setting.

Precision applies to the patch path only: ``autocast`` around a patched forward and a grad
scaler for fp16. The base task is always ``backbone(x)`` in the backbone's own dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .errors import DeltaPatchError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""What ``--device`` takes (``cuda:N`` is any CUDA index)."""

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}
"""``--precision``: the autocast dtype of the patch path (``None``: no autocast)."""


class DeviceError(DeltaPatchError):
    """A device that is not there or not understood; the message names what is."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available() -> list[str]:
    """The devices this machine has, in ``auto``'s order of preference (cpu last)."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return found + (["mps"] if _mps_available() else []) + ["cpu"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or ``None``): cuda, then mps, then cpu. Anything else must exist here."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device(available()[0])
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device '{spec}' is not understood: use one of "
                          f"{', '.join(DEVICES)}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            raise DeviceError(f"device '{spec}' is not there: this machine has "
                              f"{count} CUDA device(s); available: {', '.join(available())}"
                              " (--device auto picks the best one)")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device '{spec}' is not there; available: "
                              f"{', '.join(available())}")
        return torch.device("mps")
    raise DeviceError(f"device '{spec}' is not supported: use one of {', '.join(DEVICES)}")


def placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of ``module``'s first floating tensor (cpu / float32 for a
    module with none): what anything built beside it must follow."""
    for t in _tensors(module):
        if t.is_floating_point():
            return t.device, t.dtype
    first = next(_tensors(module), None)
    return (first.device if first is not None else torch.device("cpu")), torch.float32


def _tensors(module: nn.Module) -> Iterator[Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DeviceError(f"precision '{precision}': choose from {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (a no-op context for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def own_dtype(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside: the base task runs in the backbone's own dtype even when the caller
    trains or serves patches under autocast, so its answers stay the backbone's to the bit."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler:
    """A scaler that is enabled only for fp16 (bf16 and fp32 need none): ``scale``, ``step``
    and ``update`` then pass through unchanged."""
    enabled = check_precision(precision) == "fp16"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``. From the host to a GPU the copy goes through pinned memory and does
    not block the host (the next batch is prepared while this one is copied); on the same
    device nothing is copied."""
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (timings need it; the CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
