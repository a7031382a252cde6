"""Figure 3: base-task throughput through ``PatchedModel`` (``model(x)``, with patches loaded
and none active) / the plain ``backbone(x)``; goal ≥ 0.9. Also records two things tried on
the base path: ``inference_mode`` vs ``no_grad``, and ``channels_last`` (on a copy: the
backbone itself is never converted, its outputs must stay bit-identical).

    python benchmarks/bench_base_path.py --threads 1     # ~1-2 min
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import header, interleaved, med, ratio, set_threads

from deltapatch import PatchedModel, load_backbone

CASES = {"cifar_resnet56": 32, "resnet18": 64}


def _inference(f, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return f(x)


def run_case(name: str, size: int, batches: list[int], rounds: int) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(name)
    model = PatchedModel(backbone).eval()
    for i in range(4):
        model.add_patch(f"p{i}", 10, stages=1)
    cl = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    print(f"\n## {name} @ {size}px, {rounds} rounds (+1 warm-up) per batch size")
    print(f"{'batch':>5} {'PatchedModel/backbone throughput':>33} {'no_grad/inference_mode':>23}"
          f" {'channels_last/default':>22} {'backbone ms':>12}")
    for b in batches:
        x = torch.randn(b, 3, size, size)
        xcl = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert torch.equal(model(x), backbone(x))
        t = interleaved({"backbone": lambda x=x: _inference(backbone, x),
                         "patched": lambda x=x: _inference(model, x),
                         "channels_last": lambda x=xcl: _inference(cl, x),
                         "no_grad": lambda x=x: torch.no_grad()(backbone)(x)}, rounds)
        print(f"{b:>5} {ratio(t, 'backbone', 'patched'):>33.3f} "
              f"{med(t['no_grad']) / med(t['backbone']):>23.3f} "
              f"{ratio(t, 'channels_last', 'backbone'):>22.3f} {med(t['backbone']) * 1e3:>12.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=None, help="default 15 (quick: 5)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    set_threads(a.threads)
    header("base forward through PatchedModel / plain backbone (throughput ratio)")
    for name in a.backbones:
        run_case(name, CASES[name], [1, 64], a.rounds or (5 if a.quick else 15))


if __name__ == "__main__":
    main()
