"""Models: the image-tower registry and its towers, the text towers, the dual encoder.

Importing this package imports every tower module, so :func:`list_image_towers` is complete whatever
submodule a caller asked for (timm's ``models/__init__`` does the same). A new tower is one module
holding an :class:`ImageTowerBase` subclass and its ``@register_image_tower(name, tiny_arch=...)`` builder,
plus its import line here; tests/test_tower_contract.py then tests it without naming it.
"""
from __future__ import annotations

from .dual import DualEncoder, load_model
from .factory import build_model
from .image import build_image_tower, build_scratch_image_tower, resize_to  # registers the HF towers
# new tower modules: `from . import <module>  # noqa: F401` here
from . import latent_tower  # noqa: F401  (registers "latent")
from .tower import FeatureMaps, ImageTowerBase, list_image_towers, register_image_tower

__all__ = ["DualEncoder", "FeatureMaps", "ImageTowerBase", "build_image_tower", "build_model",
           "build_scratch_image_tower", "list_image_towers", "load_model", "register_image_tower", "resize_to"]

