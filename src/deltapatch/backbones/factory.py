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
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import BackboneError


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
    try:
        model = fn()
    except Exception as err:  # noqa: BLE001  (the user's code: say where it failed)
        raise BackboneError(f"backbone factory '{ref}' raised {_line(err, where)}") from None
    if not isinstance(model, nn.Module):
        raise BackboneError(f"backbone factory '{ref}' returned a {type(model).__name__}; it must "
                            "return the torch.nn.Module (set model.deltapatch_spec for its spec)")
    return model


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
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001
        del sys.modules[name]
        raise BackboneError(f"running '{path}' failed: {_line(err, str(file))}") from None
    return module


def _import_module(dotted: str, ref: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except Exception as err:  # noqa: BLE001
        raise BackboneError(f"cannot import module '{dotted}' for backbone '{ref}': "
                            f"{_line(err, None)} (a file needs its path: PATH.py:FUNCTION)") from None


def _line(err: BaseException, file: str | None) -> str:
    """``Type: message`` on one line, with the line of ``file`` where it was raised if any."""
    msg = str(err).splitlines()[0] if str(err) else ""
    at = [f for f in traceback.extract_tb(err.__traceback__)
          if file is not None and Path(f.filename).resolve() == Path(file).resolve()]
    where = f" at line {at[-1].lineno}" if at else ""
    return f"{type(err).__name__}: {msg}{where}"
