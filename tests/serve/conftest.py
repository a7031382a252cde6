"""A tiny live server in-process: cifar_resnet20 (random init), two Δ-patches saved to tmp and
loaded through the patchset as ``deltapatch serve`` loads them, and PNG images."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import deltapatch as dp
from deltapatch.serve.app import create_app
from deltapatch.serve.patchset import PatchSet


def png(seed: int, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def save_patch(backbone: torch.nn.Module, folder: Path, name: str, classes: int, stages,
               method: str = "delta") -> Path:
    """A patch folder made on ``backbone`` by a separate model (the server's never sees it)."""
    donor = dp.PatchedModel(backbone)
    patch = donor.add_patch(name, classes, stages=stages, method=method,
                            class_names=[f"{name}-{i}" for i in range(classes)])
    for m in patch.modules():  # non-trivial statistics: a skipped Δ-stage would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    return donor.save_patch(name, folder / name)


@pytest.fixture
def patch_dir(tmp_path, backbone) -> Path:
    root = tmp_path / "patches"
    save_patch(backbone, root, "a", 5, 1)
    save_patch(backbone, root, "b", 3, [0, 2])
    return root


@pytest.fixture
def patchset(backbone, patch_dir) -> PatchSet:
    reg = PatchSet(dp.PatchedModel(backbone).eval())
    assert reg.load_dir(patch_dir) == ["a", "b"]
    return reg


@pytest.fixture
def library(backbone, patch_dir) -> dp.PatchedModel:
    """The same tasks loaded by the library alone: what server answers must equal."""
    model = dp.PatchedModel(backbone).eval()
    for name in ("a", "b"):
        model.load_patch(patch_dir / name)
    return model


def run_async(patchset: PatchSet, body, **settings):
    """Run ``await body(client, app)`` against a started app (lifespan included), bounded."""
    app = create_app(patchset, **settings)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.wait_for(body(client, app), 60)

    return asyncio.run(main())
