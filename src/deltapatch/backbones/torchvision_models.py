"""torchvision ResNet / ResNeXt / WideResNet and ConvNeXt seen as stages of sub-blocks."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import convnext, resnet

from .spec import StageSpec, flatten, register_block, register_spec


def _downsample(block: nn.Module, x: Tensor) -> Tensor:
    return x if block.downsample is None else block.downsample(x)


def _relu(block: nn.Module, x: Tensor) -> Tensor:
    return block.relu(x)


def _basic_residual(b: nn.Module, x: Tensor) -> Tensor:
    return b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))


def _bottleneck_residual(b: nn.Module, x: Tensor) -> Tensor:
    x = b.relu(b.bn1(b.conv1(x)))
    x = b.relu(b.bn2(b.conv2(x)))
    return b.bn3(b.conv3(x))


def _cnblock_residual(b: nn.Module, x: Tensor) -> Tensor:
    return b.stochastic_depth(b.layer_scale * b.block(x))


register_block(resnet.BasicBlock, residual=_basic_residual, shortcut=_downsample, post=_relu)
register_block(resnet.Bottleneck, residual=_bottleneck_residual, shortcut=_downsample, post=_relu)
register_block(convnext.CNBlock, residual=_cnblock_residual)


@register_spec(resnet.ResNet)
def _resnet_spec(model: nn.Module) -> StageSpec:
    return StageSpec(
        stem=["conv1", "bn1", "relu", "maxpool"],
        stages=["layer1", "layer2", "layer3", "layer4"],
        pre_logits=["avgpool", flatten],
        head="fc",
    )


@register_spec(convnext.ConvNeXt)
def _convnext_spec(model: nn.Module) -> StageSpec:
    # features = [stem, stage1, down, stage2, down, stage3, down, stage4]
    n = len(model.features)
    return StageSpec(
        stem=["features.0"],
        stages=[f"features.{i}" for i in range(1, n, 2)],
        transitions={s: [f"features.{2 * s}"] for s in range(1, n // 2)},
        pre_logits=["avgpool", "classifier.0", "classifier.1"],
        head="classifier.2",
        names=[f"stage{s + 1}" for s in range(n // 2)],
    )
