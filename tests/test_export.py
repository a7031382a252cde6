"""ONNX export: every exported graph runs in onnxruntime and matches PyTorch on every output (the
base task to 1e-5 of the logits' scale), with or without patches in the graph; the batch size is
dynamic and the metadata says what a consumer needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deltapatch as dp
from deltapatch.export import export_onnx, task_names, verify_onnx

ort = pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra")
onnx = pytest.importorskip("onnx", reason="needs the 'onnx' extra")

FACTORY = str(Path(__file__).resolve().parents[1] / "examples" / "my_cnn.py") + ":build"
FAMILIES = [("cifar_resnet20", 32), ("resnet18", 64), ("efficientnet_lite0", 64), (FACTORY, 32)]


def _model(name: str, size: int) -> dp.PatchedModel:
    torch.manual_seed(0)
    model = dp.PatchedModel(dp.load_backbone(name)).eval()
    model.preprocess = model.preprocess.with_size(size)
    model.add_patch("one", 5, stages=1, class_names=list("abcde"))
    model.add_patch("all", 3, stages=model.num_stages)
    with torch.no_grad():  # trained-looking patches: every tensor away from its init
        for t in (*model.get_patch("one").state_dict().values(),
                  *model.get_patch("all").state_dict().values()):
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return model


def _run(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": x.numpy()}), strict=True))


@pytest.mark.parametrize("name,size", FAMILIES, ids=["cifar_resnet", "resnet18", "lite0", "own"])
def test_every_graph_verifies_and_keeps_the_base_output(name, size, tmp_path):
    model = _model(name, size)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    base_only = export_onnx(model, tmp_path / "base.onnx", [dp.BASE])
    fan = export_onnx(model, tmp_path / "fan.onnx", task_names(model))
    only = export_onnx(model, tmp_path / "only.onnx", ["one"])
    for path in (base_only, fan, only):
        checks = verify_onnx(path, model, x)
        assert all(c.ok for c in checks), [(c.name, c.max_abs_diff) for c in checks]
    got = _run(fan, x)
    assert list(got) == ["__base__", "one", "all"]
    assert not np.allclose(got["one"][:, :3], got["__base__"][:, :3])  # patches really act
    # the base output with patches in the graph is the base-only graph's to float tolerance
    # (onnxruntime picks kernels per graph, so bit-equality across graphs is not promised)
    assert np.allclose(got["__base__"], _run(base_only, x)["__base__"], rtol=1e-5, atol=1e-5)
    for batch in (1, 5):  # the batch size is dynamic
        y = _run(fan, torch.randn(batch, 3, size, size))
        assert all(v.shape[0] == batch for v in y.values())


def test_metadata_names_classes_and_preprocessing(tmp_path):
    model = _model("cifar_resnet20", 32)
    path = export_onnx(model, tmp_path / "m.onnx", task_names(model))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    tasks = json.loads(meta["deltapatch.tasks"])
    assert tasks["one"]["class_names"] == list("abcde") and tasks["all"]["num_classes"] == 3
    assert tasks["__base__"]["preprocess"]["size"] == 32
    assert meta["deltapatch.fingerprint"] == model.fingerprint


@pytest.fixture
def saved(tmp_path) -> tuple[list[str], Path]:
    """Backbone flags for saved CIFAR ResNet-20 weights, and the folder holding patches p (as
    trained) and p2 (the same name, other weights)."""
    return _saved(tmp_path)


def _saved(tmp_path: Path) -> tuple[list[str], Path]:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(dp.load_backbone("cifar_resnet20").state_dict(), str(tmp_path / "w.safetensors"))
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", tmp_path / "w.safetensors"))
    model.add_patch("p", 4, stages=1)
    model.save_patch("p", tmp_path / "p")
    model.get_patch("p").head.bias.data += 1.0
    model.save_patch("p", tmp_path / "p2")
    return ["--backbone", "cifar_resnet20", "--weights", str(tmp_path / "w.safetensors")], tmp_path


def test_export_and_verify_from_the_cli(saved, capsys):
    from deltapatch.cli import main

    bb, tmp_path = saved
    out = str(tmp_path / "m.onnx")
    assert main(["export", *bb, "--patch", str(tmp_path / "p"), "--out", out]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["__base__", "p"]
    assert main(["verify", *bb, "--patch", str(tmp_path / "p"), "--onnx", out, "-n", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    # a graph checked against other weights than it was exported with fails the check: exit 1
    assert main(["verify", *bb, "--patch", str(tmp_path / "p2"), "--onnx", out, "-n", "4"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["outputs"]["__base__"]["ok"]


def test_cli_device_and_provider_are_reported_and_checked(saved, capsys):
    """``--device cpu --provider cpu`` verifies and says so; a GPU that is not there, a provider
    this onnxruntime lacks, or ``--provider`` without ``--onnx``: one line, exit 2, no file."""
    from deltapatch.cli import main

    bb, tmp_path = saved
    out, patch = str(tmp_path / "m.onnx"), ["--patch", str(tmp_path / "p")]
    assert main(["export", *bb, *patch, "--out", out, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["verify", *bb, *patch, "--onnx", out, "-n", "2", "--device", "cpu",
                 "--provider", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and (report["provider"], report["device"]) == ("cpu", "cpu")
    assert main(["verify", *bb, *patch, "-n", "2", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    bad = [["verify", *bb, *patch, "--provider", "cpu"],
           ["export", *bb, "--out", str(tmp_path / "gpu.onnx"), "--device", "cuda:7"],
           ["verify", *bb, *patch, "--device", "cuda:7"]]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        bad.append(["verify", *bb, *patch, "--onnx", out, "--provider", "cuda"])
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "gpu.onnx").exists()


def test_cuda_provider_runs_without_tf32_and_refuses_a_silent_cpu_fallback(monkeypatch,
                                                                            tmp_path):
    """With onnxruntime-gpu the session asks for CUDA (TF32 off, the CPU only for nodes CUDA
    lacks); if onnxruntime then starts on the CPU alone, the check refuses to pass as CUDA."""
    from deltapatch import export

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert export.session_providers("cuda", 1) == [
        ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"}), "CPUExecutionProvider"]

    class FellBack:
        def __init__(self, path, providers):
            self.providers = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(dp.DeltaPatchError, match="could not start CUDAExecutionProvider"):
        export.open_session(tmp_path / "m.onnx", "cuda")
    with pytest.raises(dp.DeltaPatchError, match="choose from cpu, cuda"):
        export.session_providers("tpu")


def _tampered(good: Path, tmp_path: Path) -> dict[str, Path]:
    """Files that are no graph, and graphs whose interface deltapatch export never writes."""
    from onnx import TensorProto, helper

    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"",
             "random": np.random.default_rng(0).bytes(4096), "text": b"a graph, honest\n"}
    out = {k: tmp_path / f"{k}.onnx" for k in files}
    for k, v in files.items():
        out[k].write_bytes(v)

    def edit(name: str, change) -> None:
        proto = onnx.load(str(good))
        change(proto.graph)
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        out[name] = tmp_path / f"{name}.onnx"

    def fp16(g, cast: bool) -> None:
        g.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
        if cast:  # a graph that loads: fp16 input cast to float for the rest
            g.input[0].name = "half"
            g.node.insert(0, helper.make_node("Cast", ["half"], ["image"], to=TensorProto.FLOAT))

    def rename(g) -> None:
        old = g.output[0].name
        g.output[0].name = "renamed"
        for node in g.node:
            node.output[:] = ["renamed" if o == old else o for o in node.output]

    def fixed(g) -> None:  # input fixed at 64 px: fails to run on 32 px images
        for d in g.input[0].type.tensor_type.shape.dim[2:]:
            d.dim_value = 64

    edit("fp16_input", lambda g: fp16(g, False))
    edit("fp16_cast", lambda g: fp16(g, True))
    edit("renamed_output", rename)
    edit("fixed_64px", fixed)
    return out


@pytest.fixture(scope="module")
def tampered(tmp_path_factory) -> tuple[list[str], Path, dict[str, Path]]:
    """``saved``'s backbone flags and folder, and ``_tampered`` graphs of one export (made once:
    each export costs a second)."""
    from deltapatch.cli import main

    tmp_path = tmp_path_factory.mktemp("tampered")
    bb, _ = _saved(tmp_path)
    good = tmp_path / "m.onnx"
    assert main(["export", *bb, "--patch", str(tmp_path / "p"), "--out", str(good)]) == 0
    return bb, tmp_path, _tampered(good, tmp_path)


@pytest.mark.parametrize("case, words", [
    ("truncated", ["onnxruntime cannot load", "Protobuf parsing failed"]),
    ("empty", ["onnxruntime cannot load", "No graph"]),
    ("random", ["onnxruntime cannot load"]),
    ("text", ["onnxruntime cannot load"]),
    ("fp16_input", ["onnxruntime cannot load", "float16"]),
    ("fp16_cast", ["takes 'half' tensor(float16)", "one float32 image batch"]),
    ("renamed_output", ["outputs ['renamed'] for patches not given"]),
    ("fixed_64px", ["onnxruntime cannot run", "(2, 3, 32, 32)"]),
])
def test_verify_of_a_broken_or_foreign_graph_is_one_line_exit_2(tampered, capsys, case, words):
    from helpers import refused

    bb, tmp_path, graphs = tampered
    capsys.readouterr()
    path = graphs[case]
    before = path.read_bytes()
    err = refused(capsys, ["verify", *bb, "--patch", tmp_path / "p", "--onnx", path, "-n", "2"],
                  words[0])
    assert all(w in err for w in words), err
    assert path.read_bytes() == before


def test_verify_fails_a_patch_the_graph_lacks_or_shapes_otherwise(saved, capsys):
    """A check that ran and failed: exit 1, the JSON report says which output and why, and one
    line on stderr names the patch and what the graph has."""
    from deltapatch.cli import main

    bb, tmp_path = saved
    base = str(tmp_path / "base.onnx")
    assert main(["export", *bb, "--out", base]) == 0
    capsys.readouterr()
    assert main(["verify", *bb, "--patch", str(tmp_path / "p"), "--onnx", base, "-n", "2"]) == 1
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    assert not report["ok"] and report["outputs"]["__base__"]["ok"]
    assert report["outputs"]["p"]["problem"] == "not in the graph (its outputs: __base__)"
    assert cap.err.strip().splitlines() == [
        f"deltapatch verify: check failed: {base}: 'p' not in the graph (its outputs: __base__)"]
    # a patch of the same name with another class count: the graph's output has another shape
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", tmp_path / "w.safetensors"))
    model.add_patch("p", 7, stages=1)
    model.save_patch("p", tmp_path / "p7")
    fan = str(tmp_path / "fan.onnx")
    assert main(["export", *bb, "--patch", str(tmp_path / "p"), "--out", fan]) == 0
    capsys.readouterr()
    assert main(["verify", *bb, "--patch", str(tmp_path / "p7"), "--onnx", fan, "-n", "2"]) == 1
    cap = capsys.readouterr()
    assert "shape (2, 4) in the graph, (2, 7) in PyTorch" in cap.err
    assert "Traceback" not in cap.err


@pytest.mark.parametrize("opset", ["3", "9", "21", "999", "-1"])
def test_export_refuses_an_opset_out_of_range_before_building(saved, capsys, opset):
    from helpers import refused

    bb, tmp_path = saved
    out = tmp_path / "o.onnx"
    refused(capsys, ["export", *bb, "--out", out, "--opset", opset], "--opset must be in 10..")
    assert not out.exists() and not list(tmp_path.glob(".o.onnx*"))


def test_a_torch_onnx_failure_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    """torch.onnx's own errors (here a real one: opset 9 lacks Slice steps) run to pages of
    traced graph; export says one line and leaves no file."""
    from deltapatch import export

    monkeypatch.setattr(export, "MIN_OPSET", 7)
    model = _model("cifar_resnet20", 32)
    with pytest.raises(dp.DeltaPatchError, match="cannot export this model at opset 9") as err:
        export_onnx(model, tmp_path / "m.onnx", task_names(model), opset=9)
    assert "\n" not in str(err.value) and len(str(err.value)) < 500
    assert list(tmp_path.iterdir()) == []


def test_verify_bounds_its_input_batch_before_allocating(saved, capsys):
    """-n 4096 at 4096 px would be 824 GB of inputs: refused in one line, nothing allocated
    (the old code died in the allocator with a traceback, or was killed by the kernel)."""
    from helpers import refused

    bb, tmp_path = saved
    refused(capsys, ["verify", *bb, "--patch", tmp_path / "p", "-n", "4096", "--image-size",
                     "4096"], "GiB of inputs alone")
