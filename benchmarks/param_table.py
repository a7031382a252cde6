"""Trainable parameters of Δ(1)/Δ(2)/Δ(4) patches (45-class head, as the paper's RESISC-45
column) beside the paper's counts. Random-init backbones: counts do not depend on weights.

    python benchmarks/param_table.py
"""

from __future__ import annotations

import deltapatch as dp

PAPER = {"resnet18": ("0.4M", "0.6M", "0.6M"), "resnet34": ("0.4M", "0.6M", "0.6M"),
         "resnet50": ("7.1M", "8.9M", "9.3M"), "convnext_tiny": ("4.0M", "5.0M", "5.3M")}


def main() -> None:
    print("| backbone | Δ(1) / Δ(2) / Δ(4), DESIGN (C/2→C/4) | same, `reduction=2` (C/2→C/2) "
          "| paper | backbone params |")
    print("|---|---|---|---|---|")
    for name, paper in PAPER.items():
        model = dp.PatchedModel(dp.load_backbone(name))
        cols = []
        for r in (4, 2):
            counts = []
            for n in (1, 2, 4):
                model.add_patch(f"d{n}r{r}", 45, stages=n, reduction=r)
                counts.append(f"{model.trainable_parameters(f'd{n}r{r}') / 1e6:.2f}M")
            cols.append(" / ".join(counts))
        total = sum(p.numel() for p in model.backbone.parameters()) / 1e6
        print(f"| {name} | {cols[0]} | {cols[1]} | {' / '.join(paper)} | {total:.1f}M |")


if __name__ == "__main__":
    main()
