"""ONNX export of a patched model, and its verification in onnxruntime against PyTorch.

One graph serves every task it was exported with: its outputs are named ``"__base__"`` and each
patch's name, one image input with a dynamic batch size. With patches the graph is the library's
fan-out (:meth:`~deltapatch.PatchedModel.fanout`): the frozen trunk up to the earliest patched
stage runs once per image, then each patch's own stages. Class names, preprocessing and the
backbone's fingerprint are written as ONNX metadata, so a consumer needs nothing else.

Exporter: torch's TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17; it
traces the routed forward into a static graph (the routing is decided by the task list at export
time, not per input). ``onnx`` and ``onnxruntime`` are an optional extra (``pip install
'deltapatch[onnx]'``).

Devices: the graph is traced wherever the model is (the graph itself names no device), and
:func:`verify_onnx` runs it on onnxruntime's CPU or CUDA execution provider (``onnxruntime-gpu``)
against the PyTorch model on its own device. Inputs go to onnxruntime as host numpy arrays and
outputs are compared on the host. On a GPU the PyTorch reference runs with TF32 off, and so does
onnxruntime's CUDA provider: both then compute in float32, which the tolerances below assume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .devices import placement, to_device
from .errors import DeltaPatchError
from .model import BASE, PatchedModel

OPSET = 17
MIN_OPSET = 10
"""The routed forward slices Λ with a step, which ONNX's Slice takes from opset 10 on."""
try:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # a torch that moved it: the opset we test
    MAX_OPSET = OPSET
INPUT = "image"
BASE_TOLERANCE = 1e-5
PATCH_TOLERANCE = 1e-4
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
"""``verify --provider``: onnxruntime's execution provider for each name."""


class TaskGraph(nn.Module):
    """The module that is exported: image batch in, one logits tensor per task out."""

    def __init__(self, model: PatchedModel, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if len(self.names) == 1:  # one task alone: its own forward, nothing else in the graph
            return (self.model(x, patch=self.names[0]),)
        out = self.model.fanout(x, self.names)
        return tuple(out[n] for n in self.names)


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DeltaPatchError("ONNX export needs onnx and onnxruntime: pip install "
                              "'deltapatch[onnx]'") from None
    return onnx, onnxruntime


def task_names(model: PatchedModel, only: bool = False) -> list[str]:
    """The graph's outputs: the base task, then every loaded patch (``only``: the patches)."""
    names = list(model.patches)
    if only and not names:
        raise DeltaPatchError("--only exports patches alone, but no --patch was given")
    return names if only else [BASE, *names]


def metadata(model: PatchedModel, names: Sequence[str]) -> dict[str, str]:
    """What a consumer needs besides the graph: per output its classes, and the preprocessing."""
    tasks = {}
    for n in names:
        if n == BASE:
            tasks[n] = {"num_classes": model.base_classes, "class_names": model.base_class_names,
                        "preprocess": model.preprocess.to_dict()}
        else:
            cfg = model.get_patch(n).config
            tasks[n] = {"num_classes": cfg.num_classes, "class_names": cfg.class_names,
                        "preprocess": cfg.preprocess.to_dict(), "method": cfg.method,
                        "stages": cfg.stages}
    from . import __version__
    return {"deltapatch.version": __version__, "deltapatch.backbone": model.backbone_name,
            "deltapatch.fingerprint": model.fingerprint, "deltapatch.input": INPUT,
            "deltapatch.tasks": json.dumps(tasks),
            "deltapatch.input_layout": "NCHW float32, RGB, resized to preprocess.size, then "
                                       "(x / 255 - mean) / std"}


def check_opset(opset: int) -> None:
    """Refuse an opset torch's exporter cannot write, or one too old for deltapatch's graphs,
    before any model is built."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DeltaPatchError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET} (the opsets this "
                              f"torch.onnx exports and deltapatch's graphs need), got {opset}")


def export_onnx(model: PatchedModel, out: str | Path, names: Sequence[str],
                size: int | None = None, opset: int = OPSET) -> Path:
    """Write ``model``'s tasks ``names`` as one ONNX graph at ``out`` (atomically).

    Raises:
        DeltaPatchError: the opset is out of range, or torch.onnx / the ONNX checker refused
            the model (one line; nothing is written).
    """
    check_opset(opset)
    onnx, _ = _require_onnx()
    out = Path(out)
    size = size or model.preprocess.size
    graph = TaskGraph(model.eval(), names).eval()
    example = torch.zeros(2, 3, size, size, device=placement(model)[0])
    dynamic = {INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad(), \
                _one_line(f"torch.onnx cannot export this model at opset {opset}",
                          (RuntimeError, onnx.checker.ValidationError)):
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow
            torch.onnx.export(graph, (example,), str(tmp), input_names=[INPUT],
                              output_names=list(names), dynamic_axes=dynamic,
                              opset_version=opset, dynamo=False)
            proto = onnx.load(str(tmp))
            for key, value in metadata(model, names).items():
                proto.metadata_props.add(key=key, value=value)
            onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _one_line(what: str, kinds: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A third-party error of ``kinds`` (torch.onnx's, onnxruntime's) as one DeltaPatchError
    line: their messages run to pages (a whole traced graph) and name no fix of ours."""
    try:
        yield
    except DeltaPatchError:
        raise
    except kinds as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", lines[0] if lines else "")
        raise DeltaPatchError(f"{what}: {type(err).__name__}: {text[:300]}") from None


@dataclass
class OutputCheck:
    """One task compared; ``problem`` says why it could not be compared (not in the graph,
    another shape), which fails the check."""

    name: str
    max_abs_diff: float
    scale: float
    tolerance: float
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.max_abs_diff <= self.tolerance * self.scale


def session_providers(provider: str = "cpu", device_id: int = 0) -> list:
    """onnxruntime's ``providers`` argument for ``provider`` (cpu or cuda). CUDA needs the
    ``onnxruntime-gpu`` build; it runs with TF32 off (full float32, as the tolerances assume)
    and leaves to the CPU only the nodes it has no kernel for."""
    _, ort = _require_onnx()
    if provider not in PROVIDERS:
        raise DeltaPatchError(f"provider '{provider}': choose from {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise DeltaPatchError(f"--provider {provider} needs onnxruntime's {PROVIDERS[provider]}, "
                              f"which this onnxruntime lacks (it has {', '.join(available)}): "
                              "pip install onnxruntime-gpu, or use --provider cpu")
    if provider == "cpu":
        return [PROVIDERS["cpu"]]
    return [(PROVIDERS["cuda"], {"device_id": str(device_id), "use_tf32": "0"}), PROVIDERS["cpu"]]


def open_session(path: str | Path, provider: str = "cpu", device_id: int = 0):
    """An onnxruntime session on ``provider``; refused when onnxruntime quietly fell back to the
    CPU (it does so when the CUDA or cuDNN libraries it needs do not load)."""
    _, ort = _require_onnx()
    providers = session_providers(provider, device_id)
    with _one_line(f"onnxruntime cannot load {path} (is it a graph written by deltapatch "
                   "export?)", (Exception,)):
        session = ort.InferenceSession(str(path), providers=providers)
    if PROVIDERS[provider] not in session.get_providers():
        raise DeltaPatchError(f"onnxruntime could not start {PROVIDERS[provider]} (its CUDA / "
                              "cuDNN libraries did not load; see onnxruntime's warning above): "
                              "install the onnxruntime-gpu build that matches them, or use "
                              "--provider cpu")
    return session


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for the block on a CUDA ``device`` (its matmuls and cuDNN convs otherwise round
    inputs to 10 mantissa bits, far beyond the 1e-5 the base output is held to); restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def verify_onnx(path: str | Path, model: PatchedModel, x: Tensor,
                provider: str = "cpu") -> list[OutputCheck]:
    """Run the graph in onnxruntime on ``provider`` (cpu or cuda) on ``x`` and compare every
    output with PyTorch on the model's own device.

    An output passes when its largest absolute difference is at most the tolerance (1e-5 for
    the base task, 1e-4 for patches) times ``max(1, max |logit|)``: float32 rounding grows with
    the size of the logits, so a fixed absolute bound would fail large logits that match to 7
    significant digits. An output of another shape or a non-finite one fails with its
    ``problem`` said; :func:`absent` adds the tasks the graph lacks.

    Raises:
        DeltaPatchError: the file is no graph onnxruntime loads, its input is not one float32
            image batch, it has outputs for patches not given, or it fails to run on ``x``.
    """
    device = placement(model)[0]
    session = open_session(path, provider, device.index or 0)  # the same GPU as the model
    image = _graph_input(session, path)
    names = [o.name for o in session.get_outputs()]
    unknown = [n for n in names if n != BASE and n not in model.patches]
    if unknown:
        raise DeltaPatchError(f"{path} has outputs {unknown} for patches not given with --patch")
    with _one_line(f"onnxruntime cannot run {path} on a batch of shape {tuple(x.shape)}",
                   (Exception,)):
        got = session.run(None, {image: x.detach().cpu().numpy()})
    with torch.inference_mode(), full_fp32(device):
        want = [w.float().cpu() for w in TaskGraph(model.eval(), names)(to_device(x, device))]
    return [_compare(n, torch.from_numpy(g), w) for n, g, w in zip(names, got, want, strict=True)]


def absent(checks: Sequence[OutputCheck], wanted: Sequence[str]) -> list[OutputCheck]:
    """A failing check for each task of ``wanted`` that the graph has no output for."""
    names = [c.name for c in checks]
    problem = f"not in the graph (its outputs: {', '.join(names)})"
    return [OutputCheck(n, 0.0, 1.0, PATCH_TOLERANCE, problem) for n in wanted if n not in names]


def _graph_input(session, path: str | Path) -> str:
    """The name of the graph's one float32 image input (N, 3, H, W), or one line saying what
    the graph takes instead."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        took = ", ".join(f"'{i.name}' {i.type} {list(i.shape)}" for i in inputs) or "nothing"
        raise DeltaPatchError(f"{path} takes {took}; a graph of deltapatch export takes one "
                              "float32 image batch (N, 3, H, W)")
    return inputs[0].name


def _compare(name: str, got: Tensor, want: Tensor) -> OutputCheck:
    tolerance = BASE_TOLERANCE if name == BASE else PATCH_TOLERANCE
    if got.shape != want.shape:
        return OutputCheck(name, 0.0, 1.0, tolerance, f"shape {tuple(got.shape)} in the graph, "
                                                      f"{tuple(want.shape)} in PyTorch")
    if not want.numel():
        return OutputCheck(name, 0.0, 1.0, tolerance)
    if not torch.isfinite(got).all():
        return OutputCheck(name, 0.0, 1.0, tolerance, "NaN or Inf in the graph's output")
    diff = float((got.float() - want).abs().max())
    return OutputCheck(name, diff, max(1.0, float(want.abs().max())), tolerance)
