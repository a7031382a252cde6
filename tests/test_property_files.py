"""Property tests (issue 24): any patch ``config.json`` and any ``.npz`` is either accepted and
usable, or refused with one ``DeltaPatchError`` line; through the CLI, exit 2 with one line on
stderr and nothing on disk changed. Hypothesis draws the files; each test stays well under 20 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import deltapatch as dp
from deltapatch.cli import main
from deltapatch.data import load_data
from deltapatch.methods import load_task

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _cli(argv: list) -> tuple[int, str]:
    """Exit code and stderr of ``deltapatch argv`` (stdout dropped)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def _one_line(text: str) -> None:
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text


def _accepted_or_one_line(load, what: str):
    """What ``load()`` returns, or None where it refused with one ``DeltaPatchError`` line; any
    other exception fails the test."""
    try:
        value = load()
    except dp.DeltaPatchError as err:
        assert str(err) and "\n" not in str(err), err
        return None
    event(f"{what} accepted")
    return value


def _tree(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------ config.json
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-class Δ(1) patch of cifar_resnet20 and the weights file its backbone loads from."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("prop")
    weights = root / "weights.safetensors"
    save_file(dp.load_backbone("cifar_resnet20").state_dict(), weights)
    model = dp.PatchedModel(dp.load_backbone("cifar_resnet20", weights=str(weights)))
    model.add_patch("p", num_classes=3, stages=1, class_names=["a", "b", "c"])
    folder = model.save_patch("p", root / "p")
    image = root / "x.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (90, 30, 200)).save(image)
    return model.backbone, weights, folder, image


JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, 3, 7, 8, 32, 513, 4096, 10**9, 100_000, -1]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["delta", "lora", "bogus", "", "../x", "__base__", "classification"]))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
KEYS = ["format", "method", "name", "num_classes", "class_names", "backbone", "fingerprint",
        "stages", "gate", "norm", "reduction", "init", "trainable_params", "options", "task",
        "content_hash", "preprocess", "preprocess.size", "preprocess.mean", "preprocess.std",
        "extra_key"]
FLOATS3 = st.lists(st.floats(-1, 1), min_size=3, max_size=3)
PLAUSIBLE = {  # values a real patch could hold: half the draws use these, so many are accepted
    "num_classes": st.integers(1, 5), "class_names": st.just(["x", "y", "z"]),
    "stages": st.sampled_from([[2], [1], [1, 2], [], [0, 1, 2]]),
    "gate": st.sampled_from(["delta", "fixed", "bogus"]), "norm": st.sampled_from(["output", "none"]),
    "init": st.sampled_from(["base", "random"]), "reduction": st.integers(1, 8),
    "name": st.text(min_size=1, max_size=8), "trainable_params": st.integers(0, 10**6),
    "options": st.just({}), "task": st.just("classification"),
    "preprocess.size": st.integers(1, 600), "preprocess.mean": FLOATS3,
    "preprocess.std": st.lists(st.floats(0.05, 2), min_size=3, max_size=3)}


@st.composite
def edits(draw):
    out = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(KEYS))
        how = draw(st.sampled_from(["set", "set", "delete"]))
        plausible = key in PLAUSIBLE and draw(st.booleans())
        out.append((key, how, draw(PLAUSIBLE[key] if plausible else JSON)))
    return out


EDITS = edits()


def _edit(config: dict, edits) -> dict:
    config = json.loads(json.dumps(config))
    for key, how, value in edits:
        target, leaf = config, key
        if key.startswith("preprocess.") and isinstance(config.get("preprocess"), dict):
            target, leaf = config["preprocess"], key.split(".", 1)[1]
        if how == "delete":
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return config


@SETTINGS
@given(edits=EDITS, through_cli=st.integers(0, 3))
def test_any_config_is_usable_or_one_line(saved, edits, through_cli):
    """Through the API every time, and through ``predict`` for about one draw in four (a CLI
    run loads the backbone again: a second each)."""
    backbone, weights, folder, image = saved
    config = _edit(json.loads((folder / "config.json").read_text()), edits)
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "p"
        bad.mkdir()
        (bad / "patch.safetensors").write_bytes((folder / "patch.safetensors").read_bytes())
        (bad / "config.json").write_text(json.dumps(config))
        before = _tree(bad)
        model = dp.PatchedModel(backbone)
        task = _accepted_or_one_line(lambda: load_task(model, bad), "config")
        accepted = task is not None
        if accepted:
            pre = task.config.preprocess
            x = torch.rand(2, 3, pre.size, pre.size)
            with torch.inference_mode():
                logits = task.outcome.patch_forward(pre.normalize(x))
            assert logits.shape == (2, task.config.num_classes)
            assert torch.isfinite(logits).all()
        if through_cli:
            return
        code, err = _cli(["predict", "--backbone", "cifar_resnet20", "--weights", weights,
                          "--patch", bad, image])
        assert code == (0 if accepted else 2), err
        if not accepted:
            _one_line(err)
        assert _tree(bad) == before


# ------------------------------------------------------------------ .npz
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int64, np.int8, np.float32, np.float64,
                          np.bool_, np.complex64, "<U2"])


@st.composite
def arrays(draw, labels: bool):
    n = draw(st.integers(0, 8))
    dtype = np.dtype(draw(DTYPES))
    if labels:
        shape = (n,) if draw(st.booleans()) else draw(st.sampled_from([(n, 1), (n, 2), ()]))
        values = st.one_of(st.integers(-3, 5), st.sampled_from([2_000_000_000, 99_999, 100_000]),
                           st.floats(-2, 6), st.sampled_from([np.nan, np.inf]))
    else:
        side = st.integers(0, 5)
        shape = draw(st.sampled_from([
            (n, draw(side), draw(side)), (n, draw(side), draw(side), draw(st.sampled_from([1, 3, 4]))),
            (n, 3, draw(side), draw(side)), (n,), (n, 2, 2, 2, 2)]))
        values = st.one_of(st.integers(0, 255), st.sampled_from([-1, 256, 65535]),
                           st.floats(-1, 300), st.sampled_from([np.nan, -np.inf]))
    size = int(np.prod(shape))
    flat = draw(st.lists(values, min_size=min(size, 4), max_size=min(size, 4)))
    data = np.resize(np.array(flat or [0], dtype=object), size).reshape(shape)
    with np.errstate(all="ignore"):
        try:
            return data.astype(dtype)
        except (ValueError, OverflowError, TypeError):
            return np.zeros(shape, dtype)


@st.composite
def plausible(draw) -> dict:
    """A data set that could be real: uint8 images of 2..6 px, labels 0..k-1."""
    out = {}
    for split, n in (("train", draw(st.integers(5, 9))), ("test", draw(st.integers(1, 4)))):
        side = draw(st.integers(2, 6))
        out[f"x_{split}"] = np.full((n, side, side, 3), draw(st.integers(0, 255)), np.uint8)
        out[f"y_{split}"] = np.arange(n) % draw(st.integers(1, 2))
    return out


@st.composite
def archives(draw):
    """Arrays under the four keys (some may be missing), sometimes class_names, sometimes one
    member whose header lies about its shape; half start from a plausible data set and change
    one array or none."""
    members = {}
    base = draw(plausible()) if draw(st.booleans()) else {}
    change = draw(st.sampled_from([None, None, "x_train", "y_train", "x_test", "y_test"]))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key in base and key != change:
            members[key] = base[key]
        elif draw(st.integers(0, 9)):  # 1 in 10 missing
            members[key] = draw(arrays(labels=key.startswith("y")))
    if not base and draw(st.booleans()):
        members["class_names"] = np.array(draw(st.lists(st.text(max_size=3), max_size=4)),
                                          dtype=str)
    lie = None if base and change is None else draw(st.sampled_from([None, *members]))
    claim = draw(st.sampled_from([(30_000_000_000_000, 28), (0,), (-1, 2), (2, 2)]))
    return members, lie, claim


def _npy(a: np.ndarray, claim=None) -> bytes:
    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(a)
    if claim is not None:
        header["shape"] = claim
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + a.tobytes()


@pytest.fixture(scope="module")
def small_model():
    return dp.PatchedModel(dp.load_backbone("cifar_resnet20"))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(archive=archives(), through_cli=st.integers(0, 2))
def test_any_npz_is_usable_or_one_line(small_model, archive, through_cli):
    """Through ``load_data`` every time; a refused file also through ``train`` for about one
    draw in three."""
    members, lie, claim = archive
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        with zipfile.ZipFile(path, "w") as zf:
            for key, a in members.items():
                zf.writestr(f"{key}.npy", _npy(a, claim if key == lie else None))
        data = _accepted_or_one_line(lambda: load_data(str(path), 16), "npz")
        accepted = data is not None
        if accepted:
            for s in (data.train, data.val, data.test):
                assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 16, 16)
                assert 0 <= int(s.labels.min()) and int(s.labels.max()) < data.num_classes
            small_model.add_patch("t", num_classes=data.num_classes, stages=1)
            try:
                with torch.inference_mode():
                    x = small_model.preprocess.normalize(data.train.images[:4])
                    assert small_model(x, patch="t").shape == (len(x), data.num_classes)
            finally:
                small_model.remove_patch("t")
        if accepted or through_cli:
            return
        # the CLI sample: every refused file is refused by train the same way
        out = Path(tmp) / "out"
        code, err = _cli(["train", "--backbone", "cifar_resnet20", "--image-size", "16",
                          "--epochs", "1", "--no-progress", "--data", path, "--out", out])
        assert code == 2, err
        _one_line(err)
        assert not out.exists()
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["d.npz"]  # no folder, no lock
