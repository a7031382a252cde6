"""Bring your own CNN from the CLI: ``load_backbone("file.py:function")``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import deltapatch as dp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = f"{ROOT / 'examples' / 'my_cnn.py'}:build"


def test_example_factory_loads_wraps_and_patches():
    backbone = dp.load_backbone(EXAMPLE)
    assert backbone.deltapatch_name == EXAMPLE and not backbone.training
    assert backbone.deltapatch_preprocess == dp.Preprocess(32)
    model = dp.PatchedModel(backbone)  # the spec comes from backbone.deltapatch_spec
    assert model.stage_names == ["s1", "s2"] and model.backbone_name == EXAMPLE
    model.add_patch("p", 10, stages=2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        patched, base = model(x, patch="p"), model(x)
        assert patched.shape == base.shape and not torch.equal(patched, base)
        assert torch.equal(base, backbone(x))


def test_example_factory_builds_the_same_model_in_every_process():
    """train, eval, predict and verify each build the model in their own process: a patch made
    for one build must fit the next (the example seeds its init), and building leaves the
    caller's random state alone."""
    import os
    import subprocess
    import sys

    from deltapatch.patch import fingerprint

    state = torch.random.get_rng_state()
    here = fingerprint(dp.load_backbone(EXAMPLE))
    assert torch.equal(torch.random.get_rng_state(), state)
    code = (f"import deltapatch as dp; from deltapatch.patch import fingerprint; "
            f"print(fingerprint(dp.load_backbone({EXAMPLE!r})))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's deltapatch
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120, env=env).stdout.strip()
    assert there == here


def test_factory_is_imported_once_and_weights_files_load(tmp_path):
    from safetensors.torch import save_file

    first = dp.load_backbone(EXAMPLE)  # a second import would re-register InvertedResidual
    save_file(first.state_dict(), str(tmp_path / "w.safetensors"))
    second = dp.load_backbone(EXAMPLE, weights=tmp_path / "w.safetensors")
    assert type(second) is type(first)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(second(x), first(x))


def test_relative_file_reference(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert dp.load_backbone("examples/my_cnn.py:build").deltapatch_name == "examples/my_cnn.py:build"


def test_module_reference(tmp_path, monkeypatch):
    (tmp_path / "user_pkg_dp").mkdir()
    (tmp_path / "user_pkg_dp" / "__init__.py").write_text("")
    (tmp_path / "user_pkg_dp" / "nets.py").write_text(
        "import deltapatch as dp\n"
        "def build():\n"
        "    return dp.load_backbone('cifar_resnet20')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = dp.load_backbone("user_pkg_dp.nets:build")
    assert model.deltapatch_name == "user_pkg_dp.nets:build"
    dp.PatchedModel(model)  # spec found in the registry by type


@pytest.mark.parametrize("source, ref, message", [
    (None, "{d}/missing.py:build", r"file '.*missing\.py' not found.*PATH\.py:FUNCTION"),
    ("def other():\n    pass\n", "{d}/f.py:build", r"has no function 'build'.*defines: other"),
    ("import torch\nraise RuntimeError('boom')\n", "{d}/f.py:build",
     r"running '.*f\.py' for backbone '.*' raised RuntimeError: boom at line 2"),
    ("def build():\n    raise ValueError('bad\\nsecond line')\n", "{d}/f.py:build",
     r"factory '.*' raised ValueError: bad at line 2$"),
    ("def build():\n    return 3\n", "{d}/f.py:build", r"returned a int"),
    (None, "no_such_module_dp.sub:build", r"cannot import module 'no_such_module_dp\.sub'"),
    (None, "nonsense_name", r"unknown backbone 'nonsense_name'.*PATH\.py:FUNCTION"),
])
def test_factory_errors_are_one_actionable_line(tmp_path, source, ref, message):
    if source is not None:
        (tmp_path / "f.py").write_text(source)
    with pytest.raises(dp.BackboneError, match=message) as err:
        dp.load_backbone(ref.format(d=tmp_path))
    assert "\n" not in str(err.value)


def test_factory_weights_must_be_a_file():
    with pytest.raises(dp.BackboneError, match="neither a file"):
        dp.load_backbone(EXAMPLE, weights="imagenet")


_CIFAR = "import deltapatch as dp\ndef build():\n    m = dp.load_backbone('cifar_resnet20')\n"


@pytest.mark.parametrize("source, fn, words", [
    ("raise SystemExit(0)\n", "build", ["running", "f.py", "SystemExit: 0 at line 1"]),
    ("import sys\nsys.exit(3)\n", "build", ["running", "f.py", "SystemExit: 3 at line 2"]),
    ("def build():\n    raise SystemExit('bye')\n", "build",
     ["f.py:build", "SystemExit: bye at line 2"]),
    ("def build():\n    raise KeyboardInterrupt\n", "build",
     ["f.py:build", "raised KeyboardInterrupt at line 2"]),
    ("class Odd(BaseException):\n    pass\ndef build():\n    raise Odd('x')\n", "build",
     ["f.py:build", "raised Odd: x at line 4"]),
    (None, "torch.nn:Identity", ["'torch.nn:Identity'", "Identity, which has no stage spec"]),
    (_CIFAR + "    m.deltapatch_spec = 'bogus'\n    return m\n", "build",
     ["f.py:build", "deltapatch_spec is a str", "StageSpec"]),
    (_CIFAR + "    m.deltapatch_preprocess = 'bogus'\n    return m\n", "build",
     ["f.py:build", "deltapatch_preprocess is str 'bogus'", "Preprocess(size)"]),
    (_CIFAR + "    m.deltapatch_preprocess = dp.Preprocess(0)\n    return m\n", "build",
     ["f.py:build", "deltapatch_preprocess is Preprocess"]),
    (_CIFAR + "    m.deltapatch_preprocess = dp.Preprocess(32, std=(1, 0, 1))\n    return m\n",
     "build", ["f.py:build", "positive stds"]),
], ids=["exit0-at-import", "sys.exit-at-import", "exit-in-build", "ctrl-c-in-build",
        "base-exception", "no-spec", "bogus-spec", "bogus-preprocess", "size-0", "std-0"])
def test_factory_that_exits_raises_or_returns_junk_is_one_line_exit_2(tmp_path, capsys, source,
                                                                      fn, words):
    """Whatever a factory raises at import or in build() (SystemExit(0) and KeyboardInterrupt
    too), or a result that is no usable model / spec / preprocess: one line naming the file and
    function, exit 2, no traceback, no run folder."""
    from helpers import refused

    ref = fn
    if source is not None:
        (tmp_path / "f.py").write_text(source)
        ref = f"{tmp_path / 'f.py'}:{fn}"
    out = tmp_path / "out"
    err = refused(capsys, ["train", "--backbone", ref, "--data", "digits", "--out", out,
                           "--epochs", "1"], words[0])
    assert all(w in err for w in words), err
    assert not out.exists()
    if source is not None:  # a failed import leaves no half-run module behind: it runs again
        with pytest.raises(dp.BackboneError, match="raised|returned"):
            dp.load_backbone(ref)
