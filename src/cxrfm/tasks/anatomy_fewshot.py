"""Few-shot anatomy for the ``anatomy`` task: the in-context segmenter at k = 1, 3, 5 and its baselines.

Supports are drawn from the evaluated manifest's own training rows (other patients than the test
queries): per draw one random order of the training rows, and for each structure the first k rows of
that order with its mask, so the k = 1 support is inside the k = 3 one (nested draws make the k
comparison less noisy). Every test row with the structure's mask is a query. Dice per (draw, query);
the mean has a percentile CI from a two-way bootstrap that resamples draws and patients together
(:func:`two_way_ci`), since both vary.

Baselines, on the same draws and queries: ``atlas`` (the mean of the k support masks letterboxed to a
common size, thresholded at 0.5; no model), ``supervised_k`` (the supervised U-Net of
:func:`cxrfm.train.anatomy.fit_supervised` trained on the same k shots); once, ``label_fraction``
(the U-Net on 10 / 20 / 40 / 100 % of the training rows' labels, MASS's comparison) and
``frozen_decoder`` (the segmentation task's :class:`~cxrfm.tasks.segmentation.LightDecoder` on the
suite model's frozen feature maps, one per structure).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.anatomy import from_input, mask_to_input, to_input
from ..metrics import bootstrap_mean_ci
from .segmentation import dice_score, extract_features, train_decoder

if TYPE_CHECKING:
    from .anatomy import AnatomySettings


@dataclass
class AnatomyData:
    """The evaluated rows in memory: images (1, H, W), masks per structure (bool (H, W) or None), and
    positions of the training and test rows in these lists."""

    ids: list[str]
    pids: np.ndarray
    images: list[torch.Tensor]
    masks: dict[str, list]
    train: np.ndarray
    test: np.ndarray

    @property
    def structures(self) -> list[str]:
        return list(self.masks)

    def with_mask(self, structure: str, positions: np.ndarray) -> np.ndarray:
        return np.array([p for p in positions if self.masks[structure][p] is not None], dtype=np.int64)


# ---------------------------------------------------------------- statistics
def two_way_ci(values: np.ndarray, groups: Sequence, rng: np.random.Generator, n_boot: int = 1000,
               alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the mean of ``values`` (D draws, Q queries), resampling draws and patients
    (``groups``, one per query) with replacement in each bootstrap sample."""
    import pandas as pd

    v = np.asarray(values, dtype=np.float64)
    d = v.shape[0]
    inv, uniq = pd.factorize(pd.Series(np.asarray(groups, dtype=object)))
    g = len(uniq)
    out = np.empty(n_boot)
    chunk = max(1, 500_000 // max(g, v.shape[1]))
    for b0 in range(0, n_boot, chunk):
        b1 = min(n_boot, b0 + chunk)
        pat = rng.integers(0, g, size=(b1 - b0, g))
        w = np.stack([np.bincount(x, minlength=g) for x in pat])[:, inv].astype(np.float64)  # (B, Q)
        per_draw = (v @ w.T) / w.sum(axis=1)  # (D, B): each draw's patient-resampled mean
        draws = rng.integers(0, d, size=(b1 - b0, d))  # (B, D)
        out[b0:b1] = per_draw[draws, np.arange(b1 - b0)[:, None]].mean(axis=1)
    lo, hi = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarize_draws(values: np.ndarray, groups: Sequence, rng: np.random.Generator, n_boot: int) -> dict:
    """Dice (D, Q) -> mean over draws and queries, two-way CI, median, sizes."""
    v = np.asarray(values, dtype=np.float64)
    return {"dice": {"mean": float(v.mean()), "ci": list(two_way_ci(v, groups, rng, n_boot)),
                     "median": float(np.median(v)), "per_draw": [float(x) for x in v.mean(axis=1)]},
            "n_draws": int(v.shape[0]), "n_queries": int(v.shape[1]), "n_patients": int(len(set(groups)))}


def summarize_queries(dice: np.ndarray, groups: Sequence, rng: np.random.Generator, n_boot: int) -> dict:
    """Dice per query -> mean with a patient-bootstrap CI, median, n."""
    d = np.asarray(dice, dtype=np.float64)
    return {"dice": {"mean": float(d.mean()), "ci": list(bootstrap_mean_ci(d, groups, rng, n_boot)),
                     "median": float(np.median(d))}, "n": int(len(d))}


# ---------------------------------------------------------------- supports
def draw_supports(data: AnatomyData, draws: int, k_max: int, rng: np.random.Generator) -> list[dict[str, list[int]]]:
    """Per draw ``{structure: up to k_max training positions with that mask}``, in one random order."""
    out = []
    for _ in range(int(draws)):
        order = rng.permutation(data.train)
        out.append({s: [int(p) for p in order if data.masks[s][p] is not None][:k_max] for s in data.structures})
    return out


def atlas_mask(support_masks: Sequence[np.ndarray], height: int, width: int, size: int) -> np.ndarray:
    """The atlas baseline: mean of the support masks letterboxed to ``size``, > 0.5, back at (height, width)."""
    mean = torch.stack([mask_to_input(m, size) for m in support_masks]).mean(0)  # (1, S, S)
    return (from_input((mean > 0.5).float(), height, width)[0] > 0.5).numpy()


def _fewshot_grid(data: AnatomyData, supports: list[dict[str, list[int]]], ks: Sequence[int], what: str,
                  predict, progress: bool) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Dice arrays (draws, queries) per structure and k for ``predict(draw, k, structure, support positions)
    -> (query position -> bool mask)``; and the reasons a (structure, k) was not run. Order: draw, k,
    structure (a baseline fitted per draw and k serves every structure in a row)."""
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in data.structures}
    missing: dict[str, str] = {}
    todo = [(d, s, k) for d in range(len(supports)) for k in ks for s in data.structures]
    for d, s, k in tqdm(todo, desc=f"few-shot {what}", disable=not progress, leave=False):
        rows = supports[d][s][:k]
        queries = data.with_mask(s, data.test)
        if len(rows) < k or not len(queries):
            missing[f"{s}/{k}"] = (f"{len(rows)} training rows have a {s} mask (k = {k} needs {k})" if len(rows) < k
                                   else f"no test row has a {s} mask")
            continue
        seg = predict(d, k, s, rows)
        arr = out[s].setdefault(str(k), np.zeros((len(supports), len(queries))))
        for j, q in enumerate(queries):
            arr[d, j] = dice_score(seg(q), data.masks[s][q])
    return out, missing


def fewshot_model(net, data: AnatomyData, supports, ks, threshold: float, progress: bool = False):
    """The in-context segmenter (supports encoded once per draw, :class:`cxrfm.inference.anatomy.FewShot`)."""
    from ..inference.anatomy import FewShot

    def predict(d, k, s, rows):
        fs = FewShot([data.images[r] for r in rows], [data.masks[s][r] for r in rows], model=net, threshold=threshold)
        return lambda q: fs(data.images[q])

    return _fewshot_grid(data, supports, ks, "in-context model", predict, progress)


def fewshot_atlas(data: AnatomyData, supports, ks, size: int, progress: bool = False):
    def predict(d, k, s, rows):
        masks = [data.masks[s][r] for r in rows]
        return lambda q: atlas_mask(masks, *data.images[q].shape[-2:], size)

    return _fewshot_grid(data, supports, ks, "atlas", predict, progress)


def predict_positions(net, data: AnatomyData, positions: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """Supervised predictions for ``positions``: {position: {structure: bool (H, W)}} (threshold 0.5),
    through :class:`cxrfm.inference.anatomy.Anatomy`, the code that serves the outlines."""
    from ..inference.anatomy import Anatomy

    served = Anatomy(model=net)
    return {int(p): served.structures(data.images[p]) for p in positions}


def fit_on(data: AnatomyData, positions_by_structure: dict[str, Sequence[int]], settings, seed: int,
           progress: bool = False):
    """:func:`fit_supervised` on the union of the positions, each structure's mask only where listed."""
    from ..train.anatomy import fit_supervised

    listed = {s: {int(p) for p in positions_by_structure.get(s, ())} for s in data.structures}
    rows = sorted(set().union(*listed.values()))
    masks = {s: [data.masks[s][r] if r in listed[s] else None for r in rows] for s in data.structures}
    return fit_supervised([data.images[r] for r in rows], masks, data.structures, settings, seed=seed,
                          progress=progress)


def fewshot_supervised(data: AnatomyData, supports, ks, settings: "AnatomySettings", seed: int,
                       progress: bool = False):
    """The U-Net trained on the same k shots of each draw (one fit per draw and k, every structure)."""
    sup = replace(settings.supervised, steps=settings.shot_steps or settings.supervised.steps)
    cache: dict[tuple[int, int], dict] = {}

    def predict(d, k, s, rows):
        if (d, k) not in cache:
            shots = {t: supports[d][t][:k] for t in data.structures}
            net = fit_on(data, shots, sup, seed=seed + 1000 * d + k)
            cache.clear()  # one fit's predictions at a time (the grid visits each (draw, k) once)
            cache[(d, k)] = predict_positions(net, data, data.test)
        preds = cache[(d, k)]
        return lambda q: preds[int(q)][s]

    return _fewshot_grid(data, supports, ks, "supervised on k shots", predict, progress)


def label_fractions(data: AnatomyData, full_preds: dict[int, dict[str, np.ndarray]], settings: "AnatomySettings",
                    seed: int, rng: np.random.Generator, n_boot: int, progress: bool = False) -> dict:
    """The U-Net on a random share of the training rows' labels (1.0 reuses the task's supervised model)."""
    out = {}
    for f in tqdm(settings.fractions, desc="label fractions", disable=not progress, leave=False):
        n = max(1, int(round(float(f) * len(data.train))))
        if n >= len(data.train):
            preds, rows = full_preds, data.train
        else:
            rows = np.sort(rng.choice(data.train, size=n, replace=False))
            net = fit_on(data, {s: rows for s in data.structures}, settings.supervised, seed=seed + n)
            preds = predict_positions(net, data, data.test)
        entry = {"fraction": float(f), "n_train": int(len(rows))}
        for s in data.structures:
            q = data.with_mask(s, data.test)
            if len(q):
                entry[s] = summarize_queries([dice_score(preds[int(p)][s], data.masks[s][p]) for p in q],
                                             data.pids[q], rng, n_boot)
        out[f"{float(f):g}"] = entry
    return out


class _Batches:
    """Row-indexed (N, 1, S, S) pixels in the ImageBatches shape that extract_features reads."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, rows) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(rows, dtype=np.int64))]


def has_features(model) -> bool:
    return hasattr(model, "forward_features") or hasattr(getattr(model, "image", None), "forward_features")


def frozen_decoder(model, data: AnatomyData, settings: "AnatomySettings", seed: int, rng: np.random.Generator,
                   n_boot: int, progress: bool = False) -> dict:
    """One LightDecoder per structure on the suite model's frozen feature maps; Dice at the image's size."""
    if model is None or not has_features(model):
        return {"skipped": f"{type(model).__name__} exposes no forward_features (nor an image tower with one): the "
                           f"frozen-encoder decoder needs the encoder's feature maps"}
    size = int(model.image_size)
    x = torch.stack([to_input(im, size) for im in data.images])
    feats = extract_features(model, _Batches(x), np.arange(len(x)), progress=progress)
    out: dict = {"description": f"the segmentation task's LightDecoder on the frozen encoder's feature maps at "
                               f"{size} px, one per structure", "image_size": size}
    for s in data.structures:
        tr, q = data.with_mask(s, data.train), data.with_mask(s, data.test)
        if len(tr) < 2 or not len(q):
            out[s] = {"skipped": f"{len(tr)} training and {len(q)} test rows have a {s} mask (needs >= 2 and >= 1)"}
            continue
        y = (torch.stack([mask_to_input(data.masks[s][p], size) for p in tr]) > 0.5).float()
        dec = train_decoder([f[torch.as_tensor(tr)] for f in feats], y, settings.decoder, seed=seed,
                            progress=progress)
        with torch.inference_mode():
            prob = torch.sigmoid(dec([f[torch.as_tensor(q)] for f in feats], size))  # (Q, 1, S, S)
        dice = [dice_score((from_input(prob[i], *data.images[p].shape[-2:])[0] > settings.threshold).numpy(),
                           data.masks[s][p]) for i, p in enumerate(q)]
        out[s] = summarize_queries(dice, data.pids[q], rng, n_boot)
    return out


# ---------------------------------------------------------------- the in-context model's training record
def pretraining_check(model_dir: Path, test_images: Sequence[str]) -> dict:
    """What the in-context model's folder says it was trained on: whether a heart mask column was read,
    and how many test images (by file name) were among its pretext images."""
    from ..models.anatomy_store import read_meta

    rec = (read_meta(model_dir).get("training") or {}).get("incontext")
    if not isinstance(rec, dict):
        return {"record": False, "note": f"{model_dir}: anatomy.json has no in-context training record; what the "
                                         f"model saw cannot be checked"}
    rows = [r for r in rec.get("rows") or [] if isinstance(r, dict)]
    cols = set(map(str, rec.get("mask_columns_read") or [])) | {str(c) for r in rows for c in r.get("mask_columns", [])}
    seen = {Path(str(r.get("image", ""))).name for r in rows}
    return {"record": True, "mask_columns_read": sorted(cols),
            "heart_mask_read": any("heart" in c.lower() for c in cols),
            "n_pretext_images": int(rec.get("n_images") or len(rows)),
            "n_test_images_in_pretext": int(sum(Path(t).name in seen for t in test_images))}
