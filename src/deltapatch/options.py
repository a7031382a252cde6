"""Settings dataclasses describe their own options: each field's ``metadata`` carries its help
text, bounds and choices. The CLI's flags, the accepted suite keys and validation are all derived
from that one definition (:class:`~deltapatch.train.TrainConfig`, :class:`~deltapatch.run.RunSpec`).
Each method declares the ``--option KEY=VALUE`` keys it reads the same way: a frozen dataclass of
:class:`OptionSet` whose fields are :func:`option` s (kind, bounds, default, help), so an unknown
key or a value of the wrong kind is refused before a run starts, and the method reads typed
attributes, not a dict."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar


def opt(help: str, **meta) -> dict:
    """Field metadata: ``help``, and optionally ``min``/``max`` bounds or ``choices``."""
    return {"help": help, **meta}


def validate(obj) -> None:
    """Refuse a field outside its bounds or choices, naming it as the CLI spells it."""
    for f in fields(obj):
        v, flag = getattr(obj, f.name), f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {v!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"≥ {lo}" if hi is None else f"in {lo}..{hi}"
            raise ValueError(f"{flag} must be {bounds}, got {v}")


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 4096


def _items(v: object, each: Callable[[object], bool]) -> bool:
    return isinstance(v, list) and 0 < len(v) <= 10_000 and all(each(x) for x in v)


KINDS: dict[str, tuple[str, Callable[[object], bool], Callable[[object], list]]] = {
    # kind → (how a message says it, does a value have it, the numbers its bounds apply to)
    "int": ("an integer", _int, lambda v: [v]),
    "number": ("a finite number", _number, lambda v: [v]),
    "ints": ("a non-empty list of integers", lambda v: _items(v, _int), list),
    "numbers": ("a non-empty list of finite numbers", lambda v: _items(v, _number), list),
    "names": ("a name or a non-empty list of names",
              lambda v: _text(v) or _items(v, _text), lambda v: []),
}
"""What a method option may hold. ``--option KEY=VALUE`` parses VALUE as JSON, so a user's
``rank=8`` arrives as an int and ``alphas=[0,0.5]`` as a list; a kind checks that shape."""


@dataclass(frozen=True)
class MethodOption:
    """One ``--option KEY=VALUE`` a method reads: its kind (:data:`KINDS`), bounds on its
    numbers (every item of a list) and literal values accepted besides (``"auto"``)."""

    kind: str
    help: str
    min: float | None = None
    max: float | None = None
    also: tuple = ()

    def check(self, where: str, value: object) -> None:
        if value in self.also and not isinstance(value, bool):
            return
        said, fits, numbers = KINDS[self.kind]
        bounds = [] if self.min is None else [f"≥ {self.min}"]
        bounds += [] if self.max is None else [f"≤ {self.max}"]
        if not fits(value) or any((self.min is not None and n < self.min)
                                  or (self.max is not None and n > self.max)
                                  for n in numbers(value)):
            alt = "".join(f" or {a!r}" for a in self.also)
            raise ValueError(f"{where} must be {said}{' ' if bounds else ''}{' and '.join(bounds)}"
                             f"{alt}, got {value!r}")


def check_options(owner: str, declared: Mapping[str, MethodOption], given: Mapping) -> None:
    """Refuse a key ``owner`` does not read (a typo must not silently fall back to a default),
    listing the keys it does read, and a value of the wrong kind or out of bounds."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"unknown {owner} option(s) {', '.join(map(str, unknown))}; {owner} "
                         f"takes {', '.join(sorted(declared)) or 'no options'}")
    for key, value in given.items():
        declared[key].check(f"{owner} option {key}", value)


Opts = TypeVar("Opts", bound="OptionSet")


def option(kind: str, help: str, default: Any = None, **bounds) -> Any:
    """A field of an :class:`OptionSet`: ``--option KEY=VALUE`` with KEY the field's name, a
    :data:`KINDS` kind, ``min``/``max``/``also`` as :class:`MethodOption` takes them; the default
    is what the method uses when the key is not given (None: the method's own rule, its help
    says which)."""
    return field(default=default, metadata={"option": MethodOption(kind, help, **bounds)})


@dataclass(frozen=True)
class OptionSet:
    """The options one method reads, as a frozen dataclass of :func:`option` fields. The
    accepted keys, their checks, the CLI's help and the suite schema all derive from it."""

    @classmethod
    def declared(cls) -> dict[str, MethodOption]:
        return {f.name: f.metadata["option"] for f in fields(cls) if "option" in f.metadata}

    @classmethod
    def parse(cls: type[Opts], owner: str, given: Mapping) -> Opts:
        """The typed options of ``given`` (keys not given take their defaults), after
        :func:`check_options` has refused unknown keys and values of the wrong kind."""
        check_options(owner, cls.declared(), given)
        return cls(**given)
