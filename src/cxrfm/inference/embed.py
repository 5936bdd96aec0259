"""Embed images and texts in batches with any dual encoder (the contract every inference step uses).

Any object with the dual-encoder contract works as ``model``: ``image_size: int``,
``encode_image(images (B, 1, S, S) in [0, 1], normalize=True) -> (B, D)`` and
``encode_text(texts: list[str], normalize=True) -> (B, D)`` (CLIP, Radford et al. 2021).
Outputs are checked: a wrong shape or a NaN/inf embedding is an :class:`EmbeddingError`, never a
silently wrong score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CxrfmError


class EmbeddingError(CxrfmError):
    """The model returned embeddings of the wrong shape or with NaN/inf values."""


class DualEncoderLike(Protocol):
    image_size: int

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor: ...


class ImageBatches(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor: ...


def _check_embeddings(emb: torch.Tensor, n: int, what: str, first_row: int) -> np.ndarray:
    if emb.ndim != 2 or emb.shape[0] != n:
        raise EmbeddingError(f"encode_{what} returned shape {tuple(emb.shape)} for {n} inputs; expected ({n}, D)")
    arr = emb.detach().to(torch.float32).cpu().numpy()
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EmbeddingError(
            f"encode_{what} returned NaN/inf for {int(bad.sum())} inputs (first: row {first_row + int(np.flatnonzero(bad)[0])}); "
            f"the checkpoint is likely diverged — re-train or evaluate an earlier checkpoint")
    return arr


@torch.inference_mode()
def embed_images(
    model: DualEncoderLike, images: ImageBatches, indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64, progress: bool = False,
) -> np.ndarray:
    """L2-normalised image embeddings (len(indices), D) float32 for rows ``indices`` of ``images``."""
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    out: list[np.ndarray] = []
    bar = tqdm(total=len(idx), desc="embed images", unit="img", disable=not progress)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        x = images.batch(chunk)  # (B, 1, S, S)
        out.append(_check_embeddings(model.encode_image(x, normalize=True), len(chunk), "image", start))
        bar.update(len(chunk))
    bar.close()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


@torch.inference_mode()
def embed_texts(model: DualEncoderLike, texts: Sequence[str], batch_size: int = 128, progress: bool = False
                ) -> np.ndarray:
    """L2-normalised text embeddings (len(texts), D) float32."""
    out: list[np.ndarray] = []
    texts = list(texts)
    bar = tqdm(total=len(texts), desc="embed texts", unit="text", disable=not progress)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        out.append(_check_embeddings(model.encode_text(chunk, normalize=True), len(chunk), "text", start))
        bar.update(len(chunk))
    bar.close()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


class ImageList:
    """An :class:`ImageBatches` over (1, H, W) tensors and/or image file paths: ``batch(indices)``
    reads the paths and letterboxes to ``size`` on request (uncached: for one-off inputs)."""

    def __init__(self, items: Sequence[torch.Tensor | str | Path], size: int):
        self.items = list(items)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        from ..data.images import letterbox, read_image

        out = []
        for i in indices:
            x = self.items[int(i)]
            out.append(letterbox(read_image(x) if isinstance(x, (str, Path)) else x, self.size))
        return torch.stack(out)  # (B, 1, S, S)


def embed_image_list(model: DualEncoderLike, images: Sequence[torch.Tensor | str | Path], batch_size: int = 32,
                     progress: bool = False) -> torch.Tensor:
    """L2-normalised embeddings (N, D) float32 tensor of (1, H, W) tensors or image paths."""
    return torch.from_numpy(embed_images(model, ImageList(images, int(model.image_size)), batch_size=batch_size,
                                         progress=progress))
