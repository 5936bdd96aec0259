"""Lung segmentation from the frozen image encoder: a light decoder on its feature maps, Dice and HD95.

The dense-prediction transfer test of GLoRIA (Huang et al., ICCV 2021) and MedKLIP/BioViL-style
evaluations: the pretrained encoder is frozen, a small decoder is trained on its multi-scale feature
maps (an FPN-style head, Lin et al. CVPR 2017, reduced to 1x1 projections, a sum and two convolutions)
with BCE + soft Dice (Milletari et al., V-Net, 3DV 2016), and scored on held-out patients. The baseline
is the same decoder on the same architecture with random weights: what the pretraining adds.

Masks come from the manifest's ``mask`` column through the mask cache (letterboxed like their
images, so both align at the model's input size). Metrics are computed at that size:

* Dice per image, mean with a patient-level bootstrap 95 % CI;
* HD95, the 95th percentile of the symmetric surface distance in pixels (MONAI's
  ``compute_hausdorff_distance(percentile=95)`` definition: surfaces are mask XOR its erosion; the
  larger of the two directed 95th percentiles), computed with ``scipy.ndimage`` distance transforms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CxrfmError
from ..metrics import bootstrap_mean_ci
from .embed import ImageBatches
from .split import TaskSplit, context_images, resolve_split, train_images

if TYPE_CHECKING:
    from .suite import EvalContext

MIN_TRAIN_MASKS = 8
MIN_EVAL_MASKS = 3
OVERLAY_FILES = {"best": "segmentation_best.png", "median": "segmentation_median.png",
                 "worst": "segmentation_worst.png"}


@dataclass(frozen=True)
class DecoderSettings:
    """Training of the light decoder. The encoder is frozen, so features are computed once and only
    the ~30k decoder parameters are trained: seconds per epoch on a laptop CPU."""

    width: int = 32  # channels of the projected feature maps
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    threshold: float = 0.5  # on the sigmoid probability


# ---------------------------------------------------------------- metrics
def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """2|P & T| / (|P| + |T|) of two boolean masks; 1.0 when both are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask ^ binary_erosion(mask)


def hd95(pred: np.ndarray, target: np.ndarray, percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance (pixels) between two boolean 2-D masks.

    Surfaces are each mask XOR its erosion; each surface pixel's distance to the nearest surface
    pixel of the other mask comes from a Euclidean distance transform; the result is the larger of the
    two directed percentiles. 0.0 when both masks are empty, NaN when only one is (undefined).
    """
    from scipy.ndimage import distance_transform_edt

    p, t = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"hd95: masks of shape {p.shape} and {t.shape}")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    d_pt = distance_transform_edt(~st)[sp]  # each pred surface pixel -> nearest target surface pixel
    d_tp = distance_transform_edt(~sp)[st]
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


# ---------------------------------------------------------------- features and decoder
def encoder_feature_maps(model, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The frozen image encoder's feature maps [(B, C_i, h_i, w_i), ...], shallow -> deep.

    The image tower's ``forward_features`` (the tower contract, :mod:`cxrfm.models.tower`): the stage
    outputs of ConvNeXt / ResNet, the patch-token grids of a ViT. A model that answers
    ``forward_features`` itself (a stand-in, a bare tower) is asked directly.
    """
    from ..models.image import resize_to

    x = resize_to(pixels, int(model.image_size))
    tower = model if hasattr(model, "forward_features") else getattr(model, "image", None)
    if not hasattr(tower, "forward_features"):
        raise CxrfmError(f"{type(model).__name__} exposes no spatial features (no forward_features on the model "
                         f"or its image tower); segmentation needs the encoder's feature maps")
    maps = tower.forward_features(x)
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)


@torch.inference_mode()
def extract_features(model, images: ImageBatches, rows: np.ndarray, batch_size: int = 64,
                     progress: bool = False) -> list[torch.Tensor]:
    """Feature maps of ``rows`` stored as float16 [(N, C_i, h_i, w_i), ...] (the encoder runs once)."""
    if hasattr(model, "eval"):
        model.eval()
    parts: list[list[torch.Tensor]] = []
    for s in tqdm(range(0, len(rows), batch_size), desc="encoder features", disable=not progress, leave=False):
        parts.append([m.to(torch.float16) for m in encoder_feature_maps(model, images.batch(rows[s:s + batch_size]))])
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


class LightDecoder(nn.Module):
    """1x1 projection of each feature map, upsampled to the finest and summed, then 3x3 conv + 1x1 conv."""

    def __init__(self, channels: Sequence[int], width: int = 32):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.fuse = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, maps: Sequence[torch.Tensor], size: int) -> torch.Tensor:
        h, w = maps[0].shape[-2:]
        x = sum(F.interpolate(p(m.float()), size=(h, w), mode="bilinear", align_corners=False)
                for p, m in zip(self.proj, maps))  # (B, W, h, w)
        logits = self.fuse(x)  # (B, 1, h, w)
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)  # (B, 1, S, S)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def train_decoder(features: list[torch.Tensor], masks: torch.Tensor, settings: DecoderSettings = DecoderSettings(),
                  seed: int = 0, progress: bool = False) -> LightDecoder:
    """Fit a :class:`LightDecoder` on precomputed ``features`` to ``masks`` (N, 1, S, S) in {0, 1}."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        dec = LightDecoder([f.shape[1] for f in features], settings.width)
    n, size = len(masks), masks.shape[-1]
    steps = settings.epochs * max(1, math.ceil(n / settings.batch_size))
    opt = torch.optim.AdamW(dec.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.1)
    dec.train()
    order, pos = torch.randperm(n, generator=g), 0
    for _ in tqdm(range(steps), desc="decoder", unit="step", disable=not progress, leave=False):
        if pos >= n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + settings.batch_size]
        pos += settings.batch_size
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        loss = _loss(dec([f[idx] for f in features], size), masks[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return dec.eval()


@torch.inference_mode()
def predict_masks(decoder: LightDecoder, features: list[torch.Tensor], size: int, threshold: float = 0.5,
                  batch_size: int = 128) -> np.ndarray:
    """(N, S, S) boolean predicted masks."""
    out = [torch.sigmoid(decoder([f[i:i + batch_size] for f in features], size))[:, 0] > threshold
           for i in range(0, len(features[0]), batch_size)]
    return torch.cat(out).numpy()


def score_masks(pred: np.ndarray, target: np.ndarray, groups: Sequence, rng: np.random.Generator,
                n_boot: int = 1000) -> dict:
    """Dice (mean, patient-bootstrap CI, per image) and HD95 (mean over images where it is defined)."""
    dice = np.array([dice_score(p, t) for p, t in zip(pred, target)])
    hd = np.array([hd95(p, t) for p, t in zip(pred, target)])
    ok = np.isfinite(hd)
    return {
        "dice": {"mean": float(dice.mean()), "ci": list(bootstrap_mean_ci(dice, groups, rng, n_boot)),
                 "median": float(np.median(dice))},
        "hd95": {"mean": float(hd[ok].mean()) if ok.any() else None,
                 "median": float(np.median(hd[ok])) if ok.any() else None,
                 "n_undefined": int((~ok).sum()), "unit": "pixels at the model's input size"},
        "per_image_dice": dice,
    }


def segment_with_encoder(model, train_imgs: ImageBatches, train_rows: np.ndarray, train_masks: torch.Tensor,
                         eval_imgs: ImageBatches, eval_rows: np.ndarray, eval_masks: torch.Tensor,
                         eval_groups: Sequence, rng: np.random.Generator, settings: DecoderSettings = DecoderSettings(),
                         seed: int = 0, n_boot: int = 1000, progress: bool = False) -> tuple[dict, np.ndarray]:
    """Train the decoder on ``model``'s frozen features of the training rows, score it on the eval rows.

    Returns (scores, predicted eval masks (M, S, S) bool)."""
    size = int(eval_masks.shape[-1])
    f_train = extract_features(model, train_imgs, train_rows, progress=progress)
    dec = train_decoder(f_train, train_masks, settings, seed=seed, progress=progress)
    del f_train
    f_eval = extract_features(model, eval_imgs, eval_rows, progress=progress)
    pred = predict_masks(dec, f_eval, size, settings.threshold)
    return score_masks(pred, eval_masks[:, 0].numpy() > 0.5, eval_groups, rng, n_boot), pred


def random_encoder(model, seed: int):
    """The same architecture as ``model``'s image encoder with random weights (the baseline)."""
    from ..models import build_scratch_image_tower

    if hasattr(model, "randomized"):  # stand-in models provide their own
        return model.randomized(seed)
    from types import SimpleNamespace

    tower, _ = build_scratch_image_tower(getattr(model, "config", None), seed, image_size=int(model.image_size))
    return SimpleNamespace(image_size=int(model.image_size), image=tower.eval())


def save_overlay(image: np.ndarray, target: np.ndarray, pred: np.ndarray, title: str, path: str | Path) -> Path:
    """The image with the reference outline (green) and the predicted outline (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3.2, 3.4), dpi=110)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for m, colour in ((target, "lime"), (pred, "red")):
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the suite task
def _mask_cache(manifest, size: int, context: "EvalContext"):
    from ..data.cache import ImageCache

    return ImageCache.build(manifest, size, cache_dir=context.cache_dir, progress=context.progress, column="mask")


def run(context: "EvalContext", settings: DecoderSettings = DecoderSettings()) -> dict:
    """The ``segmentation`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .suite import TaskSkipped

    manifest = context.manifest
    if "mask" not in manifest.table.columns or not manifest.table["mask"].notna().any():
        raise TaskSkipped("no lung masks: the manifest has no 'mask' column with mask paths")
    split: TaskSplit = resolve_split(context)
    size = int(context.model.image_size)
    try:
        eval_cache = _mask_cache(manifest, size, context)
        train_cache = (_mask_cache(split.train, size, context) if split.train_external else eval_cache)
    except CxrfmError as e:
        raise TaskSkipped(f"lung masks cannot be used: {e}") from None
    train_rows = split.train_rows[train_cache.has[split.train_rows]]
    eval_rows = split.eval_rows[eval_cache.has[split.eval_rows]]
    if len(train_rows) < MIN_TRAIN_MASKS or len(eval_rows) < MIN_EVAL_MASKS:
        raise TaskSkipped(f"{len(train_rows)} training and {len(eval_rows)} eval images have a lung mask; needs "
                          f">= {MIN_TRAIN_MASKS} and >= {MIN_EVAL_MASKS} ({split.how})")
    train_masks, eval_masks = train_cache.batch(train_rows), eval_cache.batch(eval_rows)  # (N, 1, S, S)
    t_imgs, e_imgs = train_images(context, split), context_images(context)
    pids = manifest.table["patient_id"].to_numpy()[eval_rows]
    rng = context.rng("segmentation")
    ours, pred = segment_with_encoder(context.model, t_imgs, train_rows, train_masks, e_imgs, eval_rows, eval_masks,
                                      pids, rng, settings, seed=context.seed, n_boot=context.n_boot,
                                      progress=context.progress)
    scratch = random_encoder(context.model, int(rng.integers(2**31)))  # another draw than the model's own init
    base, _ = segment_with_encoder(scratch, t_imgs, train_rows, train_masks, e_imgs, eval_rows, eval_masks, pids,
                                   rng, settings, seed=context.seed, n_boot=context.n_boot, progress=context.progress)
    dice = ours.pop("per_image_dice")
    base.pop("per_image_dice")
    order = np.argsort(dice, kind="stable")
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    overlays: dict[str, dict] = {}
    out_dir = getattr(context, "out_dir", None)
    ids = manifest.ids
    for name, k in picks.items():
        entry = {"image": ids[eval_rows[k]], "dice": float(dice[k]), "path": None}
        if out_dir is not None:
            img = e_imgs.batch([eval_rows[k]])[0, 0].numpy()
            entry["path"] = str(save_overlay(
                img, eval_masks[k, 0].numpy() > 0.5, pred[k], f"{name}: Dice {dice[k]:.3f}\n{ids[eval_rows[k]]}",
                Path(out_dir) / OVERLAY_FILES[name]))
        overlays[name] = entry
    return {
        "split": split.describe(),
        "n": int(len(eval_rows)),
        "n_train": int(len(train_rows)),
        "n_eval": int(len(eval_rows)),
        "n_eval_patients": int(len(set(pids))),
        "image_size": size,
        "prevalence": float(eval_masks.mean()),  # share of lung pixels in the eval masks
        "dice": ours["dice"],
        "hd95": ours["hd95"],
        "baseline": {"description": "the same decoder on the same encoder architecture with random weights",
                     "dice": base["dice"], "hd95": base["hd95"]},
        "decoder": {"width": settings.width, "epochs": settings.epochs, "batch_size": settings.batch_size,
                    "lr": settings.lr, "threshold": settings.threshold, "loss": "BCE + soft Dice",
                    "encoder": "frozen"},
        "n_boot": context.n_boot,
        "overlays": overlays,
    }


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="segmentation", run=run, title="Lung segmentation", needs=("masks",),
    result_keys=("dice", "hd95", "baseline", "overlays", "n_eval"),
    console="cxrfm.reporting.sections.segmentation:console", html="cxrfm.reporting.sections.segmentation:html",
    default=False, order=40, summary="Dice/HD95 of a decoder on the frozen encoder"))
