"""Pretrained backbones that turn images into feature maps: `create_backbone(name, layers, weights)`."""

from pyanom.features.backbone import (Backbone, checked_precision, create_backbone, create_network, fold_batchnorm,
                                      list_backbones)

__all__ = ["Backbone", "checked_precision", "create_backbone", "create_network", "fold_batchnorm", "list_backbones"]
