"""A suite file's keys come from the same definitions as the CLI's flags: a typo is an error
that names the valid keys, never a silently ignored setting or a silently skipped run."""

from __future__ import annotations

import pytest
from helpers import suite_file

from deltapatch.bench.suite import SETTING_KEYS
from deltapatch.errors import DeltaPatchError
from deltapatch.train import TrainConfig

SUITE = """
name = "t"
[defaults]
{defaults}
[backbones.r20]
name = "cifar_resnet20"
[tasks.digits]
data = "digits"
[variants.v]
method = "{method}"
[[scenarios]]
kind = "single"
backbones = ["r20"]
tasks = ["digits"]
variants = ["v"]
"""


def _suite(tmp_path, defaults="epochs = 1", method="delta"):
    return suite_file(tmp_path, SUITE.format(defaults=defaults, method=method))


def test_valid_suite_loads(tmp_path):
    assert _suite(tmp_path).defaults == {"epochs": 1}


def test_every_training_field_is_a_suite_key():
    from dataclasses import fields
    assert {f.name for f in fields(TrainConfig)} - {"seed", "progress"} <= SETTING_KEYS


def test_misspelt_key_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(DeltaPatchError, match="unknown key.*epoch.*valid: .*epochs"):
        _suite(tmp_path, defaults="epoch = 1")


def test_misspelt_method_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(DeltaPatchError, match="unknown method 'detla'.*delta"):
        _suite(tmp_path, method="detla")


def test_lr_grid_is_a_suite_key_and_must_be_positive_rates(tmp_path):
    from deltapatch.bench.runner import build_jobs
    suite = _suite(tmp_path, "lr_grid = [1e-3, 1e-2]")
    jobs = build_jobs(suite)
    assert jobs[0].lr_grid == [1e-3, 1e-2] and jobs[0].tunes
    for bad in ("lr_grid = []", "lr_grid = [0.01, -1]", 'lr_grid = "0.01"', "lr_grid = [true]"):
        with pytest.raises(DeltaPatchError, match="lr_grid must be a non-empty list"):
            _suite(tmp_path, bad)


def test_lr_extend_is_protocol_4s_suite_key_and_is_bounded(tmp_path):
    from deltapatch.bench.runner import build_jobs
    jobs = build_jobs(_suite(tmp_path, "lr_grid = [1e-3, 1e-2]\nlr_extend = 3"))
    assert jobs[0].lr_extend == 3
    assert build_jobs(_suite(tmp_path, "lr_grid = [1e-3, 1e-2]"))[0].lr_extend == 0
    for bad in ("lr_extend = -1", "lr_extend = 1000"):
        with pytest.raises(DeltaPatchError, match="lr_extend must be 0 to"):
            _suite(tmp_path, bad)
    with pytest.raises(DeltaPatchError):
        _suite(tmp_path, 'lr_extend = "3"')


def test_zsda_takes_the_fully_trained_network_as_a_variant(tmp_path):
    text = SUITE.replace('[[scenarios]]\nkind = "single"', '[[scenarios]]\nkind = "zsda"\n'
                         'source = "digits"\ntarget = "digits"').replace(
        'tasks = ["digits"]\nvariants', 'variants')
    suite = suite_file(tmp_path, text.format(defaults="epochs = 1", method="full"))
    assert suite.variants["v"].method == "full"
    bad = text.replace('kind = "zsda"\nsource = "digits"\ntarget = "digits"',
                       'kind = "single"\ntasks = ["digits"]')
    with pytest.raises(DeltaPatchError, match="unknown method 'full'"):
        suite_file(tmp_path, bad.format(defaults="epochs = 1", method="full"))


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper", "imagenet"])
def test_every_shipped_suite_loads_and_builds_its_grid(name):
    from deltapatch.bench.runner import build_jobs
    from deltapatch.bench.suite import load_suite
    suite = load_suite(name)
    jobs = build_jobs(suite)
    assert jobs and len({j.key for j in jobs}) <= len(jobs)
    if "lr_grid" in suite.defaults:  # one grid for every cell that tunes
        assert {tuple(j.lr_grid) for j in jobs} == {tuple(suite.defaults["lr_grid"])}
