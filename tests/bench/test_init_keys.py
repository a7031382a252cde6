"""``init`` as a run setting: a CLI flag and a suite variant key derived like the others; the
legacy start keeps every stored run's fingerprint and every run folder's settings."""

from __future__ import annotations

import argparse

import pytest
from helpers import suite_file

from deltapatch.bench.jobs import fingerprint
from deltapatch.cli import train as train_cli
from deltapatch.errors import DeltaPatchError
from deltapatch.run import RunSpec

SUITE = """
name = "t"
[backbones.bb]
name = "cifar_resnet20"
[tasks.digits]
data = "digits"
[variants.plain]
method = "delta"
[variants.pinned]
method = "delta"
init = "random"
[variants.base]
method = "delta"
init = "base"
[[scenarios]]
kind = "single"
backbones = ["bb"]
tasks = ["digits"]
variants = ["plain", "pinned", "base"]
"""


def _suite(tmp_path, text: str = SUITE):
    return suite_file(tmp_path, text)


def _fingerprint(tmp_path, init_line: str) -> str:
    text = SUITE.replace('[variants.plain]\nmethod = "delta"',
                         f'[variants.plain]\nmethod = "delta"\n{init_line}')
    suite = _suite(tmp_path, text)
    return fingerprint(suite, "bb", [suite.tasks["digits"]], suite.variants["plain"])


def test_variant_init_key_and_fingerprints(tmp_path):
    suite = _suite(tmp_path)
    assert [suite.variants[k].init for k in ("plain", "pinned", "base")] == [None, "random",
                                                                              "base"]
    old = _fingerprint(tmp_path, "")
    assert _fingerprint(tmp_path, 'init = "random"') == old  # the legacy start is the old run
    assert _fingerprint(tmp_path, 'init = "base"') != old


def test_variant_with_unknown_init_is_refused(tmp_path):
    with pytest.raises(DeltaPatchError, match="init = 'zero'"):
        _suite(tmp_path, SUITE.replace('init = "base"', 'init = "zero"'))


def test_runspec_init_is_checked_and_legacy_start_keeps_settings():
    spec = RunSpec(backbone="cifar_resnet20", data="digits")
    assert "init" not in spec.settings()  # run folders from before `init` stay resumable
    assert "init" not in RunSpec(backbone="b", data="d", init="random").settings()
    assert RunSpec(backbone="b", data="d", init="base").settings()["init"] == "base"
    with pytest.raises(ValueError, match="init must be one of"):
        RunSpec(backbone="b", data="d", init="zero")


def test_cli_init_flag():
    p = argparse.ArgumentParser()
    train_cli.arguments(p)
    args = p.parse_args(["--backbone", "cifar_resnet20", "--data", "digits", "--out", "o",
                         "--init", "base"])
    assert train_cli.spec_from(args).init == "base"
    args = p.parse_args(["--backbone", "cifar_resnet20", "--data", "digits", "--out", "o"])
    assert train_cli.spec_from(args).init is None
    with pytest.raises(SystemExit):
        p.parse_args(["--backbone", "x", "--data", "d", "--out", "o", "--init", "zero"])


def test_a_familys_default_start_enters_settings_and_fingerprints(tmp_path, monkeypatch):
    """A backbone whose family starts patches at the base network records that start where
    ``init`` is left out, so its runs cannot pass for the random-start runs made before."""
    from deltapatch.backbones import catalog
    from deltapatch.bench import jobs

    suite = _suite(tmp_path)

    def prints() -> dict[str, str]:
        return {k: fingerprint(suite, "bb", [suite.tasks["digits"]], suite.variants[k])
                for k in ("plain", "pinned", "base")}

    before = prints()
    monkeypatch.setattr(jobs, "family_init", lambda name: "base")
    after = prints()
    assert after["plain"] != before["plain"]  # left out, init now resolves to base
    assert after["pinned"] == before["pinned"] and after["base"] == before["base"]
    assert catalog.family_init("cifar_resnet20") is None
    assert "init" not in RunSpec(backbone="cifar_resnet20", data="digits").settings()
    if catalog.family_init("efficientnet_lite0") == "base":  # where its package is installed
        lite = RunSpec(backbone="efficientnet_lite0", data="digits")
        assert lite.settings()["init"] == "base"
        assert "init" not in RunSpec(backbone="efficientnet_lite0", data="digits",
                                     init="random").settings()
