"""deltapatch: patch frozen pretrained CNNs for new tasks with Δ-Networks (Δ-Patching)."""

from .backbones import (
                        BlockSplit,
                        StageSpec,
                        list_backbones,
                        load_backbone,
                        register_backbone,
                        register_block,
                        register_spec,
)
from .delta import register_gate
from .errors import BackboneError, DataError, DeltaPatchError, PatchError, SpecError
from .model import BASE, PatchedModel
from .patch import Patch, PatchConfig, read_config
from .preprocess import Preprocess
from .version import __version__

__all__ = ["BASE", "BackboneError", "BlockSplit", "DataError", "DeltaPatchError", "Patch",
           "PatchConfig", "PatchError", "PatchedModel", "Preprocess", "SpecError", "StageSpec",
           "__version__", "list_backbones", "load_backbone", "read_config", "register_backbone",
           "register_block", "register_gate", "register_spec"]

# Registers the detection and segmentation head kinds, so their patch folders load anywhere.
from . import dense  # noqa: E402, F401, I001
