"""Pretrained backbones that turn images into feature maps: `create_backbone(name, layers, weights)`."""

from pyanom.features.backbone import Backbone, create_backbone, list_backbones

__all__ = ["Backbone", "create_backbone", "list_backbones"]
