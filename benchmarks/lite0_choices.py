"""The two measured choices behind the EfficientNet-Lite0 demo (docs/DEMO.md):

* ``preprocessing``: top-1 of the bundled Lite0 weights on the first N photos of
  ``../shared/data/imagenet_nips17_dev_224_jpeg.npz`` at 224 px, normalized as the TF Lite
  builder does, ``(x - 127) / 128``, versus ImageNet's mean/std.
* ``norm``: test top-1 of a Δ(1) patch on sklearn digits (64 px, 400 train / 200 test, seed 0,
  4 epochs, cached frozen prefix) with the Δ-stage BatchNorm at each place (``--norm``).

    python benchmarks/lite0_choices.py preprocessing [-n 300]
    python benchmarks/lite0_choices.py norm
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

import deltapatch as dp
from deltapatch.data import load_data
from deltapatch.paths import shared_data_file
from deltapatch.preprocess import Preprocess
from deltapatch.train import TrainConfig, evaluate, fit_patch


def preprocessing(n: int) -> None:
    from PIL import Image

    backbone = dp.load_backbone("efficientnet_lite0", "imagenet")
    with np.load(shared_data_file("imagenet_nips17_dev_224_jpeg.npz")) as d:
        jpeg, offsets, labels = d["jpeg_bytes"], d["offsets"], d["y"][:n]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]]
                                                        .tobytes())).convert("RGB"))
                       for i in range(n)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    for name, pre in [("(x-127)/128", backbone.deltapatch_preprocess),
                      ("imagenet mean/std", Preprocess(224))]:
        with torch.no_grad():
            logits = torch.cat([backbone(pre.normalize(c)) for c in x.split(50)])
        top1 = float((logits.argmax(1) == y).float().mean())
        top5 = float((logits.topk(5).indices == y[:, None]).any(1).float().mean())
        print(f"{name:<18} top-1 {top1:.3f}  top-5 {top5:.3f}  (n={n}, 224 px)")


def norm(epochs: int, lr: float) -> None:
    model = dp.PatchedModel(dp.load_backbone("efficientnet_lite0", "imagenet"))
    pre = model.preprocess.with_size(64)
    data = load_data("digits", 64, seed=0, max_train=400, max_test=200)
    for place in ("none", "output", "skip"):
        torch.manual_seed(0)
        model.add_patch(place, 10, stages=1, norm=place, preprocess=pre)
        t0 = time.perf_counter()
        result = fit_patch(model, place, data, TrainConfig(
            epochs=epochs, batch_size=64, lr=lr, seed=0, augment=False, progress=False))
        model.eval()
        top1 = evaluate(lambda x, n=place: model(x, patch=n), data.test, pre)
        losses = [round(h["train_loss"], 3) for h in result.history]
        print(f"norm={place:<7} test top-1 {top1:.3f} (n={len(data.test)})  train losses "
              f"{losses}  {time.perf_counter() - t0:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("preprocessing").add_argument("-n", type=int, default=300)
    q = sub.add_parser("norm")
    q.add_argument("--epochs", type=int, default=4)
    q.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    preprocessing(args.n) if args.what == "preprocessing" else norm(args.epochs, args.lr)


if __name__ == "__main__":
    main()
