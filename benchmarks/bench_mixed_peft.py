"""One mixed batch over N tasks: deltapatch's routed forward over N Δ(1) patches vs Hugging Face
PEFT LoRA's mixed batch (``model(x, adapter_names=[...])``) over N adapters on the same
backbone, each / the plain backbone forward of the same batch, timed side by side in one
process. PEFT's LoRA sits on layer4's convs (Δ(1)'s stage) at the rank whose parameters reach
Δ(1)'s (head excluded), and at r = 8; each task has its own 10-class head (PEFT:
``modules_to_save=["fc"]``). Then the case PEFT cannot serve: heads of different sizes in one
batch (PEFT issue #2136).

    python benchmarks/bench_mixed_peft.py --threads 1            # ~3 min on 2 shared cores
    python benchmarks/bench_mixed_peft.py --threads 1 --quick
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _common import header, interleaved, med, ratio, set_threads
from torch import nn

from deltapatch import PatchedModel
from deltapatch.methods.lora import auto_rank, stage_convs
from deltapatch.metrics import count_params


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def ours(n: int, heads: list[int]) -> PatchedModel:
    model = PatchedModel(backbone()).eval()
    for i in range(n):
        model.add_patch(f"p{i}", heads[i % len(heads)], stages=1)
    return model


def delta1_params(model: PatchedModel) -> int:
    patch = model.get_patch("p0")
    return count_params(patch, trainable=True) - count_params(patch.head, trainable=True)


def peft_model(n: int, rank: int, targets: list[str], classes: int = 10) -> nn.Module:
    """``n`` LoRA adapters (B randomised, as after training) with their own head each."""
    import peft
    net = backbone()
    net.fc = nn.Linear(net.fc.in_features, classes)
    config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets,
                             modules_to_save=["fc"], init_lora_weights=False)
    model = peft.get_peft_model(net, config, adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", config)
    return model.eval()


def run(size: int, batch: int, ns: list[int], rounds: int) -> None:
    x = torch.randn(batch, 3, size, size)
    plain = backbone()
    probe = ours(1, [10])
    targets = stage_convs(probe, [probe.num_stages - 1])
    budget = delta1_params(probe)
    r_match = auto_rank(probe, targets, budget)
    variants = {"base": lambda: plain(x)}
    for n in ns:
        names = [f"p{r % n}" for r in range(batch)]
        adapters = [f"a{r % n}" for r in range(batch)]
        model = ours(n, [10])
        variants[f"ours_N{n}"] = lambda m=model, names=names: m(x, patches=names)
        for rank in (r_match, 8):
            pm = peft_model(n, rank, targets)
            variants[f"peft_r{rank}_N{n}"] = lambda m=pm, a=adapters: m(x, adapter_names=a)
    with torch.inference_mode():
        times = interleaved(variants, rounds)
    print(f"\n## ResNet-18 (random init) @ {size}px, batch {batch}, {rounds} rounds (+1 warm-up), "
          f"tasks mixed uniformly (row r → task r mod N)")
    print(f"Δ(1) trainable parameters (head excluded): {budget:,}; LoRA on layer4's "
          f"{len(targets)} convs: rank {r_match} matches it, r = 8 is PEFT's common default")
    print(f"base forward: median {med(times['base']) * 1e3:.1f} ms\n")
    print("| N tasks | ours (Δ(1)) / base | PEFT LoRA r=%d / base | PEFT LoRA r=8 / base |"
          % r_match)
    print("|---|---|---|---|")
    for n in ns:
        print(f"| {n} | {ratio(times, f'ours_N{n}', 'base'):.3f} | "
              f"{ratio(times, f'peft_r{r_match}_N{n}', 'base'):.3f} | "
              f"{ratio(times, f'peft_r8_N{n}', 'base'):.3f} |")
    heterogeneous(x, rounds)


def heterogeneous(x: torch.Tensor, rounds: int) -> None:
    """8 tasks with heads of 2..100 classes in one batch: ours answers, PEFT raises."""
    sizes = [2, 5, 10, 20, 37, 50, 75, 100]
    model = ours(len(sizes), sizes)
    names = [f"p{r % len(sizes)}" for r in range(len(x))]
    with torch.inference_mode():
        out = model(x, patches=names)
        t = interleaved({"ours": lambda: model(x, patches=names)}, rounds)
    print(f"\nHeads of {sizes} classes in one batch: ours → logits {tuple(out.shape)} (padded "
          f"to the widest head), median {med(t['ours']) * 1e3:.1f} ms.")
    import peft
    net = backbone()
    net.fc = nn.Linear(net.fc.in_features, sizes[0])
    config = peft.LoraConfig(r=8, target_modules=["layer4.0.conv1"], modules_to_save=["fc"])
    pm = peft.get_peft_model(net, config, adapter_name="a0")
    for i, c in enumerate(sizes[1:], start=1):
        pm.add_adapter(f"a{i}", config)
        wrapper = pm.base_model.model.fc  # PEFT's ModulesToSaveWrapper: one fc copy per adapter
        wrapper.modules_to_save[f"a{i}"] = nn.Linear(net.fc.in_features, c)
    try:
        with torch.inference_mode():
            got = pm.eval()(x, adapter_names=[f"a{r % len(sizes)}" for r in range(len(x))])
        print(f"PEFT: answered {tuple(got.shape)}")
    except (RuntimeError, ValueError, TypeError) as err:
        print(f"PEFT: {type(err).__name__}: {str(err).splitlines()[0][:160]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tasks", type=int, nargs="+", default=[8, 64])
    p.add_argument("--rounds", type=int, default=None, help="default 7 (quick: 2)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    set_threads(a.threads)
    header("mixed batch over N tasks: deltapatch routed Δ(1) vs PEFT LoRA adapter_names")
    run(a.size, a.batch_size, a.tasks, a.rounds or (2 if a.quick else 7))


if __name__ == "__main__":
    main()
