"""Backbone families, their stage specs, and the catalogue of names (builders and weights)."""

from .catalog import (
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
