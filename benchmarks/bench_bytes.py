"""Figure 4: patch bytes / backbone bytes for Δ(n), n = 0 (head only) .. all stages; goal for
Δ(1) on CIFAR-ResNet-56 ≤ 3 %. Patch bytes = the saved folder (config JSON + safetensors, what
``deltapatch info`` reports as patch_bytes) and the tensor bytes alone; backbone bytes = its
state dict (parameters + buffers, float32). Deterministic: no timing.

    python benchmarks/bench_bytes.py --classes 10
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import header

from deltapatch import PatchedModel, load_backbone
from deltapatch.metrics import folder_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10, help="classes of the patch's head")
    p.add_argument("--backbones", nargs="+", default=["cifar_resnet56", "resnet18"])
    a = p.parse_args()
    header(f"patch bytes / backbone bytes, {a.classes}-class head")
    print(f"{'backbone':<16} {'Δ(n)':>5} {'trainable':>10} {'tensor B':>10} {'folder B':>10} "
          f"{'backbone B':>11} {'folder/backbone':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.backbones:
            model = PatchedModel(load_backbone(name))
            bb = sum(t.numel() * t.element_size() for t in model.backbone.state_dict().values())
            for n in range(model.num_stages + 1):
                model.add_patch(f"d{n}", a.classes, stages=n)
                folder = model.save_patch(f"d{n}", Path(tmp) / f"{name}-d{n}")
                fb = folder_bytes(folder)
                print(f"{name:<16} {n:>5} {model.trainable_parameters(f'd{n}'):>10,} "
                      f"{model.patch_bytes(f'd{n}'):>10,} {fb:>10,} {bb:>11,} "
                      f"{100 * fb / bb:>15.2f}%")


if __name__ == "__main__":
    main()
