"""Backbone families, their stage specs, and the name registry."""

from .registry import (
                       BACKBONES,
                       BackboneEntry,
                       backbone_name,
                       default_preprocess,
                       list_backbones,
                       load_backbone,
                       register_backbone,
)
from .spec import BlockSplit, StageSpec, block_split, register_block, register_spec, spec_for

__all__ = ["BACKBONES", "BackboneEntry", "BlockSplit", "StageSpec", "backbone_name",
           "block_split", "default_preprocess", "list_backbones", "load_backbone",
           "register_backbone", "register_block", "register_spec", "spec_for"]
