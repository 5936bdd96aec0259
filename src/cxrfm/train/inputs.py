"""What goes into the towers during pretraining, and the no-grad passes curation needs.

Curator row ``i`` is manifest row ``rows[i]``. Images come from the decoded-image cache (augmented per
batch by :mod:`.augment`); texts go in as strings, or, when the text backbone is frozen, as its cached
pooled outputs, computed once per unique text (a frozen tower is a pure function of the text). Every
pass through a tower is counted in the run's :class:`~cxrfm.train.accounting.Accounting`.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..data.schema import Manifest
from ..errors import ConfigError, ManifestError
from ..models.text import BUNDLED
from .accounting import Accounting, measure_forward_flops
from .augment import apply_affine
from .distributed import DistContext, barrier, gather_sharded, shard

def training_rows(manifest: Manifest) -> np.ndarray:
    """Manifest row positions to pretrain on: the ``train`` split when there is a ``split`` column."""
    if "split" not in manifest.table.columns:
        return np.arange(len(manifest))
    rows = np.flatnonzero(manifest.table["split"].astype(str).str.lower().to_numpy() == "train")
    if len(rows) == 0:
        raise ManifestError(f"{manifest.path or 'manifest'}: has a 'split' column but no row with split == 'train'; "
                            f"pretraining uses the train rows (run `cxrfm split` or fix the column)")
    return rows


# Frozen bundled-MiniLM outputs per (source, max_tokens) -> {text: (H,) tensor}; see frozen_text_features.
_TEXT_MEMO: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


class PairInputs:
    """Images and texts of curator rows for one run's model, on the run's device."""

    def __init__(self, model, train_cfg: TrainConfig, ctx: DistContext, manifest: Manifest, rows: np.ndarray,
                 texts: list[str], text_id: np.ndarray, unique_texts: list[str], acc: Accounting):
        self.model, self.train_cfg, self.ctx, self.manifest = model, train_cfg, ctx, manifest
        self.model_cfg: ModelConfig = model.config
        self.rows, self.texts, self.text_id, self.unique_texts = rows, texts, text_id, unique_texts
        self.acc = acc
        self.cache = None
        self.text_feats: torch.Tensor | None = None  # (U, H) when the text backbone is frozen

    def prepare(self, cache_dir, progress: bool) -> None:
        """Build (or open) the image cache, cache frozen text features, measure FLOPs once per run."""
        self.open_images(cache_dir, progress)
        if self.model.text.frozen:
            self.text_feats = self.frozen_text_features(self.unique_texts)
            # The caching pass is one pass per unique text for the whole run: a resumed run computes it
            # again, but counting it again would make a run's cost depend on how often it was killed.
            self.acc.text_cache_fwd = len(self.unique_texts)
        if not self.acc.image_flops_per_sample:
            s = self.model.image_size
            self.model.eval()  # eval: a measuring pass must not move BatchNorm statistics
            self.acc.image_flops_per_sample = measure_forward_flops(
                self.model.image, torch.zeros(1, 1, s, s, device=self.ctx.device))
            sample = self.unique_texts[:4]
            self.acc.text_flops_per_sample = measure_forward_flops(self.model.text_features, sample) / len(sample)
            self.model.train()

    def open_images(self, cache_dir, progress: bool) -> None:
        """The decoded-image cache of the manifest (built by the main rank, opened by the others)."""
        from ..data.cache import ImageCache

        size = self.model.image_size
        if self.ctx.is_main:
            self.cache = ImageCache.build(self.manifest, size=size, cache_dir=cache_dir, progress=progress)
        barrier(self.ctx)
        if not self.ctx.is_main:  # the cache exists now: building is a no-op that opens it
            self.cache = ImageCache.build(self.manifest, size=size, cache_dir=cache_dir)

    def frozen_text_features(self, texts: list[str]) -> torch.Tensor:
        """(U, H) pooled outputs of the frozen text backbone for ``texts``.

        Texts are batched by length (less padding). For the bundled MiniLM, whose frozen weights are the
        same in every run, results are memoised for this process (benchmarks and tests run many arms on
        the same texts); accounting counts the passes all the same, as a standalone run makes them.
        """
        memo = None
        if self.model_cfg.text_tower == BUNDLED and self.model_cfg.text_hf_config is None:
            memo = _TEXT_MEMO.setdefault((self.model.text.source, self.model.text.max_tokens), {})
        todo = [t for t in dict.fromkeys(texts) if memo is None or t not in memo]
        if todo:
            by_len = sorted(range(len(todo)), key=lambda i: len(todo[i]))
            ordered = [todo[i] for i in by_len]
            feats = self.no_grad_sharded(len(ordered), lambda idx: self.model.text_features([ordered[i] for i in idx]))
            feats = feats.cpu()
            fresh = {t: feats[j] for j, t in enumerate(ordered)}
            if memo is None:
                return torch.stack([fresh[t] for t in texts]).to(self.ctx.device)
            memo.update(fresh)
        return torch.stack([memo[t] for t in texts]).to(self.ctx.device)  # (U, H)

    def row_thumbnails(self, chunk: int = 1024) -> np.ndarray:
        """(n, 256) 16x16 thumbnails of the training rows' images from the image cache (a curator's
        ``thumbnails``), read in chunks of the memory-mapped cache."""
        from .curation import thumbnail_features

        if self.cache is None:
            raise ConfigError("thumbnails need the decoded-image cache of a manifest; streamed shards have none "
                              "(use dedup_space=image)")
        parts = []
        for i in range(0, len(self.rows), chunk):
            idx = self.rows[i:i + chunk]
            order = np.argsort(idx)  # a memory map reads sorted rows; put them back in row order after
            block = np.empty((len(idx), *self.cache.array.shape[1:]), dtype=self.cache.array.dtype)
            block[order] = self.cache.array[idx[order]]
            parts.append(thumbnail_features(block))
        return np.concatenate(parts)

    def row_text_features(self) -> np.ndarray:
        """(n, H) float32 cached frozen text features, row-aligned (a curator's ``text_features``)."""
        return self.text_feats[torch.as_tensor(self.text_id)].float().cpu().numpy()

    def no_grad_sharded(self, n: int, fn, chunk: int | None = None) -> torch.Tensor:
        """fn(indices) -> (k, D) over range(n), rows split across ranks, gathered in order (no grad)."""
        chunk = chunk or self.train_cfg.embed_batch_size
        local = shard(np.arange(n), self.ctx)
        was_training = self.model.training
        self.model.eval()
        parts = []
        with torch.no_grad(), self.autocast():
            for start in range(0, max(len(local), 1), chunk):
                idx = local[start:start + chunk]
                if len(idx):
                    parts.append(fn(idx).float())
            if not parts:  # more ranks than rows: still take part in the gather
                parts.append(fn(np.arange(1)).float()[:0])
        self.model.train(was_training)
        return gather_sharded(torch.cat(parts), n, self.ctx)

    def autocast(self):
        if self.ctx.device.type == "cuda" and self.train_cfg.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        """(B, 1, S, S) float32 in [0, 1] of curator rows ``idx``, on the CPU."""
        return self.cache.batch(self.rows[idx])

    def images(self, idx: np.ndarray, theta: torch.Tensor | None) -> torch.Tensor:
        x = self.pixels(idx)  # (B, 1, S, S) in [0, 1]
        return self.place(x, theta)

    def place(self, x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        """Augment CPU pixels (B, 1, S, S) under ``theta`` and move them to the run's device."""
        if theta is not None:
            x = apply_affine(x, theta)
        return x.to(self.ctx.device, non_blocking=True)

    def text_input(self, idx: np.ndarray):
        if self.text_feats is not None:
            return self.text_feats[torch.as_tensor(self.text_id[idx], device=self.text_feats.device)]  # (B, H)
        return [self.texts[i] for i in idx]

    def _encode_no_grad(self, indices: np.ndarray, theta: torch.Tensor | None, tensors: bool = False):
        """(img, txt) L2-normalised float32 of ``indices`` (no grad), counted as selection passes: host numpy,
        or with ``tensors`` views of the gathered (n, 2D) tensor on the run's device (no host copy)."""
        d = self.model.embed_dim

        def both(local):
            t = None if theta is None else theta[local]
            rows = indices[local]
            return torch.cat([self.model.encode_image(self.images(rows, t)),
                              self.model.encode_text(self.text_input(rows))], dim=1)  # (k, 2D)

        z = self.no_grad_sharded(len(indices), both)  # (n, 2D) float32 on the run's device
        self.acc.select_image_fwd += len(indices)
        if self.text_feats is None:
            self.acc.select_text_fwd += len(indices)
        return split_embeddings(z, d, tensors)

    def embed(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The curator's ``embed``: rows -> (img, txt) numpy, no augmentation."""
        return self._encode_no_grad(np.asarray(indices, dtype=np.int64), None)

    def score(self, gidx: np.ndarray, theta: torch.Tensor | None, tensors: bool = False):
        """The per-batch scoring pass before ``select``: the batch as it will be trained (augmented).
        ``tensors`` (for a curator that ``accepts_tensors``): (img, txt) stay on the run's device."""
        return self._encode_no_grad(np.asarray(gidx, dtype=np.int64), theta, tensors)


def split_embeddings(z: torch.Tensor, d: int, tensors: bool):
    """(img, txt) halves of the (n, 2D) scoring-pass output: views of ``z`` on its device with ``tensors``,
    else C-contiguous host numpy (one device-to-host copy of ``z``)."""
    if tensors:
        return z[:, :d], z[:, d:]
    host = z.cpu().numpy()
    return np.ascontiguousarray(host[:, :d]), np.ascontiguousarray(host[:, d:])
