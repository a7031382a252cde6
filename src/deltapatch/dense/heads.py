"""Dense task heads a patch can carry: torchvision's Faster R-CNN (FPN, RPN, ROI heads) and an
FPN + FCN segmentation head, both reading the pyramid of a patched (or the base) backbone.

A dense head holds no backbone weights. Its feature source is bound when the task runs
(:class:`~deltapatch.dense.task.DenseTask`), so the same head module serves a Δ-patch's pyramid
or a fine-tuned copy's, and its ``state_dict`` is exactly what the patch file stores. Every size
a builder reads from a config is bounded first: configs come from untrusted files.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..devices import placement
from ..errors import PatchError
from ..patch import PatchConfig, StageShape, register_head

DETECTION, SEGMENTATION = "detection", "segmentation"
IGNORE = 255
"""Segmentation label of pixels that score nothing (the padding around a resized photo)."""

MAX_LEVELS, MAX_CHANNELS, MAX_DENSE_CLASSES, MAX_DENSE_SIZE = 6, 1024, 1000, 2048

Features = Callable[[Tensor], list[Tensor]]
"""Normalised images → the feature maps of the head's levels, finest first."""


def dense_options(config: PatchConfig, shapes: list[StageShape]) -> tuple[list[int], int, int]:
    """(levels, FPN channels, input size) from a config, each bounded before anything is built."""
    o = config.options
    levels, channels, size = o.get("levels"), o.get("channels", 64), o.get("size", 320)
    if (not isinstance(levels, list) or not 1 <= len(levels) <= MAX_LEVELS
            or not all(isinstance(s, int) and 0 <= s < len(shapes) for s in levels)
            or levels != sorted(set(levels))):
        raise PatchError(f"patch '{config.name}': options.levels must be 1..{MAX_LEVELS} "
                         f"increasing stage indices below {len(shapes)}, got {levels!r}")
    for key, v, hi in (("channels", channels, MAX_CHANNELS), ("size", size, MAX_DENSE_SIZE)):
        if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= hi:
            raise PatchError(f"patch '{config.name}': options.{key} must be an integer in "
                             f"8..{hi}, got {v!r}")
    if config.num_classes > MAX_DENSE_CLASSES:
        raise PatchError(f"patch '{config.name}': a dense head has at most "
                         f"{MAX_DENSE_CLASSES} classes")
    return levels, channels, size


class PyramidBody(nn.Module):
    """A patched backbone as the body of any torchvision detection or segmentation model.

    ``forward(x)`` gives an ordered dict of the ``levels``' feature maps of ``model`` (the base
    network, or patch ``patch``), keyed ``"0", "1", ...`` or by ``names`` (DeepLabV3 and FCN
    read ``{"out": ...}``); ``out_channels`` lists their widths. With ``fpn_channels`` an FPN
    (plus a max-pooled level) follows and ``out_channels`` is that width, as
    ``BackboneWithFPN`` gives it, so ``FasterRCNN(PyramidBody(model, "p", fpn_channels=256),
    ...)`` works. Training it trains the patch's Δ-stages and the FPN; the backbone stays
    frozen and in eval mode (``PatchedModel.train`` keeps it so).
    """

    def __init__(self, model: nn.Module, patch: str | None = None,
                 levels: list[int] | None = None, *, names: list[str] | None = None,
                 fpn_channels: int | None = None, probe_size: int = 224) -> None:
        super().__init__()
        self.model, self.patch = model, patch
        self.levels = levels or pick_levels(level_sizes(model.pyramid, probe_size,
                                                        placement(model)[0]))
        self.names = names or [str(i) for i in range(len(self.levels))]
        if len(self.names) != len(self.levels):
            raise ValueError(f"{len(self.names)} names for {len(self.levels)} levels")
        widths = [model.stage_shapes()[s].out_channels for s in self.levels]
        self.fpn = (FeaturePyramidNetwork(widths, fpn_channels, extra_blocks=LastLevelMaxPool())
                    if fpn_channels else None)
        self.out_channels = fpn_channels or widths

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = list(self.model.pyramid(x, self.patch).values())
        feats = OrderedDict((n, maps[s]) for n, s in zip(self.names, self.levels, strict=True))
        return self.fpn(feats) if self.fpn is not None else feats


class PyramidFPN(nn.Module):
    """A detection body as torchvision wants it (``out_channels`` and an ordered dict of maps):
    an FPN over the feature maps ``features`` gives for the images it is called on."""

    def __init__(self, in_channels: list[int], channels: int, extra_level: bool) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels,
                                         extra_blocks=LastLevelMaxPool() if extra_level else None)
        self.out_channels = channels
        self.features: Features | None = None  # bound per task; not part of the state

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if self.features is None:
            raise RuntimeError("bind a feature source first (DenseTask does)")
        maps = self.features(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class DetectionHead(nn.Module):
    """torchvision's Faster R-CNN with the backbone replaced by :class:`PyramidFPN`; slimmer
    than the default (FPN ``channels`` wide, a 256-wide box MLP) so CPU runs stay small.
    Images are resized so their longer side is ``size`` and normalised by the backbone's own
    preprocessing (mean, std)."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int, size: int,
                 mean: tuple, std: tuple) -> None:
        super().__init__()
        body = PyramidFPN(in_channels, channels, extra_level=True)
        n_maps = len(in_channels) + 1
        anchors = AnchorGenerator(tuple((32 * 2 ** i,) for i in range(n_maps)),
                                  ((0.5, 1.0, 2.0),) * n_maps)
        self.detector = FasterRCNN(
            body, num_classes=None, min_size=size, max_size=size, image_mean=list(mean),
            image_std=list(std), rpn_anchor_generator=anchors,
            box_head=TwoMLPHead(channels * 7 * 7, 256),
            box_predictor=FastRCNNPredictor(256, num_classes))

    def bind(self, features: Features) -> None:
        self.detector.backbone.features = features

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Images in [0, 1] (list of (3, H, W)); training: the loss dict, else detections."""
        return self.detector(images, targets)


class SegmentationHead(nn.Module):
    """FPN over the pyramid, torchvision's FCN head on its finest map, logits upsampled to the
    input: the backbone keeps its strides (it is frozen), so the FPN brings back resolution."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels)
        self.classifier = FCNHead(channels, num_classes)
        self.features: Features | None = None

    def bind(self, features: Features) -> None:
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (N, 3, H, W) → per-pixel logits (N, classes, H, W)."""
        if self.features is None:
            raise RuntimeError("bind a feature source first (DenseTask does)")
        maps = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(self.features(x))))
        logits = self.classifier(maps["0"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _detection(config: PatchConfig, shapes: list[StageShape], _dim: int) -> nn.Module:
    levels, channels, size = dense_options(config, shapes)
    return DetectionHead([shapes[s].out_channels for s in levels], config.num_classes, channels,
                         size, config.preprocess.mean, config.preprocess.std)


def _segmentation(config: PatchConfig, shapes: list[StageShape], _dim: int) -> nn.Module:
    levels, channels, _size = dense_options(config, shapes)
    return SegmentationHead([shapes[s].out_channels for s in levels], config.num_classes, channels)


register_head(DETECTION, _detection)
register_head(SEGMENTATION, _segmentation)


def pick_levels(sizes: list[tuple[int, int]], n: int = 3) -> list[int]:
    """The stages a dense head reads: the last stage at each resolution, the ``n`` coarsest
    (strides 8, 16, 32 on an ImageNet CNN, as torchvision's detection backbones use)."""
    last: dict[tuple[int, int], int] = {}
    for s, hw in enumerate(sizes):
        last[hw] = s
    return sorted(last.values())[-n:]


@torch.no_grad()
def level_sizes(pyramid: Callable[[Tensor], dict[str, Tensor]], size: int,
                device: torch.device | None = None) -> list[tuple]:
    """Spatial size of each stage's output on a blank ``size`` × ``size`` probe, made on
    ``device`` (where the pyramid's model is)."""
    probe = torch.zeros(1, 3, size, size, device=device)
    return [tuple(t.shape[-2:]) for t in pyramid(probe).values()]
