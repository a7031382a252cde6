"""The frozen-feature cache's own rules: how much room it takes where, that a packed row of
another layout is refused, and that training on it runs the parts it cached (h_0 and F_1(h_0)).
Cached and uncached training agreeing is tests/test_perf.py's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deltapatch import PatchedModel, cache
from deltapatch.backbones.cifar import CifarResNet
from deltapatch.cache import CachedInput, cached_training, default_ram_limit, device_room
from deltapatch.data.sets import ImageSet, TaskData


def _model() -> PatchedModel:
    torch.manual_seed(0)
    return PatchedModel(CifarResNet(8).eval())


def _data(n: int = 12) -> TaskData:
    g = torch.Generator().manual_seed(1)

    def split(k: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (k, 3, 32, 32), generator=g, dtype=torch.uint8),
                        torch.arange(k) % 3)
    return TaskData("toy", split(n), split(6), split(6), ["a", "b", "c"])


def test_cached_rows_unpack_into_their_parts_and_another_layout_is_refused():
    unpack = CachedInput([(2,), (1, 3)], dtype=torch.float64)
    a, b = unpack.model_input(torch.arange(10.0).reshape(2, 5))
    assert a.tolist() == [[0, 1], [5, 6]] and b.tolist() == [[[2, 3, 4]], [[7, 8, 9]]]
    assert a.dtype == b.dtype == torch.float64
    with pytest.raises(RuntimeError, match="split_sizes"):  # another width: not silently cut
        unpack.model_input(torch.zeros(2, 6))


def test_the_ram_limit_is_a_quarter_of_the_free_memory_or_2_gib(monkeypatch):
    pages, size = 1000, 4096
    monkeypatch.setattr(cache.os, "sysconf", {"SC_AVPHYS_PAGES": pages,
                                              "SC_PAGE_SIZE": size}.__getitem__)
    limit = default_ram_limit()
    assert limit == pages * size // 4 and isinstance(limit, int)

    def missing(name):
        raise ValueError(name)
    monkeypatch.setattr(cache.os, "sysconf", missing)
    assert default_ram_limit() == 2 << 30


def test_a_gpu_cache_may_take_half_of_the_free_device_memory(monkeypatch):
    assert device_room(torch.device("cpu")) == 0
    free = {torch.device("cuda", 1): (1001, 8000)}  # asked of the cache's own GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: free.get(device, (0, 0)))
    assert device_room(torch.device("cuda", 1)) == 500


def test_cached_training_checks_its_dtype_and_defaults_to_float32():
    model, data = _model(), _data()
    model.add_patch("p", 3, stages=1)
    cached, _, unpack = cached_training(model, "p", data, model.preprocess)
    assert cached.train.images.dtype == torch.float32 and unpack.dtype == torch.float32
    half, _, _ = cached_training(model, "p", data, model.preprocess, dtype="bfloat16")
    assert half.train.images.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cache dtype 'float64': choose from float32, "
                                         "float16, bfloat16"):
        cached_training(model, "p", data, model.preprocess, dtype="float64")


def test_cached_training_over_the_ram_limit_goes_to_disk(monkeypatch):
    model, data = _model(), _data()
    model.add_patch("p", 3, stages=1)
    made = []
    real = cache.tempfile.mkstemp
    monkeypatch.setattr(cache.tempfile, "mkstemp", lambda **kw: made.append(kw) or real(**kw))
    cached_training(model, "p", data, model.preprocess)
    assert made == []  # a few KiB fit in RAM
    on_disk, _, _ = cached_training(model, "p", data, model.preprocess, max_ram_bytes=0)
    assert len(made) == 2  # train and val, each an unlinked memmap
    assert torch.equal(on_disk.train.images,
                       cached_training(model, "p", data, model.preprocess)[0].train.images)


def test_the_cached_forward_runs_the_cached_first_residual():
    """Training on the cache runs F_1(h_0) from the cache, not recomputed: a different cached
    F_1 gives a different output (and a head-only patch has no F_1 to cache)."""
    model, data = _model(), _data()
    model.add_patch("p", 3, stages=1)
    with torch.no_grad():
        for p in model.get_patch("p").parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cached, forward, unpack = cached_training(model, "p", data, model.preprocess)
    h0, r1 = unpack.model_input(cached.train.images[:4])
    with torch.no_grad():
        same = forward((h0, r1))
        x = model.preprocess.normalize(data.train.images[:4])
        torch.testing.assert_close(same, model(x, patch="p"), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(forward((h0, r1 + 1)), same, atol=1e-3)
    model.add_patch("head", 3, stages=0)
    head_cached, head_forward, head_unpack = cached_training(model, "head", data,
                                                             model.preprocess)
    parts = head_unpack.model_input(head_cached.train.images[:4])
    assert len(parts) == 1 and head_forward(parts).shape == (4, 3)


META = torch.device("meta")


def test_the_cache_is_in_ram_up_to_the_limit_and_on_disk_past_it(monkeypatch):
    made = []
    real = cache.tempfile.mkstemp
    monkeypatch.setattr(cache.tempfile, "mkstemp", lambda **kw: made.append(kw) or real(**kw))
    nbytes = 3 * 4 * 2  # float16
    ram = cache._storage((3, 4), torch.float16, nbytes, None)
    assert made == [] and ram.shape == (3, 4) and ram.dtype == torch.float16
    disk = cache._storage((3, 4), torch.float16, nbytes - 1, None)
    assert len(made) == 1 and disk.shape == (3, 4) and disk.dtype == torch.float16


def test_an_accelerator_cache_stays_on_the_device_while_it_fits_its_room(monkeypatch):
    nbytes = 5 * 2 * 4
    for room, where in ((nbytes, "meta"), (nbytes - 1, "cpu"), (10 * nbytes, "meta")):
        monkeypatch.setattr(cache, "device_room", lambda d, room=room: room if d == META else 0)
        t = cache._storage((5, 2), torch.float32, 1 << 20, None, META)
        assert (t.device.type, t.shape, t.dtype) == (where, (5, 2), torch.float32), room
    half = cache._storage((5, 2), torch.bfloat16, 1 << 20, None, META)
    assert half.device == META and half.dtype == torch.bfloat16


def test_a_disk_cache_is_an_unlinked_named_file_in_the_folder_asked_for(monkeypatch, tmp_path):
    """Named deltapatch-cache-*.bin in ``directory``: if a process dies between creating and
    unlinking it, the leftover says what it is and sits where the user pointed."""
    made = []
    real = cache.tempfile.mkstemp

    def spy(**kw):
        made.append(real(**kw)[1])
        return os.open(made[-1], os.O_RDWR), made[-1]
    monkeypatch.setattr(cache.tempfile, "mkstemp", spy)
    disk = cache._storage((2, 3), torch.float32, 0, tmp_path)
    (name,) = made
    assert Path(name).parent == tmp_path and Path(name).name.startswith("deltapatch-cache-")
    assert name.endswith(".bin") and not Path(name).exists()  # unlinked: no disk left behind
    disk[:] = 1.0
    assert disk.sum() == 6


def test_a_host_cache_for_a_gpu_is_pinned(monkeypatch):
    """Pinned host memory lets batches reach the GPU without blocking; a CPU run does not pin."""
    pins = []
    real = torch.empty

    def spy(*args, pin_memory=False, **kw):
        if args and args[0] == (2, 2):  # the cache itself, not the element-size probe
            pins.append(pin_memory)
        return real(*args, **kw)
    monkeypatch.setattr(cache, "device_room", lambda d: 0)
    monkeypatch.setattr(torch, "empty", spy)
    cache._storage((2, 2), torch.float32, 1 << 20, None, torch.device("cuda", 0))
    cache._storage((2, 2), torch.float32, 1 << 20, None, torch.device("cpu"))
    assert pins == [True, False]


def test_use_cache_refusals_say_what_to_do():
    assert cache.use_cache("auto", False) and not cache.use_cache("auto", True)
    assert cache.use_cache("on", False) and not cache.use_cache("off", False)
    with pytest.raises(ValueError, match="^cache mode 'maybe': choose from auto, on, off$"):
        cache.use_cache("maybe", False)
    with pytest.raises(ValueError, match=r"^cached features need augmentation off "
                                         r"\(--no-augment\): augmented images give different "
                                         r"frozen features every epoch$"):
        cache.use_cache("on", True)
