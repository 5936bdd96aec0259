"""The order in which ranks and loader workers stream tar shards, and the stream itself.

Epoch ``e`` of a run with seed ``s`` on ``world`` ranks, each with ``workers`` loader partitions:

1. the shards are permuted with a generator seeded by ``(s, e)`` (every rank computes the same
   permutation, no communication); rank ``r`` takes every ``world``-th shard of it from ``r``,
   partition ``w`` of the rank every ``workers``-th of those from ``w``: disjoint shards everywhere;
2. each partition reads its shards front to back, skips rows the epoch does not want (curation,
   the train split) without decoding them, and shuffles through a buffer of ``buffer`` samples
   seeded by ``(s, e, r, w)`` (WebDataset's ``shuffle``; a buffer as large as the partition is a
   full shuffle);
3. the rank's order is the partitions taken round-robin, one sample each, skipping exhausted ones:
   exactly how ``torch.utils.data.DataLoader`` interleaves the workers of an ``IterableDataset``, so
   the order is the same with ``num_workers = workers`` as in one process;
4. every rank streams the same number of samples, the smallest rank's count (computable from the
   index on every rank): when the world size does not divide the shard count, or curation thins the
   shards unevenly, the larger ranks' surplus is left out of this epoch; the shard permutation
   changes every epoch, so what is left out changes too. A rank with no shard at all is an error.

Resuming at sample ``k`` of an epoch needs no state beyond ``k``: :func:`resume_point` says how many
samples each partition had contributed at the start of the round holding ``k`` (each partition reads
past those undecoded) and how many of that round to drop after the restart (fewer than the workers).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..data.shards import ShardError, ShardSet, decode_gray


def rank_shards(n_shards: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """The shards of ``rank`` in ``epoch`` (step 1), in reading order."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n_shards))[rank::world]


def partition_counts(shards: ShardSet, rank_order: np.ndarray, workers: int, wanted: np.ndarray) -> list[int]:
    """Wanted samples per loader partition of one rank."""
    per_shard = np.array([int(wanted[s.first_row:s.first_row + s.count].sum()) for s in shards.shards])
    return [int(per_shard[rank_order[w::workers]].sum()) for w in range(workers)]


def epoch_length(shards: ShardSet, seed: int, epoch: int, world: int, workers: int, wanted: np.ndarray) -> int:
    """Samples every rank streams in ``epoch`` (step 4): the smallest rank's wanted count."""
    if world > len(shards.shards):
        raise ShardError(f"{shards.folder}: {len(shards.shards)} shard(s) for {world} ranks; every rank needs at "
                         f"least one shard: write smaller shards (`cxrfm shard --per-shard`) or use fewer ranks")
    return min(sum(partition_counts(shards, rank_shards(len(shards.shards), seed, epoch, r, world), workers,
                                    wanted)) for r in range(world))


def skip_counts(counts: list[int], k: int) -> list[int]:
    """How many samples each partition contributed to the first ``k`` of the round-robin order (step 3)."""
    taken, extra = resume_point(counts, k)
    active = [w for w, c in enumerate(counts) if taken[w] < c]
    for w in active[:extra]:  # the partial round, in worker order
        taken[w] += 1
    return taken


def resume_point(counts: list[int], k: int) -> tuple[list[int], int]:
    """Where to restart so that the round-robin order continues at position ``k``: the samples each
    partition had contributed at the start of the round holding ``k``, and how many samples of that
    round (fewer than the partitions) to drop after restarting. Restarting mid-round would begin the
    round again at the first partition and change the order."""
    counts = [int(c) for c in counts]
    if k > sum(counts):
        raise ValueError(f"position {k} is past the {sum(counts)} samples of the partitions")
    taken = [0] * len(counts)
    left = int(k)
    while left:
        active = [w for w, c in enumerate(counts) if taken[w] < c]
        full_rounds = min(min(counts[w] - taken[w] for w in active), left // len(active))
        if not full_rounds:
            break
        for w in active:
            taken[w] += full_rounds
        left -= full_rounds * len(active)
    return taken, left


def shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Yield ``items`` in an order shuffled through a buffer of ``size`` (step 2)."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], item
        yield out
    for j in rng.permutation(len(buf)):
        yield buf[j]


def round_robin(iterators: list[Iterator]) -> Iterator:
    """One item of each iterator in turn, dropping exhausted ones (DataLoader's worker interleaving)."""
    live = list(iterators)
    while live:
        still = []
        for it in live:
            try:
                yield next(it)
            except StopIteration:
                continue
            still.append(it)
        live = still


class ShardStream(torch.utils.data.IterableDataset):
    """(row, uint8 (1, S, S)) samples of one rank in one epoch, from position ``start`` on.

    With ``torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)`` each worker
    process serves its partition; with ``num_workers=0`` this process serves them all, in the same
    order. ``wanted`` (bool, one per shard row) marks the rows this epoch trains on.
    """

    def __init__(self, shards: ShardSet, wanted: np.ndarray, *, seed: int, epoch: int, rank: int, world: int,
                 workers: int, buffer: int, image_size: int, start: int = 0):
        super().__init__()
        self.shards, self.wanted = shards, np.asarray(wanted, dtype=bool)
        self.seed, self.epoch, self.rank, self.world = int(seed), int(epoch), int(rank), int(world)
        self.workers, self.buffer, self.image_size = max(1, int(workers)), max(1, int(buffer)), int(image_size)
        self.order = rank_shards(len(shards.shards), self.seed, self.epoch, self.rank, self.world)
        self.counts = partition_counts(shards, self.order, self.workers, self.wanted)
        self.skips, self.drop = resume_point(self.counts, int(start))

    def partition(self, w: int) -> Iterator[tuple[int, torch.Tensor]]:
        raw = (item for s in self.order[w::self.workers] for item in self.shards.iter_raw(int(s), self.wanted))
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, w])
        for i, (row, data, ext) in enumerate(shuffle_buffer(raw, self.buffer, rng)):
            if i < self.skips[w]:  # already trained on before the resume: read past, never decoded
                continue
            # uint8: a quarter of the bytes between processes; the training process scales to [0, 1]
            yield row, decode_gray(data, ext, self.image_size, where=f"{self.shards.folder} sample {row}")

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            if info.num_workers != self.workers:
                raise ShardError(f"ShardStream made for {self.workers} partitions served by {info.num_workers} "
                                 f"workers; the order would differ: use num_workers={self.workers}")
            torch.set_num_threads(1)  # one process per core already
            return self.partition(info.id)
        merged = round_robin([self.partition(w) for w in range(self.workers)])
        for _ in range(self.drop):  # the resumed round's samples already trained on
            next(merged)
        return merged


def stream_loader(stream: ShardStream):
    """An iterator over ``stream``: a DataLoader with one worker process per partition (none for one)."""
    if stream.workers <= 1:
        return iter(stream)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.workers,
                                              prefetch_factor=4, persistent_workers=False))
    for _ in range(stream.drop):  # as ShardStream.__iter__ does in one process
        next(loader)
    return loader
