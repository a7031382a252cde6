"""PAINT: α=0 is exactly the base model, α=1 exactly the fine-tuned one; buffers as documented."""

from __future__ import annotations

import torch
from helpers import snapshot

from deltapatch.methods import METHODS, MethodContext
from deltapatch.methods.finetune import finetune_copy
from deltapatch.methods.paint import EvalTask, interpolate, paint_sequential_step


def test_interpolation_endpoints_and_buffers(tiny_model, tiny_backbone, tiny_task, tiny_config,
                                             x, tmp_path):
    run = finetune_copy(tiny_model, tiny_task, tiny_config, tmp_path)
    theta_0, theta_1 = snapshot(tiny_backbone), snapshot(run.model.net)
    net = run.model.net.eval()
    with torch.no_grad():
        y_ft, f_ft = net(x), run.model(x)
    net.load_state_dict(interpolate(theta_0, theta_1, 0.0))
    with torch.no_grad():
        assert torch.equal(net(x), tiny_backbone(x))
    net.load_state_dict(interpolate(theta_0, theta_1, 1.0))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in theta_1.items()
               if v.is_floating_point())
    with torch.no_grad():  # α=1 is the fine-tuned model: base head and new head
        assert torch.equal(net(x), y_ft) and torch.equal(run.model(x), f_ft)
    mid = interpolate(theta_0, theta_1, 0.3)
    key = "layer1.0.bn1.running_var"
    assert torch.allclose(mid[key], 0.7 * theta_0[key] + 0.3 * theta_1[key])
    nbt = "layer1.0.bn1.num_batches_tracked"
    assert torch.equal(mid[nbt], theta_0[nbt]) and not torch.equal(theta_1[nbt], theta_0[nbt])


def test_paint_method_picks_alpha(tiny_model, tiny_backbone, tiny_task, tiny_base, tiny_config,
                                  x, tmp_path):
    before = snapshot(tiny_backbone)
    ctx = MethodContext(model=tiny_model, name="tiny", data=tiny_task, train=tiny_config,
                        out=tmp_path, base_data=tiny_base, options={"alphas": [0, 0.5, 1]})
    out = METHODS.get("paint").train(ctx)
    assert [r["alpha"] for r in out.extra["alpha_table"]] == [0, 0.5, 1]
    assert out.extra["alpha"] in (0, 0.5, 1)
    best = max(out.extra["alpha_table"], key=lambda r: r["score"])
    assert best["alpha"] == out.extra["alpha"]
    assert {"base_val", "base_test", "patch_val", "patch_test"} <= set(best)
    assert all(torch.equal(tiny_backbone.state_dict()[k], v) for k, v in before.items())


def test_sequential_step_carries_weights(tiny_model, tiny_backbone, tiny_task, tiny_base,
                                         tiny_config, tmp_path):
    base = EvalTask("base", tiny_base.val)
    step1 = paint_sequential_step(tiny_model, None, [base], tiny_task, tiny_config,
                                  tmp_path / "1", name="t1", alphas=[0, 1])
    tasks = [base, EvalTask("t1", tiny_task.val, step1.head)]
    prev = snapshot(step1.net)
    step2 = paint_sequential_step(tiny_model, step1.net, tasks, tiny_task, tiny_config,
                                  tmp_path / "2", name="t2", alphas=[0, 1])
    assert all(torch.equal(step1.net.state_dict()[k], v) for k, v in prev.items())
    assert {"base_val", "t1_val", "t2_val"} <= set(step2.choice.table[0])
    row = step2.choice.table[0]
    assert abs(row["score"] - (row["base_val"] + row["t1_val"] + row["t2_val"]) / 3) < 1e-9
    at_zero = paint_sequential_step(tiny_model, step1.net, tasks, tiny_task, tiny_config,
                                    tmp_path / "3", name="t2", alphas=[0])
    assert at_zero.choice.alpha == 0  # α=0 of a step is exactly the previous step's network
    assert all(torch.equal(at_zero.net.state_dict()[k], v) for k, v in prev.items())
    x = torch.randn(2, 3, 16, 16)
    assert step2.head(tiny_model.spec.features(step2.net, x)).shape == (2, 3)
