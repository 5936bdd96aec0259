"""Pretraining the in-context segmenter on automatically made masks (MASS's pretext task), never a heart.

Each step draws episodes "segment in the query what the k supports show" (k = 1-5) of three kinds:

* ``superpixel`` — one image, a region made of SLIC superpixels (Achanta et al., TPAMI 2012; scikit-image)
  around a random seed; the query and the supports are independent random affine and intensity
  augmentations of that image and region (class-agnostic: any region, any structure).
* ``intensity`` — k + 1 different films, the same rule on each: inside one relative window, the
  largest connected region brighter (or darker) than the image's own q-th percentile after Gaussian
  smoothing. The rule is shared, the pixels differ, so the model must find "the same thing" across
  patients.
* ``lung`` — k + 1 different patients' left lung, right lung or both lungs, from the ``mask`` /
  ``mask_left_lung`` / ``mask_right_lung`` columns (a both-lungs mask is split into its two largest
  components, left / right by position).

Only those three columns are ever read: no heart mask enters training (the returned record lists the
columns and rows used; a test checks it). In a manifest that has ``mask_<structure>`` columns (the
anatomy set) only the ``train`` part of :func:`cxrfm.data.anatomy.anatomy_split` is used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.anatomy import LUNGS, anatomy_split, mask_to_input, read_mask, structure_columns, to_input
from ..errors import CxrfmError
from ..models.anatomy_nets import InContextConfig, InContextSegmenter
from .anatomy import random_affine, random_intensity, seg_loss, warmup_share

LUNG_COLUMNS = ("mask", "mask_left_lung", "mask_right_lung")  # the only mask columns ever read


@dataclass(frozen=True)
class PretextSettings:
    size: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 96)
    steps: int = 1200
    batch_size: int = 4  # episodes per step
    max_k: int = 5
    lr: float = 2e-3
    mix: tuple[float, float, float] = (0.35, 0.3, 0.35)  # superpixel, intensity, lung
    n_segments: int = 48
    exclude_licences: tuple[str, ...] = ()  # e.g. ("NC", "ND"): rows whose licence names these are left out
    max_images: int | None = None


def _split_lungs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A both-lungs mask -> (left lung, right lung): the two largest components; the patient's left is the
    image's right."""
    from scipy.ndimage import label

    lab, n = label(m)
    if n < 2:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    a, b = np.argsort(sizes)[::-1][:2] + 1
    if sizes[b - 1] < 0.2 * sizes[a - 1]:
        return None
    ma, mb = lab == a, lab == b
    ca, cb = np.where(ma)[1].mean(), np.where(mb)[1].mean()
    return (ma, mb) if ca > cb else (mb, ma)


class Pool:
    """Images (N, 1, S, S) with SLIC labels and lung masks ({'left_lung'|'right_lung'|'lungs': (M, S, S)})."""

    def __init__(self, manifests: Sequence, settings: PretextSettings, progress: bool = False):
        from ..data.images import read_image

        s = settings.size
        imgs, lungs, record = [], {"left_lung": [], "right_lung": [], "lungs": []}, []
        for man in manifests:
            table = man.table
            rows = np.arange(len(table))
            if structure_columns(table):
                rows = rows[anatomy_split(man) == "train"]
            if settings.exclude_licences and "license" in table.columns:
                lic = table["license"].fillna("").astype(str).str.upper()
                bad = np.zeros(len(table), dtype=bool)
                for word in settings.exclude_licences:
                    bad |= lic.str.contains(word.upper(), regex=False).to_numpy()
                rows = rows[~bad[rows]]
            cols = [c for c in LUNG_COLUMNS if c in table.columns]
            for r in tqdm(rows, desc=f"pretext images {man.path.name if man.path else ''}", disable=not progress,
                          leave=False):
                if settings.max_images is not None and len(imgs) >= settings.max_images:
                    break
                img = read_image(man.root / str(table["image"].iloc[r]))
                idx = len(imgs)
                imgs.append(to_input(img, s))
                got = {}
                for c in cols:
                    v = table[c].iloc[r]
                    if isinstance(v, str) and v.strip():
                        got[c] = read_mask(man.root / v, expect_hw=tuple(img.shape[-2:]))
                parts = None
                if "mask_left_lung" in got and "mask_right_lung" in got:
                    parts = (got["mask_left_lung"], got["mask_right_lung"])
                elif "mask" in got:
                    parts = _split_lungs(got["mask"])
                if parts is not None:
                    ll, rl = (mask_to_input(p, s)[0] > 0.5 for p in parts)
                    for name, m in (("left_lung", ll), ("right_lung", rl), ("lungs", ll | rl)):
                        lungs[name].append((idx, m))
                record.append({"manifest": str(man.path) if man.path else None, "image": str(table["image"].iloc[r]),
                               "mask_columns": sorted(got)})
        if len(imgs) < 6:
            raise CxrfmError(f"in-context pretraining needs >= 6 images, got {len(imgs)}")
        self.images = torch.stack(imgs)  # (N, 1, S, S)
        self.lung_index = {k: np.array([i for i, _ in v], dtype=np.int64) for k, v in lungs.items()}
        self.lung_masks = {k: (torch.stack([m for _, m in v]) if v else torch.zeros(0, s, s, dtype=torch.bool))
                           for k, v in lungs.items()}
        self.record = record
        self.superpixels = self._slic(settings, progress)

    def _slic(self, settings: PretextSettings, progress: bool) -> np.ndarray:
        try:
            from skimage.segmentation import slic
        except ImportError:
            raise CxrfmError("in-context pretraining makes its masks with scikit-image: "
                             "pip install 'cxrfm[eval]' (or scikit-image)") from None
        out = np.zeros((len(self.images), self.images.shape[-2], self.images.shape[-1]), dtype=np.int16)
        for i in tqdm(range(len(self.images)), desc="superpixels", disable=not progress, leave=False):
            img = self.images[i, 0].numpy().astype(np.float64)
            out[i] = slic(img, n_segments=settings.n_segments, compactness=0.08, channel_axis=None, start_label=0,
                          enforce_connectivity=True)
        return out


def _ok(m: torch.Tensor) -> bool:
    share = float(m.float().mean())
    return 0.004 < share < 0.6


def _superpixel_region(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = int(labels.max()) + 1
    ys, xs = np.indices(labels.shape)
    cnt = np.bincount(labels.ravel(), minlength=n).clip(1)
    cy, cx = np.bincount(labels.ravel(), ys.ravel(), n) / cnt, np.bincount(labels.ravel(), xs.ravel(), n) / cnt
    seed = int(rng.integers(n))
    radius = rng.uniform(0.0, 0.25) * labels.shape[0]
    keep = np.hypot(cy - cy[seed], cx - cx[seed]) <= radius
    keep[seed] = True
    return keep[labels]


def _intensity_rule(rng: np.random.Generator, size: int) -> dict:
    w, h = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0.05, 1 - h)
    return {"sigma": rng.uniform(1.0, 4.0), "q": rng.uniform(0.4, 0.85), "bright": bool(rng.random() < 0.7),
            "box": (int(y0 * size), int((y0 + h) * size), int(x0 * size), int((x0 + w) * size))}


def _intensity_region(img: np.ndarray, rule: dict) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, label

    y0, y1, x0, x1 = rule["box"]
    sm = gaussian_filter(img, rule["sigma"])
    win = sm[y0:y1, x0:x1]
    thr = np.quantile(win, rule["q"] if rule["bright"] else 1 - rule["q"])
    inside = (win > thr) if rule["bright"] else (win < thr)
    lab, n = label(inside)
    out = np.zeros_like(img, dtype=bool)
    if n:
        big = np.argmax(np.bincount(lab.ravel())[1:]) + 1
        out[y0:y1, x0:x1] = lab == big
    return out


class EpisodeSampler:
    def __init__(self, pool: Pool, settings: PretextSettings, seed: int):
        self.pool, self.s = pool, settings
        self.rng = np.random.default_rng(seed)
        self.g = torch.Generator().manual_seed(int(seed))
        self.lung_kinds = [k for k, v in pool.lung_index.items() if len(v) >= settings.max_k + 1]

    def _kind(self) -> str:
        p = np.asarray(self.s.mix, dtype=np.float64)
        if not self.lung_kinds:
            p[2] = 0
        return ("superpixel", "intensity", "lung")[int(self.rng.choice(3, p=p / p.sum()))]

    def episode(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k + 1, 1, S, S) images and masks; index 0 is the query."""
        pool, rng = self.pool, self.rng
        for _ in range(20):
            kind = self._kind()
            if kind == "superpixel":
                i = int(rng.integers(len(pool.images)))
                m = torch.from_numpy(_superpixel_region(pool.superpixels[i], rng))
                if not _ok(m):
                    continue
                x = pool.images[i:i + 1].expand(k + 1, -1, -1, -1)
                y = m[None, None].float().expand(k + 1, -1, -1, -1)
                x, (y,) = random_affine(x.contiguous(), self.g, 15.0, 0.2, 0.1, [y.contiguous()])
                return random_intensity(x, self.g), (y > 0.5).float()
            if kind == "intensity":
                rule = _intensity_rule(rng, pool.images.shape[-1])
                idx = rng.choice(len(pool.images), size=k + 1, replace=False)
                ms = [torch.from_numpy(_intensity_region(pool.images[j, 0].numpy(), rule)) for j in idx]
                if not all(_ok(m) for m in ms):
                    continue
                x, y = pool.images[idx], torch.stack(ms)[:, None].float()
            else:
                name = self.lung_kinds[int(rng.integers(len(self.lung_kinds)))]
                pick = rng.choice(len(pool.lung_index[name]), size=k + 1, replace=False)
                x = pool.images[pool.lung_index[name][pick]]
                y = pool.lung_masks[name][pick][:, None].float()
            x, (y,) = random_affine(x, self.g, 8.0, 0.1, 0.06, [y])
            return random_intensity(x, self.g), (y > 0.5).float()
        raise CxrfmError("could not draw a usable pretext episode in 20 tries (images too uniform?)")


def pretrain_incontext(manifests: Sequence, settings: PretextSettings = PretextSettings(), seed: int = 0,
                       progress: bool = False, pool: Pool | None = None) -> tuple[InContextSegmenter, dict]:
    """Train the in-context segmenter on pretext episodes; returns it and the training record."""
    pool = pool or Pool(manifests, settings, progress=progress)
    sampler = EpisodeSampler(pool, settings, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = InContextSegmenter(InContextConfig(widths=tuple(settings.widths), size=settings.size))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps,
                                                pct_start=warmup_share(settings.steps))
    net.train()
    losses = []
    bar = tqdm(range(settings.steps), desc="in-context pretraining", unit="step", disable=not progress, leave=False)
    for _ in bar:
        k = int(sampler.rng.integers(1, settings.max_k + 1))
        eps = [sampler.episode(k) for _ in range(settings.batch_size)]
        q = torch.stack([e[0][0] for e in eps])
        qy = torch.stack([e[1][0] for e in eps])
        si = torch.stack([e[0][1:] for e in eps])
        sm = torch.stack([e[1][1:] for e in eps])
        loss = seg_loss(net(q, si, sm), qy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    kinds = sorted({c for r in pool.record for c in r["mask_columns"]})
    record = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
              "seed": int(seed), "n_images": len(pool.images), "mask_columns_read": kinds,
              "lung_masks": {k: len(v) for k, v in pool.lung_index.items()}, "rows": pool.record,
              "final_loss": float(np.mean(losses[-50:])) if losses else None,
              "episodes": "superpixel / intensity / lung (see cxrfm.train.anatomy_pretext)"}
    return net.eval(), record


__all__ = ["LUNGS", "LUNG_COLUMNS", "PretextSettings", "Pool", "pretrain_incontext"]
