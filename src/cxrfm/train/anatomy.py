"""Training of the supervised anatomy U-Net (lungs left / right, heart), end to end.

Images and masks are letterboxed to the network's side (``UNetConfig.size``); every step draws a
random affine (rotation, scale, shift) applied to image and masks together, and a random gamma and
contrast on the image. The loss is BCE + soft Dice per structure, counted only where that structure's
mask exists (a row may have lungs and no heart). See :mod:`cxrfm.models.anatomy_nets`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.anatomy import mask_to_input, to_input
from ..errors import CxrfmError
from ..models.anatomy_nets import UNet, UNetConfig


@dataclass(frozen=True)
class SupervisedSettings:
    size: int = 128
    stem_stride: int = 1
    steps: int = 600  # optimisation steps (batches of 8), whatever the number of images
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rotate_deg: float = 8.0
    scale: float = 0.1
    shift: float = 0.06


def warmup_share(steps: int) -> float:
    """OneCycleLR's warm-up share: 10 % of the steps, never exactly one step (which divides by zero there)."""
    return 0.1 if round(0.1 * steps) != 1 else 0.2


def random_affine(x: torch.Tensor, g: torch.Generator, rotate_deg: float, scale: float, shift: float,
                  ys: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same random affine per sample on ``x`` (B, C, S, S) and each of ``ys`` (B, C', S, S)."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(rotate_deg)
    sc = 1 + (torch.rand(b, generator=g) * 2 - 1) * scale
    t = (torch.rand(b, 2, generator=g) * 2 - 1) * shift * 2
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, [F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) for y in ys]


def random_intensity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random gamma (0.7-1.4) and contrast (0.85-1.15) per sample; stays in [0, 1]."""
    b = x.shape[0]
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * math.log(1.4))
    c = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 0.15
    return ((x.clamp(0, 1) ** gamma - 0.5) * c + 0.5).clamp(0, 1)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice per (sample, channel), averaged over the valid ones. ``valid`` (B, C) bool."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)
    per = bce + dice  # (B, C)
    if valid is None:
        return per.mean()
    v = valid.float()
    return (per * v).sum() / v.sum().clamp_min(1)


def stack_inputs(images: Sequence[torch.Tensor], masks: dict[str, Sequence], structures: Sequence[str],
                 size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) images, (N, C, S, S) targets, (N, C) valid flags, letterboxed to ``size``."""
    x = torch.stack([to_input(im, size) for im in images])
    y = torch.zeros((len(images), len(structures), size, size))
    valid = torch.zeros((len(images), len(structures)), dtype=torch.bool)
    for j, s in enumerate(structures):
        for i, m in enumerate(masks.get(s, [None] * len(images))):
            if m is not None:
                y[i, j] = mask_to_input(m, size)[0]
                valid[i, j] = True
    return x, y, valid


def fit_supervised(images: Sequence[torch.Tensor], masks: dict[str, Sequence], structures: Sequence[str] | None = None,
                   settings: SupervisedSettings = SupervisedSettings(), seed: int = 0,
                   progress: bool = False) -> UNet:
    """Train a :class:`UNet` on images (1, H, W) and ``masks[structure][i]`` (bool (H, W) or None)."""
    structures = tuple(structures or masks.keys())
    if not images:
        raise CxrfmError("no training images for the anatomy model")
    x, y, valid = stack_inputs(images, masks, structures, settings.size)
    if not valid.any():
        raise CxrfmError(f"none of the {len(images)} training images has a mask for {', '.join(structures)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = UNet(UNetConfig(structures=structures, size=settings.size, stem_stride=settings.stem_stride))
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps,
                                                pct_start=warmup_share(settings.steps))
    net.train()
    n = len(x)
    for _ in tqdm(range(settings.steps), desc="anatomy U-Net", unit="step", disable=not progress, leave=False):
        idx = torch.randint(0, n, (min(settings.batch_size, max(n, 2)),), generator=g)
        xb, (yb,) = random_affine(x[idx], g, settings.rotate_deg, settings.scale, settings.shift, [y[idx]])
        loss = seg_loss(net(random_intensity(xb, g)), yb, valid[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()
