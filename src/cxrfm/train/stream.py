"""Pretraining on streamed tar shards (``cxrfm pretrain --data SHARDS``, shards from ``cxrfm shard``).

The same run as :class:`~cxrfm.train.pretraining.Pretraining` (model, curator, checkpoints, run folder), with
the images read from the shards instead of a decoded cache, and the batch order of
:mod:`.shard_stream`: each rank reads its own shards, so a global batch is the concatenation of the
ranks' local batches (``train.batch_size / world`` each) rather than one order every rank walks.

Curation on the stream, per batch as CheXficient does: every rank embeds its local batch without
gradients, the embeddings and rows are gathered, every rank runs the identical curator on the
identical global batch (so curator state stays the same on all ranks) and trains its own kept pairs.
``epoch_rows`` decides which rows an epoch streams (the others are read past, never decoded; a row
listed twice streams once). A curator's ``begin_epoch(embed)`` reads its rows by seeking into the
shards. Resume: a checkpoint stores the epoch's rows and the batch position; the stream skips the
samples already trained on without decoding them (:func:`~cxrfm.train.shard_stream.skip_counts`), so
an interrupted and resumed run trains on the same samples in the same order as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.shards import ShardSet, decode_sample
from ..errors import ConfigError
from .augment import batch_seed, random_affine
from .curation import select_mask
from .distributed import agree, gather_rows
from .inputs import PairInputs, split_embeddings
from .pretraining import Pretraining
from .records import new_epoch_stats
from .shard_stream import ShardStream, epoch_length, stream_loader


class ShardInputs(PairInputs):
    """:class:`PairInputs` whose pixels come from the shards (random access, for ``embed``)."""

    shard_set: ShardSet

    def open_images(self, cache_dir, progress: bool) -> None:
        """Nothing to build: the shards are the decoded images."""

    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        items = self.shard_set.read_rows(self.rows[np.asarray(idx, dtype=np.int64)])
        size = self.model.image_size
        return torch.stack([decode_sample(d, e, size, where=str(self.shard_set.folder)) for d, e in items])


class StreamPretraining(Pretraining):
    """One pretraining run on a shard folder; ``workers`` loader processes per rank (0: none) and a
    shuffle buffer of ``shuffle_buffer`` samples per worker."""

    def __init__(self, data, out, config, curate, budget, epochs, seed, resume, text_style, overrides,
                 curator_kwargs, progress, cache_dir, ctx, *, workers: int = 0, shuffle_buffer: int = 1000,
                 compute_budget: float | None = None):
        if int(workers) < 0 or int(shuffle_buffer) < 1:
            raise ConfigError(f"--workers {workers} / --shuffle-buffer {shuffle_buffer}: workers must be >= 0 and "
                              f"the buffer >= 1 sample (e.g. --workers 4 --shuffle-buffer 1000)")
        self.shard_set = ShardSet.open(data)
        self.workers, self.buffer = int(workers), int(shuffle_buffer)
        agree(self.shard_set.digest(), ctx, f"the shard index of {data}")
        super().__init__(self.shard_set.manifest(), out, config, curate, budget, epochs, seed, resume, text_style,
                         overrides, curator_kwargs, progress, cache_dir, ctx, compute_budget=compute_budget)
        if self.train_cfg.batch_size % ctx.world or self.train_cfg.batch_size < 2 * ctx.world:
            raise ConfigError(f"train.batch_size {self.train_cfg.batch_size} with {ctx.world} ranks: streamed data "
                              f"needs a global batch that is a multiple of the world size, with at least 2 pairs "
                              f"per rank (e.g. --set train.batch_size={max(2, self.train_cfg.batch_size // ctx.world) * ctx.world})")
        self.local_batch = self.train_cfg.batch_size // ctx.world
        self.row_of = np.full(self.shard_set.n_samples, -1, dtype=np.int64)  # shard row -> curator row
        self.row_of[self.rows] = np.arange(self.n)

    def extra_identity(self) -> dict:
        return {"shards": self.shard_set.digest(), "stream": {"workers": self.workers, "shuffle_buffer": self.buffer}}

    def make_inputs(self, texts, text_id, unique_texts) -> PairInputs:
        inputs = ShardInputs(self.model, self.train_cfg, self.ctx, self.manifest, self.rows, texts, text_id,
                             unique_texts, self.acc)
        inputs.shard_set = self.shard_set
        return inputs

    # ------------------------------------------------------------------ the epoch's stream
    def _begin_epoch(self) -> None:
        self.curator.begin_epoch(self.epoch, self.inputs.embed)
        rows = np.asarray(self.curator.epoch_rows(self.epoch), dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise ConfigError(f"--curate {self.curate}: epoch_rows() returned rows outside 0..{self.n - 1}")
        self.order, self.batch_in_epoch = np.unique(rows), 0  # the stream decides the order
        self.epoch_stats = new_epoch_stats()

    def wanted(self) -> np.ndarray:
        """(n_samples,) bool: the shard rows this epoch streams."""
        wanted = np.zeros(self.shard_set.n_samples, dtype=bool)
        wanted[self.rows[self.order]] = True
        return wanted

    def stream(self, start: int) -> ShardStream:
        """This rank's stream of the current epoch from sample ``start`` on."""
        return ShardStream(self.shard_set, self.wanted(), seed=self.seed, epoch=self.epoch, rank=self.ctx.rank,
                           world=self.ctx.world, workers=self.workers, buffer=self.buffer,
                           image_size=self.model.image_size, start=start)

    def epoch_batches(self):
        per_rank = epoch_length(self.shard_set, self.seed, self.epoch, self.ctx.world, max(1, self.workers),
                                self.wanted())
        n_batches, first, b = per_rank // self.local_batch, self.batch_in_epoch, self.local_batch

        def batches():
            it = stream_loader(self.stream(first * b))
            try:
                for _ in range(first, n_batches):
                    items = [next(it) for _ in range(b)]
                    rows = self.row_of[np.array([r for r, _ in items], dtype=np.int64)]  # curator rows (b,)
                    yield rows, torch.stack([x for _, x in items]).to(torch.float32).div_(255.0)  # (b, 1, S, S)
            finally:
                del it  # a DataLoader iterator stops its workers when released

        return n_batches, batches()

    # ------------------------------------------------------------------ one step
    def train_step(self, batch, n_batches: int) -> dict:
        """One global batch = every rank's local batch: (score, gather, select), train the kept pairs."""
        local_rows, x = batch
        cfg, ctx, inputs = self.train_cfg, self.ctx, self.inputs
        b = len(local_rows)
        gen = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, self.batch_in_epoch, ctx.rank))
        theta = random_affine(b, cfg, gen) if cfg.augment else None  # (b, 2, 3), this rank's own
        rows_all = gather_rows(torch.as_tensor(local_rows), ctx).numpy().reshape(ctx.world, b)  # (world, b)
        if self.curator.selects(self.epoch):
            img, txt = self._score(local_rows, x, theta, tensors=self.curator.accepts_tensors)
            keep = select_mask(self.curator, self.epoch, rows_all.reshape(-1).copy(), img, txt).reshape(ctx.world, b)
        else:
            keep = np.ones((ctx.world, b), dtype=bool)
        counts = keep.sum(1).tolist()
        k, lr = int(sum(counts)), self._lr(n_batches)
        if k < 2:  # a contrastive loss needs a negative
            return {"loss": None, "seen": b * ctx.world, "kept": k, "lr": lr}
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        mine = np.flatnonzero(keep[ctx.rank])
        if len(mine) == 0:  # nothing of this rank's share was kept: forward one pair as padding only
            mine = np.arange(1)
        images = inputs.place(x[mine], None if theta is None else theta[mine])
        rows = np.concatenate([rows_all[r][keep[r]] for r in range(ctx.world)])
        return self.optimise(images, inputs.text_input(local_rows[mine]), counts, rows, lr, b * ctx.world)

    def _score(self, local_rows: np.ndarray, x: torch.Tensor, theta, tensors: bool = False):
        """(img, txt) of the global batch, no grad, L2-normalised: local pass, then gathered; host numpy, or
        with ``tensors`` views of the gathered tensor on the run's device (no host copy)."""
        model, inputs = self.model, self.inputs
        was_training = model.training
        model.eval()
        with torch.no_grad(), inputs.autocast():
            z = torch.cat([model.encode_image(inputs.place(x, theta)),
                           model.encode_text(inputs.text_input(local_rows))], dim=1).float()  # (b, 2D)
        model.train(was_training)
        z = gather_rows(z, self.ctx)  # (world * b, 2D) on the run's device
        self.acc.select_image_fwd += len(z)
        if inputs.text_feats is None:
            self.acc.select_text_fwd += len(z)
        return split_embeddings(z, model.embed_dim, tensors)
