"""The optimiser and the learning-rate schedule of pretraining (CLIP's recipe, Radford et al. 2021):
AdamW with decoupled weight decay on weight matrices only, linear warm-up then cosine decay."""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig

NO_DECAY = ("log_scale", "logit_bias")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Decoupled weight decay on weight matrices only: decaying norms, biases and the
        # temperature pulls them towards 0, which is not a prior anyone wants (CLIP, open_clip).
        (no_decay if p.ndim < 2 or name in NO_DECAY else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def learning_rate(cfg: TrainConfig, epoch: int, batch_in_epoch: int, n_batches: int) -> float:
    """The rate for batch ``batch_in_epoch`` of ``n_batches`` in ``epoch``: warm-up, then cosine to
    ``lr * min_lr_fraction``, as a function of the progress after this step."""
    done = (epoch + (batch_in_epoch + 1) / max(n_batches, 1)) / cfg.epochs
    if cfg.warmup_fraction > 0 and done <= cfg.warmup_fraction:
        return cfg.lr * done / cfg.warmup_fraction
    q = (done - cfg.warmup_fraction) / max(1 - cfg.warmup_fraction, 1e-9)
    low = cfg.lr * cfg.min_lr_fraction
    return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * min(q, 1.0)))
