"""A patch config read from an untrusted config.json: every field typed and bounded at both ends,
its default where it may be left out, and a refusal that names the field. Field by field, so a
bound moved by one or a check dropped is seen."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deltapatch.baseinit import INITS, LEGACY_INIT
from deltapatch.delta import GATES, NORMS, DeltaStage
from deltapatch.errors import PatchError
from deltapatch.patch import (
    CLASSIFICATION,
    FORMAT,
    HEADS,
    LEGACY_FORMATS,
    MAX_CLASSES,
    Patch,
    PatchConfig,
    StageShape,
    check_head,
    check_name,
    check_tensors,
    class_labels,
    fingerprint,
    read_config,
    read_patch,
    register_head,
    write_patch,
)
from deltapatch.preprocess import MAX_SIZE, MIN_SIZE, Preprocess
from deltapatch.registry import RegistryError


def _config(**fields) -> PatchConfig:
    base = dict(name="p", num_classes=3, stages=[1, 2], backbone="cifar_resnet20",
                fingerprint="f" * 32, preprocess=Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
                gate="learned", norm="skip", reduction=8, method="delta", init="random",
                class_names=["a", "b", "c"], trainable_params=1234, options={"k": [1, 2]})
    return PatchConfig(**{**base, **fields})


def _json(**changes) -> dict:
    d = json.loads(json.dumps(_config().to_json()))  # as config.json gives it back
    for k, v in changes.items():
        if v is _GONE:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_GONE = object()


def test_a_written_config_reads_back_as_it_was():
    assert PatchConfig.from_json(_json()) == _config()
    legacy = PatchConfig.from_json(_json(format=LEGACY_FORMATS[0]))
    assert legacy == _config()


def test_fields_left_out_take_their_documented_defaults():
    d = _json(gate=_GONE, norm=_GONE, reduction=_GONE, init=_GONE, method=_GONE,
              trainable_params=_GONE, options=_GONE, task=_GONE, class_names=_GONE)
    c = PatchConfig.from_json(d)
    assert (c.gate, c.norm, c.reduction, c.init, c.method) == ("delta", "output", 4,
                                                               LEGACY_INIT, "delta")
    assert (c.trainable_params, c.options, c.task, c.class_names) == (None, {}, CLASSIFICATION,
                                                                      None)
    assert PatchConfig.from_json(_json(options=_GONE, extra={"alpha": 0.5})).options == {
        "alpha": 0.5}  # the name options had before


def test_stages_are_sorted_and_unique():
    assert PatchConfig.from_json(_json(stages=[3, 1, 3, 0])).stages == [0, 1, 3]
    assert PatchConfig.from_json(_json(stages=[0] * 64)).stages == [0]  # 64 items: the limit
    assert PatchConfig.from_json(_json(stages=[])).stages == []
    assert PatchConfig.from_json(_json(stages=[63])).stages == [63]


@pytest.mark.parametrize("key,ok,bad", [
    ("num_classes", [1, MAX_CLASSES], [0, MAX_CLASSES + 1, True, 2.0, "3", None]),
    ("reduction", [1, 1024], [0, 1025, False, 4.0]),
    ("trainable_params", [0, 10**12, None], [-1, 10**12 + 1, True, 1.5]),
])
def test_integers_are_bounded_at_both_ends(key, ok, bad):
    extra = {"class_names": _GONE} if key == "num_classes" else {}
    for v in ok:
        assert getattr(PatchConfig.from_json(_json(**{key: v}, **extra)), key) == v
    for v in bad:
        with pytest.raises(PatchError, match=f"patch config: {key} must be an integer in "
                                             r"\d+\.\.\d+, got "):
            PatchConfig.from_json(_json(**{key: v}, **extra))


@pytest.mark.parametrize("key", ["backbone", "fingerprint", "method"])
def test_strings_are_non_empty_and_bounded(key):
    assert getattr(PatchConfig.from_json(_json(**{key: "x" * 4096})), key) == "x" * 4096
    for v in ("", "x" * 4097, 3, None, ["a"]):
        if key == "method" and v is None:
            continue  # a missing method is the default, tested above
        with pytest.raises(PatchError, match=f"patch config: {key} must be a non-empty string"):
            PatchConfig.from_json(_json(**{key: v}))


@pytest.mark.parametrize("key,choices", [
    ("gate", sorted(GATES)), ("norm", NORMS), ("init", INITS), ("task", HEADS.names()),
])
def test_choices_accept_each_choice_and_nothing_else(key, choices):
    for v in choices:
        if key == "task" and v != CLASSIFICATION:
            continue  # a dense head's config is checked by its own package
        assert getattr(PatchConfig.from_json(_json(**{key: v})), key) == v
    for v in ("nope", "", None, 1):
        with pytest.raises(PatchError, match=f"patch config: {key} must be one of"):
            PatchConfig.from_json(_json(**{key: v}))


@pytest.mark.parametrize("d,match", [
    ([], "patch config must be a JSON object, not list"),
    ("x", "must be a JSON object, not str"),
    ({"format": "deltapatch.patch/3"}, r"not a deltapatch patch config \(format "
                                       r"'deltapatch.patch/3', expected 'deltapatch.patch/2'\)"),
    ({"format": None}, "not a deltapatch patch config"),
])
def test_what_is_not_a_patch_config_is_refused_as_such(d, match):
    with pytest.raises(PatchError, match=match):
        PatchConfig.from_json(d)


@pytest.mark.parametrize("names,ok", [
    (["a", "b", "c"], True), (["x" * 1000, "b", "c"], True), (["x" * 1001, "b", "c"], False),
    (["a", "b"], False), (["a", "b", "c", "d"], False), (["a", "b", 3], False), ("abc", False),
])
def test_class_names_are_one_bounded_string_per_class(names, ok):
    if ok:
        assert PatchConfig.from_json(_json(class_names=names)).class_names == names
    else:
        with pytest.raises(PatchError, match="patch config: class_names must be 3 strings"):
            PatchConfig.from_json(_json(class_names=names))


@pytest.mark.parametrize("stages", [[64], [-1], [True], [1.0], "1", None, [0] * 65, {"0": 1}])
def test_stages_must_be_a_short_list_of_indices(stages):
    with pytest.raises(PatchError, match="patch config: stages must be a list of stage "
                                         "indices 0..63"):
        PatchConfig.from_json(_json(stages=stages))


@pytest.mark.parametrize("options", [[], "x", 1])
def test_options_must_be_an_object(options):
    with pytest.raises(PatchError, match="patch config: options must be a JSON object"):
        PatchConfig.from_json(_json(options=options))


def test_a_bad_name_is_refused_by_the_name_rule():
    for name in ("a.b", "__base__", "a/b", "x" * 101):
        with pytest.raises(PatchError, match="invalid patch name"):
            PatchConfig.from_json(_json(name=name))
    with pytest.raises(PatchError, match="patch config: name must be a non-empty string"):
        PatchConfig.from_json(_json(name=""))


def test_preprocess_is_bounded_and_finite():
    def pre(**p):
        return _json(preprocess={**_json()["preprocess"], **p})

    for size in (MIN_SIZE, MAX_SIZE):
        assert PatchConfig.from_json(pre(size=size)).preprocess.size == size
    for size in (MIN_SIZE - 1, MAX_SIZE + 1, True, "32"):
        with pytest.raises(PatchError, match="patch config: size must be an integer in"):
            PatchConfig.from_json(pre(size=size))
    got = PatchConfig.from_json(pre(mean=[0, -1, 2], std=[1, 0.5, 3])).preprocess
    assert (got.mean, got.std) == ((0.0, -1.0, 2.0), (1.0, 0.5, 3.0))
    assert all(isinstance(v, float) for v in (*got.mean, *got.std))
    bad = [dict(std=[1, 0, 1]), dict(std=[1, -1, 1]), dict(mean=[0, 0]),
           dict(mean=[0, 0, 0, 0]), dict(mean=[0, float("nan"), 0]),
           dict(std=[1, float("inf"), 1]), dict(mean=[0, True, 0]), dict(mean="000"),
           dict(mean=[0, "0", 0]), dict(std=None)]
    for p in bad:
        with pytest.raises(PatchError, match=r"preprocess mean/std must be 3 finite numbers "
                                             r"\(std > 0\)"):
            PatchConfig.from_json(pre(**p))
    for p in ([32], None, "x"):
        with pytest.raises(PatchError, match=r"preprocess must be an object \{size, mean, std\}"):
            PatchConfig.from_json(_json(preprocess=p))


def test_class_labels_are_the_names_or_the_indices():
    assert class_labels(["cat", "dog"], 2) == ["cat", "dog"]
    assert class_labels(None, 3) == ["0", "1", "2"]
    assert class_labels([], 2) == ["0", "1"]
    names = ["a"]
    assert class_labels(names, 1) is not names  # a copy: the caller may change it
    assert _config().labels == ["a", "b", "c"]
    assert _config(class_names=None).labels == ["0", "1", "2"]


def test_check_head_wants_num_classes_by_feature_width():
    c = _config()
    check_head(c, {"head.weight": torch.zeros(3, 64)}, 64)
    for w in (torch.zeros(3, 63), torch.zeros(4, 64), torch.zeros(64, 3)):
        with pytest.raises(PatchError, match=rf"patch 'p': head.weight has shape "
                                             rf"\({w.shape[0]}, {w.shape[1]}\), expected "
                                             r"\(3, 64\) for 3 classes on this backbone"):
            check_head(c, {"head.weight": w}, 64)
    with pytest.raises(PatchError, match=r"head.weight has shape None, expected \(3, 64\)"):
        check_head(c, {}, 64)
    check_head(_config(task="detection"), {}, 64)  # other heads: checked after building


def test_check_tensors_names_what_is_missing_unexpected_or_of_another_form():
    expected = {"a": torch.zeros(2), "b": torch.zeros(1, dtype=torch.int64)}
    check_tensors(expected, {"a": torch.ones(2), "b": torch.ones(1, dtype=torch.int64)})
    check_tensors(nn.Linear(2, 1), {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    with pytest.raises(PatchError, match=r"missing \['b'\], unexpected \['c'\]"):
        check_tensors(expected, {"a": torch.ones(2), "c": torch.ones(1)})
    with pytest.raises(PatchError, match=r"missing \[\], unexpected \['c'\]"):
        check_tensors(expected, {"a": torch.ones(2), "b": torch.ones(1, dtype=torch.int64),
                                 "c": torch.ones(1)})
    with pytest.raises(PatchError, match=r"patch tensor 'a' has shape \(3,\) torch.float32, "
                                         r"expected \(2,\) torch.float32"):
        check_tensors(expected, {"a": torch.ones(3), "b": torch.ones(1, dtype=torch.int64)})
    with pytest.raises(PatchError, match=r"patch tensor 'b' has shape \(1,\) torch.float32, "
                                         r"expected \(1,\) torch.int64"):
        check_tensors(expected, {"a": torch.ones(2), "b": torch.ones(1)})


def test_register_head_refuses_a_taken_kind_unless_told_to_override():
    build = HEADS.get(CLASSIFICATION)
    with pytest.raises(RegistryError):
        register_head(CLASSIFICATION, lambda *a: nn.Identity())
    assert register_head(CLASSIFICATION, build, override=True) is build
    assert HEADS.get(CLASSIFICATION) is build
    head = build(_config(), [], 16)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (16, 3)


def test_read_config_and_read_patch_give_the_written_config(tmp_path):
    c = _config()
    write_patch(tmp_path / "p", c, {"head.weight": torch.ones(3, 4)})
    assert read_config(tmp_path / "p") == c
    config, tensors = read_patch(tmp_path / "p")
    assert config == c and torch.equal(tensors["head.weight"], torch.ones(3, 4))


def test_a_legacy_config_reads_without_a_content_hash_and_a_current_one_needs_it(tmp_path):
    write_patch(tmp_path / "p", _config(), {"head.weight": torch.ones(3, 4)})
    cfg = tmp_path / "p" / "config.json"
    d = json.loads(cfg.read_text())
    del d["content_hash"]
    cfg.write_text(json.dumps(d))
    with pytest.raises(PatchError, match="content_hash"):
        read_patch(tmp_path / "p")
    cfg.write_text(json.dumps({**d, "format": LEGACY_FORMATS[0]}))
    config, _ = read_patch(tmp_path / "p")
    assert config == _config()
    assert FORMAT not in LEGACY_FORMATS


def test_config_json_holds_exactly_the_documented_keys_and_reads_every_one_back():
    import deltapatch.dense  # noqa: F401  (registers the dense head kinds)

    c = _config(method="lora", task="segmentation")
    d = c.to_json()
    assert set(d) == {"format", "library_version", "method", "name", "num_classes",
                      "class_names", "backbone", "fingerprint", "preprocess", "stages", "gate",
                      "norm", "reduction", "init", "trainable_params", "options", "task"}
    assert d["format"] == FORMAT
    back = PatchConfig.from_json(json.loads(json.dumps(d)))
    assert (back.method, back.task) == ("lora", "segmentation") and back == c


def test_refusals_name_the_choices_and_the_expected_shape():
    with pytest.raises(PatchError, match=f"^patch config: norm must be one of "
                                         f"{', '.join(NORMS)}, got 'x'$"):
        PatchConfig.from_json(_json(norm="x"))
    with pytest.raises(PatchError, match=r"^patch config: preprocess must be an object "
                                         r"\{size, mean, std\}$"):
        PatchConfig.from_json(_json(preprocess=None))
    many = {f"t{i}": torch.zeros(1) for i in range(7)}
    with pytest.raises(PatchError, match=r"missing \['t0', 't1', 't2', 't3', 't4'\], "
                                         r"unexpected \['u0', 'u1', 'u2', 'u3', 'u4'\]$"):
        check_tensors(many, {f"u{i}": torch.zeros(1) for i in range(7)})


# ------------------------------------------------------------------ the Patch module
SHAPES = [StageShape(16, 16, 2), StageShape(16, 32, 2), StageShape(32, 64, 2)]


def test_a_patch_builds_each_stage_as_its_config_says():
    p = Patch(_config(stages=[1, 2], gate="delta", norm="skip", reduction=8), SHAPES, 64)
    ref = DeltaStage(16, 32, 2, gate="delta", norm="skip", reduction=8, init="random")
    assert p.delta(0) is None and p.delta(1) is not None and p.delta(2) is not None
    assert p.delta(1).norm_at == "skip"
    assert [t.shape for t in p.delta(1).state_dict().values()] == [
        t.shape for t in ref.state_dict().values()]  # the config's reduction, not the default
    assert (p.head.in_features, p.head.out_features) == (64, 3)


def test_a_head_builder_gets_the_config_the_stage_shapes_and_the_feature_width():
    seen = []

    def probe(config, shapes, dim):
        seen.append((config.task, shapes, dim))
        return nn.Identity()
    register_head("probe", probe)
    try:
        Patch(_config(task="probe"), SHAPES, 64)
    finally:
        HEADS.unregister("probe")
    assert seen == [("probe", SHAPES, 64)]


def test_a_patch_head_answers_its_own_rows():
    p = Patch(_config(stages=[]), SHAPES, 5)
    feats = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(p.logits(feats, torch.arange(4)), p.head(feats))
        assert torch.equal(p.logits(feats, torch.tensor([1, 3])), p.head(feats[[1, 3]]))
        assert torch.equal(p.logits(feats, torch.tensor([2])), p.head(feats[[2]]))
        assert p.logits(feats, torch.tensor([], dtype=torch.long)).shape == (0, 3)
    narrow = Patch(_config(stages=[]), SHAPES, 2)  # as many rows asked as features wide
    feats = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.equal(narrow.logits(feats, torch.tensor([1, 3])), narrow.head(feats[[1, 3]]))


def test_a_fingerprint_reads_every_tensor_past_a_non_tensor_entry():
    class WithExtra(nn.Module):
        def __init__(self, w: float) -> None:
            super().__init__()
            self.z = nn.Linear(2, 2)
            with torch.no_grad():
                self.z.weight.fill_(w)

        def get_extra_state(self):
            return {"note": "not a tensor"}  # sorts first: "_extra_state" < "z.bias"

        def set_extra_state(self, state):
            pass
    assert fingerprint(WithExtra(1.0)) != fingerprint(WithExtra(2.0))


@pytest.mark.parametrize("name,ok", [
    ("x" * 100, True), ("x" * 101, False), ("X", True), ("a b-c_D", True), ("a\0b", False),
    ("a\\b", False), ("a/b", False), ("a\nb", False),
])
def test_patch_names_are_bounded_printable_and_path_free(name, ok):
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(PatchError, match=r"^invalid patch name .*: 1-100 printable "
                                             r"characters, no '\.', '/' or '\\', not "
                                             r"'__base__'$"):
            check_name(name)


def test_stage_and_option_refusals_are_word_for_word():
    with pytest.raises(PatchError, match=r"^patch config: stages must be a list of stage "
                                         r"indices 0\.\.63$"):
        PatchConfig.from_json(_json(stages="0"))
    with pytest.raises(PatchError, match="^patch config: options must be a JSON object$"):
        PatchConfig.from_json(_json(options=[]))
