"""timm ResNet-family and ConvNeXt models seen as stages of sub-blocks (only when timm is there)."""

from __future__ import annotations

from timm.models import convnext, resnet
from torch import Tensor, nn

from .spec import StageSpec, register_block, register_spec


def _downsample(block: nn.Module, x: Tensor) -> Tensor:
    return x if block.downsample is None else block.downsample(x)


def _tail(b: nn.Module, x: Tensor) -> Tensor:
    if b.se is not None:
        x = b.se(x)
    return x if b.drop_path is None else b.drop_path(x)


def _basic_residual(b: nn.Module, x: Tensor) -> Tensor:
    x = b.aa(b.act1(b.drop_block(b.bn1(b.conv1(x)))))
    return _tail(b, b.bn2(b.conv2(x)))


def _bottleneck_residual(b: nn.Module, x: Tensor) -> Tensor:
    x = b.act1(b.bn1(b.conv1(x)))
    x = b.aa(b.act2(b.drop_block(b.bn2(b.conv2(x)))))
    return _tail(b, b.bn3(b.conv3(x)))


def _convnext_residual(b: nn.Module, x: Tensor) -> Tensor:
    x = b.conv_dw(x)
    if b.use_conv_mlp:
        x = b.mlp(b.norm(x))
    else:
        x = b.mlp(b.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if b.gamma is not None:
        x = x.mul(b.gamma.reshape(1, -1, 1, 1))
    return b.drop_path(x)


register_block(resnet.BasicBlock, residual=_basic_residual, shortcut=_downsample,
               post=lambda b, x: b.act2(x))
register_block(resnet.Bottleneck, residual=_bottleneck_residual, shortcut=_downsample,
               post=lambda b, x: b.act3(x))
register_block(convnext.ConvNeXtBlock, residual=_convnext_residual,
               shortcut=lambda b, x: b.shortcut(x))


@register_spec(resnet.ResNet)
def _resnet_spec(model: nn.Module) -> StageSpec:
    return StageSpec(
        stem=["conv1", "bn1", "act1", "maxpool"],
        stages=["layer1", "layer2", "layer3", "layer4"],
        pre_logits=[lambda x: model.forward_head(x, pre_logits=True)],
        head="fc",
    )


@register_spec(convnext.ConvNeXt)
def _convnext_spec(model: nn.Module) -> StageSpec:
    n = len(model.stages)
    return StageSpec(
        stem=["stem"],
        stages=[f"stages.{i}.blocks" for i in range(n)],
        transitions={i: [f"stages.{i}.downsample"] for i in range(n)},
        pre_logits=["norm_pre", lambda x: model.forward_head(x, pre_logits=True)],
        head="head.fc",
        names=[f"stage{i + 1}" for i in range(n)],
    )
