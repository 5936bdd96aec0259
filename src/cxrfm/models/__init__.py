"""Models: the image-tower registry and its towers, the text towers, the dual encoder.

Importing this package imports every tower module, so :func:`list_image_towers` is complete whatever
submodule a caller asked for (timm's ``models/__init__`` does the same).
"""
from __future__ import annotations

from .dual import DualEncoder, load_model
from .factory import build_model
from .image import build_image_tower, build_scratch_image_tower, resize_to  # registers the HF towers
from .tower import FeatureMaps, ImageTowerBase, list_image_towers, register_image_tower

__all__ = ["DualEncoder", "FeatureMaps", "ImageTowerBase", "build_image_tower", "build_model",
           "build_scratch_image_tower", "list_image_towers", "load_model", "register_image_tower", "resize_to"]

