"""What the commands share: the command registry, backbone and data flags, and flags derived
from the settings dataclasses' own field metadata (:mod:`deltapatch.options`)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from ..backbones import list_backbones, load_backbone
from ..devices import DEVICES, PRECISIONS, resolve_device
from ..model import PatchedModel
from ..preprocess import MAX_SIZE, MIN_SIZE, SIZE_FACTOR, SIZE_FLOOR
from ..registry import Registry


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: Registry[str, Command] = Registry("command")


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default: where the text does not already say it,
    ``(default: VALUE)`` is added (``off`` for a switch, ``NAME on`` for ``--no-NAME``); a flag
    whose default is "nothing" says what that means in its own words (tests/test_cli.py walks
    every command's flags and checks both)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.required:
            return text
        if action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        if isinstance(action, argparse._StoreFalseAction):  # --no-NAME: NAME is on unless given
            return text + f" (default: {action.dest.replace('_', ' ')} on)"
        return text + " (default: %(default)s)"


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> exit code`` as ``deltapatch NAME``."""
    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS.register(name, Command(name, help, arguments, run))
        return run
    return deco


def backbone_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--backbone", required=required,
                   help="backbone name, or your model factory as path/to/file.py:function or "
                        f"package.module:function (names: {', '.join(list_backbones())})"
                        + ("" if required else "; needed unless --server (default: none)"))
    p.add_argument("--weights", default=None,
                   help="weights: a .safetensors / torch file, or a named set (imagenet, cifar10); "
                        "default: random init")


def patch_folders_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--patch DIR...``, repeatable: ``--patch A --patch B`` and ``--patch A B`` both keep A
    and B (``nargs="*"`` alone would keep only the last occurrence, silently)."""
    p.add_argument("--patch", type=Path, action="extend", nargs="+", default=[], metavar="DIR",
                   help=help + " (repeatable: --patch A --patch B equals --patch A B; "
                               "default: none)")


def device_args(p: argparse.ArgumentParser, precision: bool = False) -> None:
    """``--device`` (every command that runs a model) and, where training runs, ``--precision``."""
    p.add_argument("--device", default="auto",
                   help=f"where the model runs: {'|'.join(DEVICES)} (default: auto, which picks "
                        "cuda, then mps, then cpu); a device that is not there is an error")
    if precision:
        p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                       help="autocast dtype of the patch path (the base task always runs in the "
                            "backbone's own dtype; fp16 adds a grad scaler) (default: fp32)")


def patch_limit_args(p: argparse.ArgumentParser) -> None:
    """``--max-image-size``, where a command loads task folders (which may be untrusted)."""
    p.add_argument("--max-image-size", type=int, default=None, metavar="N",
                   help=f"largest preprocess.size a task folder may ask for (default: "
                        f"{SIZE_FACTOR}x the backbone's own input size, at least {SIZE_FLOOR}); "
                        "raise it for a patch you trained at a larger --image-size")


def limit_patches(model: PatchedModel, args: argparse.Namespace) -> PatchedModel:
    """``model`` with ``--max-image-size`` applied (checked first: a flag is input too)."""
    limit = getattr(args, "max_image_size", None)
    if limit is not None and not MIN_SIZE <= limit <= MAX_SIZE:
        raise ValueError(f"--max-image-size must be in {MIN_SIZE}..{MAX_SIZE}, got {limit}")
    model.max_image_size = limit
    return model


def load_model(args: argparse.Namespace) -> PatchedModel:
    """The backbone of ``--backbone``/``--weights`` on ``--device``, wrapped."""
    device = resolve_device(getattr(args, "device", "auto"))
    return limit_patches(PatchedModel(load_backbone(args.backbone, args.weights, device=device)),
                         args)


def _type_of(annotation: str) -> type:
    for name, t in (("bool", bool), ("int", int), ("float", float)):
        if annotation.split("|")[0].strip() == name:
            return t
    return str


def add_options(p: argparse.ArgumentParser, cls, names: Iterable[str],
                defaults: dict | None = None, required: Iterable[str] = (),
                more_help: dict[str, str] | None = None) -> None:
    """Flags for fields ``names`` of dataclass ``cls``, typed, bounded and documented by the
    fields themselves: a bool that defaults to True becomes ``--no-NAME``. ``required`` flags
    have no default; ``more_help`` appends to a field's help (e.g. the registered names)."""
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f = by_name[name]
        flag = "--" + name.replace("_", "-")
        default = (defaults or {}).get(name, f.default if f.default is not MISSING else None)
        help_text = f.metadata.get("help", "") + (more_help or {}).get(name, "")
        kind = _type_of(str(f.type))
        if kind is bool:
            if default:
                p.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                               help=help_text)
            else:
                p.add_argument(flag, dest=name, action="store_true", help=help_text)
            continue
        if name in required:
            p.add_argument(flag, dest=name, type=kind, required=True,
                           choices=f.metadata.get("choices"), help=help_text)
            continue
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(flag, dest=name, type=kind, default=default,
                       choices=f.metadata.get("choices"), help=help_text + shown)


def values(args: argparse.Namespace, cls, skip: Iterable[str] = ()) -> dict:
    """The parsed values of ``cls``'s fields that have flags."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if f.name not in skip and hasattr(args, f.name)}


def parse_stages(text: str) -> int | list:
    """``--stages``: an int (Δ(n)), or comma-separated indices / names; every item must be
    there (``","`` or ``"1,,2"`` is refused, not read as fewer stages)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise ValueError(f"--stages needs an int or comma-separated stage indices / names, got "
                         f"{text!r}")
    return [int(s) if s.isdigit() else s for s in items]


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is parsed as JSON when it can be."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_json(obj: dict) -> None:
    """One line of strict JSON (NaN would not be JSON: it is refused, not printed)."""
    print(json.dumps(obj, allow_nan=False))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised where the program is so that it unwinds as
    for Ctrl-C: saves in progress clean up, the last complete checkpoint stays, and ``main``
    exits ``exit_code`` (128 + 15, the shell's convention) with one line."""

    exit_code = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "terminated (SIGTERM); run the same command again to resume"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` instead of ending the process where
    it stands (Python's default), so a stopped ``train`` resumes as after Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
