"""Named weights from the internet (torchvision's and timm's ImageNet sets) that fail at once
when the machine is offline.

Left alone, torchvision and the Hugging Face hub try to download for a long time on a machine
whose network silently drops packets, and then fail with an error that does not say what to do.
So a download first looks for the file in the local cache (no network needed then), and
otherwise opens one TCP connection to the download host with a 2 s timeout; if that fails, the
error names ``--weights PATH`` straight away.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from ..errors import BackboneError

PROBE_TIMEOUT_S = 2.0
TORCHVISION_HOST = "download.pytorch.org"
HF_HOST = "huggingface.co"
FIX = ("download the weights elsewhere and pass them as a file with --weights PATH "
       "(weights='path/to/file.safetensors' in Python)")


def host_reachable(host: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds. It runs in a
    daemon thread so that a slow DNS lookup is bounded by the timeout too."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def cached_weights(family: str, name: str) -> bool:
    """Whether ImageNet weights of model ``name`` of ``family`` ("torchvision" or "timm") are
    already in the local download cache."""
    try:
        if family == "torchvision":
            import torch.hub
            from torchvision.models import get_model_weights

            url = get_model_weights(name).DEFAULT.url
            return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).exists()
        if family == "timm" and importlib.util.find_spec("huggingface_hub") is not None:
            import timm
            from huggingface_hub import try_to_load_from_cache

            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str)
                                      for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:  # noqa: BLE001  (a cache we cannot read is a cache we do not have)
        return False
    return False


@contextmanager
def _hub_offline(on: bool) -> Iterator[None]:
    """Hugging Face hub offline mode while loading from its cache (no update check)."""
    if not on or importlib.util.find_spec("huggingface_hub") is None:
        yield
        return
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def imagenet_download(build: Callable[[], nn.Module], family: str, name: str
                      ) -> Callable[[], nn.Module]:
    """A loader for named weights: from the cache if there, else downloaded if the host answers,
    else a :class:`BackboneError` naming ``--weights PATH`` at once."""
    host = TORCHVISION_HOST if family == "torchvision" else HF_HOST

    def load() -> nn.Module:
        cached = cached_weights(family, name)
        if not cached and not host_reachable(host):
            raise BackboneError(f"could not get ImageNet weights for '{name}': {host} cannot be "
                                f"reached and they are not in the local cache: {FIX}.")
        try:
            with _hub_offline(cached and family == "timm"):
                return build()
        except Exception as err:  # noqa: BLE001  (URLError, socket and hub errors)
            raise BackboneError(f"could not get ImageNet weights for '{name}' "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
                                f" If this machine is offline, {FIX}.") from None

    return load
