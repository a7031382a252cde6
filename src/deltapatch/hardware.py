"""What machine a number was measured on: every report, benchmark and demo states it.

:func:`describe` is the one line a record or report carries; with a device and a precision it
also names the accelerator (GPU model, memory, CUDA and cuDNN versions), because a GPU figure
without the GPU it came from cannot be compared with anything. :func:`device_facts` is the same
as a dict, for JSON records.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .devices import resolve_device


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the OS tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_line() -> str:
    return (f"{cpu_model()}, {cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def cudnn_version() -> str | None:
    """cuDNN as ``major.minor.patch`` (torch reports 90100 for 9.1.0), or None without it."""
    v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not v:
        return None
    major, rest = divmod(int(v), 10000) if v >= 10000 else divmod(int(v), 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def gpu_facts(device: torch.device) -> dict:
    """Name, memory, compute capability and the CUDA / cuDNN / TF32 settings of a CUDA device:
    what decides its speed and which kernels (hence which rounding) it runs."""
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": cudnn_version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def device_facts(device: str | torch.device | None = None,
                 precision: str | None = None) -> dict:
    """The machine as a dict for JSON records: CPU, torch, Python, and, for a GPU ``device``,
    :func:`gpu_facts`; ``precision`` (fp32/bf16/fp16) when the numbers depend on it. A device
    that is not there raises :class:`~deltapatch.devices.DeviceError`."""
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    facts = {"device": str(dev), "cpu": cpu_model(), "cpus": cpu_count(),
             "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
             "python": platform.python_version()}
    if dev.type == "cuda":
        facts.update(gpu_facts(dev))
    elif dev.type == "mps":
        facts["gpu"] = "Apple MPS"
    if precision is not None:
        facts["precision"] = precision
    return facts


def describe(device: str | torch.device | None = None, precision: str | None = None) -> str:
    """One line: CPU model and count, torch version and threads, Python version; then the GPU
    (name, memory, CUDA, cuDNN) when ``device`` is one, and ``precision`` when given. Without
    arguments it is the CPU line every existing record carries, unchanged."""
    line = _cpu_line()
    facts = device_facts(device, precision) if device is not None else {}
    if "gpu_memory_gib" in facts:
        line += (f"; GPU {facts['gpu']} ({facts['gpu_memory_gib']} GiB, sm "
                 f"{facts['compute_capability']}), CUDA {facts['cuda']}, cuDNN {facts['cudnn']}")
    elif "gpu" in facts:
        line += f"; GPU {facts['gpu']}"
    if precision is not None:
        line += f"; precision {precision}"
    return line
