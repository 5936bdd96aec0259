"""Training augmentation of chest radiographs, seeded per batch.

Random resized crop and a small rotation as one affine warp on CPU tensors; no flips, because left and
right are anatomy in a chest radiograph (situs, cardiomegaly).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig


def random_affine(n: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices: zoom into a crop of area in [crop_scale, 1], shift it inside the image,
    rotate by up to ``max_rotation_deg``. No flips (left/right is anatomy in a chest radiograph)."""
    u = torch.rand(n, 4, generator=generator)  # (n, 4)
    side = torch.sqrt(cfg.crop_scale + (1 - cfg.crop_scale) * u[:, 0])  # crop side / image side
    angle = (2 * u[:, 1] - 1) * math.radians(cfg.max_rotation_deg)
    tx, ty = (2 * u[:, 2] - 1) * (1 - side), (2 * u[:, 3] - 1) * (1 - side)
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (n, 2, 3)


def apply_affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, 1, S, S) images under (B, 2, 3) affine matrices (bilinear, black outside)."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, epoch, batch): every batch's augmentation is reproducible alone."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)
