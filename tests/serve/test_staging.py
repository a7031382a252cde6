"""Staging a batch's images for the device: on the CPU each group is a stack of its images; for
a GPU all images of one dtype are written once into one pinned host buffer of that dtype, that
buffer (and no copy of it) is what goes to the device, and each group is a view of it. The GPU is
played by recording what staging asks of the host (CI has none)."""

from __future__ import annotations

import pytest
import torch

from deltapatch.serve import staging


def _images(n: int, dtype: torch.dtype = torch.uint8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 4, 4), generator=g).to(dtype) for _ in range(n)]


@pytest.fixture
def recorded(monkeypatch):
    """Staging for 'cuda' on the host: each buffer staging allocates (and whether pinned), and
    each tensor it sends, recorded; the send returns the tensor itself."""
    made, sent = [], []
    empty = torch.empty

    def record_empty(*size, pin_memory=False, **kw):
        t = empty(*size, **kw)
        made.append((t, pin_memory))
        return t

    def record_send(x, device):
        sent.append((x, device))
        return x

    monkeypatch.setattr(staging.torch, "empty", record_empty)
    monkeypatch.setattr(staging, "to_device", record_send)
    return made, sent


@pytest.mark.parametrize("sizes", [(1,), (2, 1, 3)])
def test_for_a_gpu_one_pinned_buffer_per_dtype_goes_over_and_groups_are_its_views(recorded, sizes):
    made, sent = recorded
    groups = [_images(n, seed=i) for i, n in enumerate(sizes)]
    floats = [_images(2, torch.float32, seed=9)]
    device = torch.device("cuda")
    out = staging.stage(groups + floats, device)
    assert [(t.dtype, t.numel(), pinned) for t, pinned in made] == [
        (torch.uint8, sum(sizes) * 48, True), (torch.float32, 2 * 48, True)]
    assert len(sent) == 2 and all(x is t for (x, _), (t, _) in zip(sent, made, strict=True))
    assert all(d == device for _, d in sent)
    for o, images, (buffer, _) in zip(out, groups + floats, [made[0]] * len(groups) + [made[1]],
                                      strict=True):
        assert torch.equal(o, torch.stack(images))
        assert o.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_for_another_device_the_buffer_is_not_pinned(recorded):
    """Pinned host memory serves copies to a CUDA device only."""
    made, _ = recorded
    staging.stage([_images(2)], torch.device("meta"))
    assert [pinned for _, pinned in made] == [False]


def test_on_the_cpu_each_group_is_the_stack_of_its_images_with_no_buffer(recorded):
    """Nothing to copy on the CPU: no flat buffer is written, nothing is sent."""
    made, sent = recorded
    groups = [_images(2), _images(1, seed=1), _images(3, torch.float32, seed=2)]
    out = staging.stage(groups, torch.device("cpu"))
    assert [o.dtype for o in out] == [torch.uint8, torch.uint8, torch.float32]
    for o, images in zip(out, groups, strict=True):
        assert torch.equal(o, torch.stack(images))
    assert made == [] and sent == []
