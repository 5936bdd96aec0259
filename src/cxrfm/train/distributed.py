"""Data-parallel training over processes (``torchrun --nproc-per-node N -m cxrfm pretrain ...``).

One process per device, PyTorch DDP (Li et al. 2020) with NCCL on CUDA and gloo on CPU. Every rank
walks the same global batch order (same seed), takes every ``world``-th sample of it, and the
contrastive loss is computed over the *global* batch: embeddings are gathered with
``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the gradient of its own
rows (open_clip's ``gather_with_grad``). Curation stays one decision for all ranks: embeddings a
curator looks at are gathered first, and every rank runs the identical curator on identical inputs.
Only rank 0 writes files. Without torchrun (``WORLD_SIZE`` unset) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank / world size / its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun set up (env ``WORLD_SIZE``/``RANK``); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        dev = torch.device(f"cuda:{local_rank}" if world > 1 else (device or "cuda"))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shard(items, ctx: DistContext):
    """This rank's share of a sequence: every ``world``-th item starting at ``rank``."""
    return items[ctx.rank::ctx.world]


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate equal-shaped (n, ...) tensors of all ranks (rank order), gradients flowing back."""
    if not ctx.enabled:
        return x
    import warnings

    import torch.distributed.nn.functional as dist_fn

    # Deprecated in favour of functional collectives whose backward is a reduce-scatter, which gloo
    # lacks; this one falls back to all-to-all on gloo, so CPU DDP keeps working.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x), dim=0)  # (world * n, ...)


def gather_sharded(x: torch.Tensor, n_total: int, ctx: DistContext) -> torch.Tensor:
    """Undo :func:`shard`: rank r holds rows r, r+world, ... of ``n_total``; every rank gets all rows in
    their original order (no gradient)."""
    if not ctx.enabled:
        return x
    m = -(-n_total // ctx.world)  # rows per rank, padded
    pad = torch.zeros((m - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    parts = [torch.empty((m,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(ctx.world)]
    dist.all_gather(parts, torch.cat([x, pad]).contiguous())
    out = torch.empty((n_total,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    for r, part in enumerate(parts):
        count = len(range(r, n_total, ctx.world))
        out[r::ctx.world] = part[:count]
    return out


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any (used for a consistent stop on SIGINT/SIGTERM)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([float(value)], device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, find_unused: bool = False) -> torch.nn.Module:
    """DDP-wrapped model for the training forward (gradients averaged over ranks); the model itself
    when not distributed."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    import warnings

    # Depthwise-conv weights (C, 1, k, k) get grads whose stride on the size-1 axis differs from the
    # bucket's: the same memory layout, so DDP's "grad strides do not match" warning is noise here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # gradient_as_bucket_view: grads live in DDP's buckets (no copy, and no layout mismatch warning
    # for depthwise-conv grads).
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused, gradient_as_bucket_view=True)


def gather_rows(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate equal-shaped (n, ...) tensors of all ranks in rank order, without gradient."""
    if not ctx.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)  # (world * n, ...)


def agree(value: str, ctx: DistContext, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. the digest of the data they read)."""
    if not ctx.enabled:
        return
    from ..errors import ConfigError

    values: list = [None] * ctx.world
    dist.all_gather_object(values, str(value))
    if len(set(values)) > 1:
        bad = [r for r, v in enumerate(values) if v != values[0]]
        raise ConfigError(f"ranks disagree on {what}: rank 0 has {values[0]}, rank(s) {bad} have "
                          f"{', '.join(values[r] for r in bad)}; every rank must read the same files (a shared "
                          f"file system, or the same copy on every node)")
