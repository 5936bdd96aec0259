"""Build a :class:`~cxrfm.models.dual.DualEncoder` from a :class:`~cxrfm.config.ModelConfig`.

Initial weights are a function of the seed alone: the same seed gives the same model whichever curator
(or none) trains it afterwards, so curation arms are paired comparisons. The building itself is
:meth:`DualEncoder.from_config` (``load_model`` needs it, and imports run factory -> dual, never back).
"""
from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from .dual import DualEncoder
from .hf import quiet_transformers
from .tower import list_image_towers

__all__ = ["build_model", "list_image_towers", "quiet_transformers"]


def build_model(config: ModelConfig, seed: int = 0, tokenizer_dir: str | Path | None = None) -> DualEncoder:
    """A freshly initialised dual encoder (pretrained towers keep their loaded weights)."""
    return DualEncoder.from_config(config, seed=seed, tokenizer_dir=tokenizer_dir)
