"""A user's model factory as a backbone: ``path/to/file.py:build`` or ``package.module:build``.

This is how ``deltapatch train --backbone my_cnn.py:build`` patches a CNN that deltapatch does
not know. The convention (docs/BRING_YOUR_OWN.md):

* ``build()`` takes no arguments and returns the ``nn.Module`` (random init or its own weights);
* it may set ``model.deltapatch_spec = StageSpec(...)`` (else the spec registered for the
  model's type is used) and ``model.deltapatch_preprocess = Preprocess(size, mean, std)``
  (default: ImageNet's at 224 px);
* the file registers its sub-block types with ``deltapatch.register_block`` at import.

Loading a ``.py`` file runs it, as ``python file.py`` would: that is what the user asks for, so
only pass files you trust. A file is imported once per process (under a name derived from its
path), so its registrations are not repeated when a second model is built from it.

The user's code runs inside :func:`_user_code`: whatever it raises at import or in ``build()``,
``SystemExit`` and ``KeyboardInterrupt`` included, becomes one :class:`BackboneError` that names
the file and function, so a stray ``sys.exit(0)`` cannot end a command "successfully" with
nothing done. What ``build()`` returns is checked (:func:`_check_result`) before anything uses it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import BackboneError
from ..preprocess import MAX_SIZE, Preprocess
from .spec import StageSpec, has_spec


def is_factory_ref(name: str) -> bool:
    """``module_or_file:function`` with a function name that is an identifier."""
    where, sep, fn = name.rpartition(":")
    return bool(sep and where and fn.isidentifier())


def build_from_factory(ref: str) -> nn.Module:
    """Import the module or file of ``ref``, call its function, and return the model.

    Raises:
        BackboneError: one line that says what is missing or what failed.
    """
    where, _, fn_name = ref.rpartition(":")
    module = _import_file(where, ref) if where.endswith(".py") else _import_module(where, ref)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        defined = [k for k, v in vars(module).items()
                   if callable(v) and getattr(v, "__module__", None) == module.__name__]
        raise BackboneError(f"'{where}' has no function '{fn_name}' for backbone '{ref}' "
                            f"(it defines: {', '.join(defined) or 'no functions'})")
    with _user_code(f"backbone factory '{ref}'", where):
        model = fn()
    _check_result(model, ref)
    return model


def _check_result(model: object, ref: str) -> None:
    """``build()``'s result must be a module deltapatch can walk: a spec of its own (a
    ``StageSpec``) or one registered for its type, and a valid ``Preprocess`` if it sets one."""
    said = f"backbone factory '{ref}' returned"
    if not isinstance(model, nn.Module):
        raise BackboneError(f"{said} a {type(model).__name__}; it must return the "
                            "torch.nn.Module (set model.deltapatch_spec for its spec)")
    spec = getattr(model, "deltapatch_spec", None)
    if spec is not None and not isinstance(spec, StageSpec):
        raise BackboneError(f"{said} a model whose deltapatch_spec is a {type(spec).__name__}; "
                            "set it to a deltapatch.StageSpec(...) (docs/BRING_YOUR_OWN.md)")
    if not has_spec(model):
        raise BackboneError(f"{said} a {type(model).__qualname__}, which has no stage spec: set "
                            "model.deltapatch_spec = deltapatch.StageSpec(...) in the factory, "
                            "or register one with deltapatch.register_spec "
                            "(docs/BRING_YOUR_OWN.md)")
    pre = getattr(model, "deltapatch_preprocess", None)
    if pre is not None and not _valid_preprocess(pre):
        raise BackboneError(f"{said} a model whose deltapatch_preprocess is {_show(pre)}; set "
                            f"it to a deltapatch.Preprocess(size) with size in 1..{MAX_SIZE} "
                            "and three finite means and positive stds")


def _valid_preprocess(pre: object) -> bool:
    if not isinstance(pre, Preprocess):
        return False
    size_ok = isinstance(pre.size, int) and not isinstance(pre.size, bool) \
        and 1 <= pre.size <= MAX_SIZE
    try:
        mean, std = [float(v) for v in pre.mean], [float(v) for v in pre.std]
    except (TypeError, ValueError):
        return False
    return (size_ok and len(mean) == len(std) == 3 and all(map(math.isfinite, mean + std))
            and min(std) > 0)


def _show(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


@contextmanager
def _user_code(what: str, file: str | None) -> Iterator[None]:
    """Run the user's code; anything it raises (``BaseException``: an exit or an interrupt
    too) becomes one line naming ``what``, with the line of ``file`` it came from."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001  (the user's code must not end the command)
        raise _user_error(what, err, file) from None


def _user_error(what: str, err: BaseException, file: str | None) -> BackboneError:
    hint = (" (a factory must return its model, not exit; put script code under "
            "`if __name__ == '__main__':`)" if isinstance(err, SystemExit) else "")
    return BackboneError(f"{what} raised {_line(err, file)}{hint}")


def _import_file(path: str, ref: str) -> ModuleType:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise BackboneError(f"backbone factory file '{path}' not found (from '{ref}'); pass "
                            "--backbone PATH.py:FUNCTION with an existing file")
    name = "deltapatch_factory_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _user_code(f"running '{path}' for backbone '{ref}'", str(file)):
            spec.loader.exec_module(module)
    except BackboneError:
        del sys.modules[name]
        raise
    return module


def _import_module(dotted: str, ref: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except ImportError as err:
        raise BackboneError(f"cannot import module '{dotted}' for backbone '{ref}': "
                            f"{_line(err, None)} (a file needs its path: PATH.py:FUNCTION)") from None
    except BaseException as err:  # noqa: BLE001  (the module's own code failed or exited)
        raise _user_error(f"importing module '{dotted}' for backbone '{ref}'", err, None) from None


def _line(err: BaseException, file: str | None) -> str:
    """``Type: message`` on one line (``Type`` alone when it has no message), with the line of
    ``file`` where it was raised if any."""
    msg = str(err).splitlines()[0] if str(err).strip() else ""
    at = [f for f in traceback.extract_tb(err.__traceback__)
          if file is not None and Path(f.filename).resolve() == Path(file).resolve()]
    where = f" at line {at[-1].lineno}" if at else ""
    return f"{type(err).__name__}{': ' + msg if msg else ''}{where}"
