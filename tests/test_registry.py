"""Every registry refuses an existing name unless the caller means to replace it; unknown names
are errors that list the valid ones."""

from __future__ import annotations

import pytest

import deltapatch as dp
from deltapatch.bench.jobs import SCENARIOS
from deltapatch.cli.common import COMMANDS
from deltapatch.data.sources import BUILTINS
from deltapatch.delta import GATES
from deltapatch.methods import METHODS, register_method
from deltapatch.registry import Registry, RegistryError


def test_registry_refuses_duplicates_and_names_valid_choices():
    reg: Registry[str, int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(RegistryError, match="override=True"):
        reg.register("a", 2)
    assert reg.get("a") == 1
    reg.register("a", 3, override=True)
    assert reg.get("a") == 3
    with pytest.raises(RegistryError, match="unknown thing 'b'; choose from a"):
        reg.get("b")
    assert isinstance(RegistryError("x"), dp.DeltaPatchError)


@pytest.mark.parametrize("registry", [METHODS, SCENARIOS, COMMANDS, BUILTINS, GATES],
                         ids=lambda r: r.kind)
def test_package_registries_refuse_an_existing_name(registry):
    name = registry.names()[0]
    before = registry.get(name)
    with pytest.raises(RegistryError, match=name):
        registry.register(name, object())
    assert registry.get(name) is before


def test_register_method_refuses_then_overrides():
    delta = METHODS.get("delta")
    with pytest.raises(RegistryError):
        register_method(delta)
    try:
        register_method(delta, override=True)
        assert METHODS.get("delta") is delta
    finally:
        METHODS.register("delta", delta, override=True)
