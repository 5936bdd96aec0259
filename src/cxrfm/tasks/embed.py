"""Embed a manifest's images and texts in batches, once, for every evaluation task to share.

Images come from the decoded-image cache (:class:`cxrfm.data.cache.ImageCache`, built at the
model's ``image_size``) so evaluation decodes each file once, as training does; the batching
itself and the dual-encoder contract are :mod:`cxrfm.inference.embed`.

:class:`FileImages` is the uncached counterpart (decode + letterbox per request) for one-off
inputs and the embedding benchmark's per-image baseline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.schema import Manifest
from ..inference.embed import (DualEncoderLike, EmbeddingError, ImageBatches, ImageList,  # noqa: F401
                               embed_images, embed_texts)


class FileImages(ImageList):
    """Decode-on-request image source of a manifest: ``batch(indices)`` reads and letterboxes each file."""

    def __init__(self, manifest: Manifest, size: int):
        super().__init__(manifest.image_paths(), size)
        self.paths = self.items


def open_image_cache(manifest: Manifest, size: int, cache_dir: str | Path | None = None,
                     workers: int | None = None, progress: bool = False) -> ImageBatches:
    """The manifest's decoded-image cache at ``size`` (built on first use, reused after)."""
    from ..data.cache import ImageCache

    return ImageCache.build(manifest, size, cache_dir=cache_dir, workers=workers, progress=progress)


def embed_manifest(
    model: DualEncoderLike, manifest: Manifest, cache_dir: str | Path | None = None, batch_size: int = 64,
    workers: int | None = None, progress: bool = False, images: ImageBatches | None = None,
) -> np.ndarray:
    """Image embeddings (N, D) of every manifest row, through the image cache at ``model.image_size``.

    ``images`` replaces the cache with another row-aligned source (e.g. :class:`FileImages`).
    """
    if images is None:
        images = open_image_cache(manifest, int(model.image_size), cache_dir=cache_dir, workers=workers,
                                  progress=progress)
    if len(images) != len(manifest):
        raise EmbeddingError(f"image source has {len(images)} rows but the manifest has {len(manifest)}; "
                             f"rebuild the cache for this manifest (cxrfm prepare)")
    return embed_images(model, images, batch_size=batch_size, progress=progress)


def report_texts(manifest: Manifest) -> list[str | None]:
    """Each row's report text, or None where it has none (blank, missing or NaN cell)."""
    out: list[str | None] = []
    for r in manifest.reports():
        out.append(r.strip() if isinstance(r, str) and r.strip() else None)
    return out
