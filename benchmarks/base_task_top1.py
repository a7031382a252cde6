"""Top-1 of a backbone's own head on its base task's test split (e.g. EfficientNet-Lite0 on
``imagenet_photos``, the 500 seeded test photos).

    python benchmarks/base_task_top1.py [--backbone efficientnet_lite0] [--weights imagenet]
                                        [--data imagenet_photos]
"""

from __future__ import annotations

import argparse
import json

import torch

from deltapatch import PatchedModel, load_backbone
from deltapatch.data import load_test
from deltapatch.train import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--data", default="imagenet_photos")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = PatchedModel(load_backbone(args.backbone, args.weights)).eval()
    test, _ = load_test(args.data, model.preprocess.size)
    print(json.dumps({**vars(args), "size": model.preprocess.size, "n_test": len(test),
                      "top1": evaluate(model, test, model.preprocess)}))


if __name__ == "__main__":
    main()
