"""The server's patch set: which Δ-patches requests may name, added and removed at runtime.

The live :class:`~deltapatch.model.PatchedModel` holds the modules; the patch set decides what is
*visible*. A patch becomes visible only after :func:`~deltapatch.methods.load_task` has fully
checked and attached it (the model is unchanged when that fails), and a patch being removed
becomes invisible at once but leaves the model only when the last request holding it is done,
so a removal never pulls a module out from under a forward that is running or queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PatchError
from ..methods import get_method, load_task
from ..metrics import folder_bytes
from ..model import BASE, PatchedModel
from ..patch import CLASSIFICATION, CONFIG_FILE, PatchConfig, read_config
from ..preprocess import Preprocess
from ..registry import RegistryError


class UnknownPatch(PatchError):
    """A request names a patch that is not (or no longer) loaded: HTTP 404."""


class DuplicatePatch(PatchError):
    """An upload's name is taken (or being added or removed): HTTP 409."""


class NotBatchable(PatchError):
    """A task folder of a method whose task is not a Δ-family patch: HTTP 422."""


@dataclass(frozen=True)
class PatchInfo:
    """What ``GET /v1/patches`` lists and what a request needs to answer with labels."""

    name: str
    num_classes: int
    stages: list[int]
    method: str
    bytes: int
    labels: list[str]
    preprocess: Preprocess

    def public(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "stages": self.stages,
                "method": self.method, "bytes": self.bytes,
                "image_size": self.preprocess.size}


def check_batchable(config: PatchConfig) -> None:
    """Only classification tasks that load as patches of the shared model can join a routed
    batch."""
    if config.task != CLASSIFICATION:
        raise NotBatchable(f"task '{config.name}' is a {config.task} patch; this server answers "
                           "classification patches. Run it with `deltapatch predict --patch DIR`.")
    try:
        method = get_method(config.method)
    except RegistryError as err:
        raise NotBatchable(f"task '{config.name}': {err}") from None
    if not method.batchable:
        raise NotBatchable(
            f"task '{config.name}' was made with method '{config.method}'; this server batches "
            "Δ-family patches only (delta, linear and the skip ablations). Serve other methods "
            "with `deltapatch predict --patch DIR`.")


@dataclass
class Hold:
    """What :meth:`PatchSet.holding` gives a request: its tasks' infos, and the queued
    work (if any) that must finish before they are released."""

    infos: list[PatchInfo]
    work: asyncio.Future | None = None

    def until(self, work: asyncio.Future) -> None:
        """Keep the tasks held until ``work`` is done, past the end of the ``async with``."""
        self.work = work


class PatchSet:
    """Visible patches of one live model, with per-patch in-flight counts."""

    def __init__(self, model: PatchedModel) -> None:
        self.model = model
        self._cond = threading.Condition()
        self._visible: dict[str, PatchInfo] = {}
        self._busy: set[str] = set()  # names being added or removed: not free, not visible
        self._inflight: dict[str, int] = {}
        self.base = PatchInfo(BASE, model.base_classes, [], "base", 0,
                              model.base_labels, model.preprocess)

    # ------------------------------------------------------------ reading
    def infos(self) -> list[PatchInfo]:
        with self._cond:
            return sorted(self._visible.values(), key=lambda i: i.name)

    def __len__(self) -> int:
        with self._cond:
            return len(self._visible)

    def info(self, name: str) -> PatchInfo:
        if name == BASE:
            return self.base
        with self._cond:
            if name not in self._visible:
                raise UnknownPatch(f"no patch named '{name}' is loaded")
            return self._visible[name]

    def acquire(self, names: Iterable[str]) -> list[PatchInfo]:
        """Keep ``names`` in the model until :meth:`release` (a request's whole life, queue
        included): a removal waits for it. Unknown names raise :class:`UnknownPatch`."""
        names = list(dict.fromkeys(names))
        with self._cond:
            infos = [self.base if n == BASE else self._visible.get(n) for n in names]
            missing = [n for n, i in zip(names, infos, strict=True) if i is None]
            if missing:
                raise UnknownPatch(f"no patch named '{missing[0]}' is loaded")
            for n in names:
                self._inflight[n] = self._inflight.get(n, 0) + 1
        return infos

    @contextlib.asynccontextmanager
    async def holding(self, names: Iterable[str]) -> AsyncIterator[Hold]:
        """A request's patches, held for its whole life in one place: acquired on entry
        (:class:`UnknownPatch` if one is not loaded), released on exit, or, once the request
        has queued work (:meth:`Hold.until`), when that work is done, even if the client left."""
        names = tuple(names)
        hold = Hold(self.acquire(names))
        try:
            yield hold
        finally:
            if hold.work is None:
                self.release(names)
            else:
                hold.work.add_done_callback(lambda _: self.release(names))

    def release(self, names: Iterable[str]) -> None:
        with self._cond:
            for n in dict.fromkeys(names):
                self._inflight[n] -= 1
                if not self._inflight[n]:
                    del self._inflight[n]
            self._cond.notify_all()

    # ------------------------------------------------------------ changing
    def load_dir(self, folder: Path) -> list[str]:
        """Every task folder directly under ``folder`` (at start-up); the first bad one raises,
        so a server never starts with part of what it was told to serve."""
        if not folder.is_dir():
            raise PatchError(f"--patches {folder} is not a folder")
        subs = sorted(p for p in folder.iterdir() if (p / CONFIG_FILE).is_file())
        return [self.add(p) for p in subs]

    def add(self, folder: Path) -> str:
        """Check and attach one task folder, then make it visible; returns its name.

        Raises:
            DuplicatePatch: the name is loaded, or being added or removed.
            NotBatchable: not a Δ-family task.
            PatchError: anything else wrong with the folder (the model is unchanged).
        """
        config = read_config(folder)
        check_batchable(config)
        name = config.name
        with self._cond:
            if name in self._visible or name in self._busy or name in self.model.patches:
                raise DuplicatePatch(f"a patch named '{name}' is already loaded; DELETE "
                                     f"/v1/patches/{name} first")
            self._busy.add(name)
        try:
            task = load_task(self.model, folder)  # every check runs before the model changes
            cfg = task.config
            info = PatchInfo(name, cfg.num_classes, list(cfg.stages), cfg.method,
                             folder_bytes(folder), cfg.labels, cfg.preprocess)
        finally:
            with self._cond:
                self._busy.discard(name)
        with self._cond:
            self._visible[name] = info
        return name

    def remove(self, name: str) -> None:
        """Hide ``name`` now; take it out of the model once no request holds it."""
        with self._cond:
            if name not in self._visible:
                raise UnknownPatch(f"no patch named '{name}' is loaded")
            del self._visible[name]
            self._busy.add(name)
            try:
                self._cond.wait_for(lambda: not self._inflight.get(name))
                self.model.remove_patch(name)
            finally:
                self._busy.discard(name)
