"""LoRA's rank bound, exactly (issue 28, survivor 3): the largest full rank of the targeted convs
is accepted, one more is refused, when planning a run and when loading a stored task."""

from __future__ import annotations

import pytest

import deltapatch as dp
from deltapatch.errors import PatchError
from deltapatch.methods import MethodContext, get_method, load_task
from deltapatch.methods.lora import plan
from deltapatch.patch import read_patch, write_patch


def _limit(model, targets) -> int:
    """The bound written out: a conv's weight reshaped to out × (in·kh·kw) has full rank
    min(out, in·kh·kw); a rank above the largest of those adds parameters, not power."""
    ranks = []
    for t in targets:
        c = model.backbone.get_submodule(t)
        ranks.append(min(c.out_channels, c.in_channels * c.kernel_size[0] * c.kernel_size[1]))
    return max(ranks)


def _ctx(model, task, config, out, **options) -> MethodContext:
    return MethodContext(model=model, name="tiny", data=task, train=config, out=out,
                         stages=1, options=options)


def test_plan_accepts_the_full_rank_and_refuses_one_more(tiny_model, tiny_task, tiny_config,
                                                         tmp_path):
    auto = plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path))
    limit = _limit(tiny_model, auto.targets)
    assert 1 < limit < 10**5
    assert plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path,
                                 rank=limit)).rank == limit
    with pytest.raises(ValueError, match=f"lora rank {limit + 1} exceeds the largest full "
                                         f"rank {limit}"):
        plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path, rank=limit + 1))


def test_a_stored_task_at_the_full_rank_loads_and_one_more_is_refused(
        tiny_model, tiny_backbone, tiny_task, tiny_config, tmp_path):
    targets = plan(tiny_model, _ctx(tiny_model, tiny_task, tiny_config, tmp_path)).targets
    limit = _limit(tiny_model, targets)
    get_method("lora").train(_ctx(tiny_model, tiny_task, tiny_config, tmp_path / "t",
                                  rank=limit))
    config, tensors = read_patch(tmp_path / "t")
    assert config.options["rank"] == limit
    fresh = dp.PatchedModel(tiny_backbone)
    load_task(fresh, tmp_path / "t")  # no error: the bound itself is allowed
    config.options = {**config.options, "rank": limit + 1}
    write_patch(tmp_path / "over", config, tensors)  # a valid hash: only the bound stands
    fresh = dp.PatchedModel(tiny_backbone)
    with pytest.raises(PatchError, match=f"rank {limit + 1} does not fit its targets"):
        load_task(fresh, tmp_path / "over")
    assert not fresh.patches
