"""One registry type for every name → thing table in deltapatch (methods, backbones, blocks,
specs, gates, scenarios, commands, data sets).

Registering a name that exists raises instead of silently replacing it: replacing torchvision's
``BasicBlock`` split once changed the patched outputs of models already built. A caller who
really means to replace passes ``override=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Hashable, TypeVar

from .errors import DeltaPatchError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RegistryError(DeltaPatchError):
    """A name is registered twice, or looked up but never registered."""


def _show(key: object) -> str:
    return key.__qualname__ if isinstance(key, type) else str(key)


class Registry(Generic[K, V]):
    """A named table whose entries are added once.

    Args:
        kind: what the entries are, for error messages ("method", "backbone", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[K, V] = {}

    def register(self, key: K, value: V, *, override: bool = False) -> V:
        if key in self._items and not override:
            raise RegistryError(f"a {self.kind} named '{_show(key)}' is already registered; "
                                "pass override=True to replace it")
        self._items[key] = value
        return value

    def unregister(self, key: K) -> None:
        self._items.pop(key, None)

    def get(self, key: K) -> V:
        if key not in self._items:
            raise RegistryError(f"unknown {self.kind} '{_show(key)}'; choose from "
                                f"{', '.join(self.names()) or 'none registered'}")
        return self._items[key]

    def find(self, key: K) -> V | None:
        return self._items.get(key)

    def names(self) -> list[str]:
        return sorted(_show(k) for k in self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key: K) -> V:
        return self.get(key)
