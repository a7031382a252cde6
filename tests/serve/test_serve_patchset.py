"""A request's patches are held in one place (``PatchSet.holding``): a removal waits for
every request holding the patch, queued work included, and nothing stays held after."""

from __future__ import annotations

import asyncio
import threading

import pytest

from deltapatch.serve.patchset import UnknownPatch


def removal(patchset, name: str) -> threading.Thread:
    """Start ``patchset.remove(name)`` in a thread (it blocks while a request holds ``name``)."""
    t = threading.Thread(target=patchset.remove, args=(name,), daemon=True)
    t.start()
    return t


def test_exit_releases_so_a_removal_goes_through(patchset):
    async def go():
        async with patchset.holding(["a", "__base__"]) as hold:
            assert [i.name for i in hold.infos] == ["a", "__base__"]
            waiting = removal(patchset, "a")
            waiting.join(0.3)
            assert waiting.is_alive() and "a" in patchset.model.patches  # held: it waits
        return waiting

    waiting = asyncio.run(go())
    waiting.join(5)
    assert not waiting.is_alive() and "a" not in patchset.model.patches


def test_queued_work_keeps_the_patches_past_the_block(patchset):
    async def go():
        work = asyncio.get_running_loop().create_future()
        async with patchset.holding(["a"]) as hold:
            hold.until(work)
        waiting = removal(patchset, "a")  # the block is over, the work is not
        await asyncio.sleep(0.3)
        assert waiting.is_alive() and "a" in patchset.model.patches
        work.set_result(None)
        await asyncio.sleep(0.05)  # the done-callback runs on the loop
        return waiting

    waiting = asyncio.run(go())
    waiting.join(5)
    assert not waiting.is_alive() and "a" not in patchset.model.patches


def test_an_error_in_the_block_releases(patchset):
    async def go():
        with pytest.raises(RuntimeError):
            async with patchset.holding(["a"]):
                raise RuntimeError("the request failed")

    asyncio.run(go())
    patchset.remove("a")  # would block forever if "a" were still held
    assert "a" not in patchset.model.patches


def test_an_unknown_name_holds_nothing(patchset):
    async def go():
        async with patchset.holding(["a", "nosuch"]):
            pass  # pragma: no cover - never entered

    with pytest.raises(UnknownPatch, match="nosuch"):
        asyncio.run(go())
    patchset.remove("a")
    assert "a" not in patchset.model.patches
