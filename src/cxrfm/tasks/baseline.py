"""The from-scratch supervised baseline of the label-efficiency evaluation.

The pretrained encoder earns its keep when a linear probe on its frozen features matches what the same
architecture trained from scratch on the labels reaches (ConvNeXt / GLoRIA / ConVIRT protocol). That
comparison is only fair when the baseline is not handicapped, so here it

* sees the images at the encoder's own input size (a 64 px baseline against a 128 px encoder
  measures the resolution, not the pretraining);
* gets its schedule (epochs, learning rate) chosen among a few candidates on a patient-disjoint
  validation part carved from the *training* rows (never the evaluation rows), and the choice is
  recorded in the result;
* trains with a masked binary cross-entropy: unknown labels (NaN) are left out, never negatives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

# A validation AUROC needs both classes; fewer of either than this is noise for choosing a schedule.
MIN_VAL_LABELS = 3


@dataclass(frozen=True)
class BaselineSettings:
    """How the from-scratch baseline trains. Small on purpose: it runs beside the probe on a laptop."""

    image_size: int | None = None  # None: the encoder's input size (anything smaller handicaps the baseline)
    # (epochs, lr) candidates, cheapest first (a tie keeps the cheaper one); the second is the
    # tiny-cpu pretraining schedule, so the baseline may train exactly as long as the encoder did
    schedules: tuple[tuple[int, float], ...] = ((4, 2e-3), (10, 2e-3), (10, 5e-4))
    val_fraction: float = 0.2  # of the training patients, to choose the schedule on
    min_steps: int = 15  # the 1 % subsets are a handful of images: give them a few updates regardless
    batch_size: int = 32


class SupervisedNet(nn.Module):
    """An image tower (randomly initialised) with a linear multi-label head."""

    def __init__(self, tower: nn.Module, out_dim: int, n_labels: int):
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(out_dim, n_labels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(pixels))  # (B, F) logits


def build_scratch_tower(model_config, image_size: int, seed: int) -> tuple[nn.Module, int]:
    """The image tower architecture of ``model_config`` (None: the default) at ``image_size``, randomly
    initialised from ``seed``, and its output dimension (the models package's public builder)."""
    from ..models import build_scratch_image_tower

    return build_scratch_image_tower(model_config, int(seed), image_size=int(image_size))


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known (non-NaN) entries of ``y`` (B, F)."""
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def train_supervised(pixels: torch.Tensor, y: np.ndarray, model_config=None, epochs: int = 4, lr: float = 2e-3,
                     settings: BaselineSettings = BaselineSettings(), seed: int = 0,
                     progress: bool = False) -> SupervisedNet:
    """Train the baseline for ``epochs`` at peak ``lr`` (warm-up then cosine) on ``pixels`` (N, 1, S, S) in [0, 1]
    and labels ``y`` (N, F) 1/0/NaN."""
    tower, dim = build_scratch_tower(model_config, pixels.shape[-1], seed)
    g = torch.Generator().manual_seed(int(seed))
    net = SupervisedNet(tower, dim, y.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 1)
        net.head.reset_parameters()
    yt = torch.as_tensor(y, dtype=torch.float32)
    n = len(yt)
    per_epoch = max(1, math.ceil(n / settings.batch_size))
    steps = max(int(epochs) * per_epoch, settings.min_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    net.train()
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in tqdm(range(steps), desc="baseline", unit="step", disable=not progress, leave=False):
        if pos >= n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + settings.batch_size]
        pos += settings.batch_size
        loss = masked_bce(net(pixels[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def warmup_cosine(steps: int, warmup_fraction: float = 0.1):
    """LR multiplier per step: linear warm-up over ``warmup_fraction`` of ``steps``, then cosine to 0.

    The one-cycle shape, written out: torch's OneCycleLR divides by zero when ``0.1 * steps`` is 1
    (10 steps) or the run is one step long, which the 1 % label subsets reach."""
    warmup = max(1, int(round(warmup_fraction * steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return factor


@torch.inference_mode()
def predict_supervised(net: SupervisedNet, pixels: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, F) probabilities."""
    out = [torch.sigmoid(net(pixels[i:i + batch_size])) for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def validation_auroc(scores: np.ndarray, y: np.ndarray, min_labels: int = MIN_VAL_LABELS
                     ) -> tuple[float | None, int]:
    """Mean AUROC over the columns of ``y`` (1/0/NaN) with >= ``min_labels`` of each class, and how many."""
    from ..metrics import auroc

    vals = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        if (yj == 1).sum() >= min_labels and (yj == 0).sum() >= min_labels:
            vals.append(auroc(yj, scores[known, j]))
    return (float(np.mean(vals)) if vals else None), len(vals)


def choose_schedule(pixels: torch.Tensor, y: np.ndarray, fit: np.ndarray, val: np.ndarray, model_config=None,
                    settings: BaselineSettings = BaselineSettings(), seed: int = 0, progress: bool = False) -> dict:
    """Train each candidate schedule on rows ``fit`` of (``pixels``, ``y``) and score it on rows ``val``.

    Returns ``{"epochs", "lr", "candidates": [...], "how"}``: the candidate with the best mean validation
    AUROC (the first, i.e. cheapest, on ties or when no finding can be scored on the validation rows).
    """
    cands = [(int(e), float(lr)) for e, lr in settings.schedules]
    if not cands:
        raise ValueError("BaselineSettings.schedules is empty; give at least one (epochs, lr)")
    if len(cands) == 1:
        return {"epochs": cands[0][0], "lr": cands[0][1], "candidates": [],
                "how": "the only candidate schedule (nothing to choose)"}
    table: list[dict] = []
    for epochs, lr in cands:
        net = train_supervised(pixels[fit], y[fit], model_config, epochs, lr, settings, seed=seed, progress=progress)
        mean, n = validation_auroc(predict_supervised(net, pixels[val]), y[val])
        table.append({"epochs": epochs, "lr": lr, "val_mean_auroc": mean, "n_findings": n})
    scored = [c for c in table if c["val_mean_auroc"] is not None]
    if not scored:
        best = table[0]
        how = (f"no finding has >= {MIN_VAL_LABELS} positives and negatives in the {len(val)} validation rows: "
               f"kept the first candidate")
    else:
        best = max(scored, key=lambda c: c["val_mean_auroc"])  # max keeps the first of equals
        how = (f"best mean validation AUROC over {best['n_findings']} finding(s) on {len(val)} validation rows "
               f"carved by patient from the training part ({len(fit)} rows fitted); then refitted on all "
               f"training rows")
    return {"epochs": best["epochs"], "lr": best["lr"], "candidates": table, "how": how}

