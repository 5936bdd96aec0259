"""The model-free half of the OOD gate: is this a chest film, judged without the network?

It carries the gate's guarantee (refuse what is not a chest radiograph, pass real ones from any
hospital), so that the verdict holds for a model trained on ten images as for one trained on a million.
Three checks, in order, each with the reason it gives:

1. **too small**: a shortest side under :data:`MIN_SIDE` px cannot be read as a film (icons, face crops);
2. **colour**: the source's channels disagree (:func:`gate_features.colourfulness` above
   ``max_colourfulness``); only when the caller hands the source (bytes, path or RGB array), since the
   reader makes every image grey;
3. **statistics**: a quadratic logistic score over :data:`gate_features.FEATURES` plus ``layout`` (best
   absolute correlation of the 24 px thumbnail with k-means prototypes of chest films), all
   polarity-invariant so an inverted film passes. Fitted (:func:`fit_params`) on a validation part of
   real CXRs against a validation part of non-CXR families; its threshold lets through all but
   ``threshold_quantile`` of the validation CXRs. A quadratic score can call far-away points positive,
   so it is trusted only inside an envelope: each (transformed, standardised) feature within the
   validation CXRs' range widened by ``envelope_margin`` robust sd; outside, the image is refused.

The fitted numbers ship as ``prompts/gate_model_free.json`` (with provenance); ``benchmarks/ood_gate.py
--write-params`` refits them.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import gate_features as gf

PARAMS_PATH = Path(__file__).resolve().parent / "prompts" / "gate_model_free.json"
MIN_SIDE = 64  # the shared CXRs' shortest side is >= 101 px
COLUMNS = gf.NAMES + ("layout",)
# monotone transforms that spread the tails where chest films and the rest part (blank: std -> 0, noise:
# fine_energy -> 1, gradients: fine_energy -> 0); each keeps the direction of its feature
_LOG = {"std": 1e-3, "fine_energy": 1e-3, "edge_density": 1e-3, "modal_fraction": 1e-3, "extremes": 1e-2, "levels": 1e-6}
_LOG_ONE_MINUS = {"lowfreq_share": 1e-3, "entropy": 1e-3}


def raw_features(img: torch.Tensor, prototypes: np.ndarray) -> np.ndarray:
    """(len(COLUMNS),) untransformed features of one (1, H, W) image; ``prototypes`` (K, 576)."""
    layout = float(np.abs(prototypes @ gf.layout_thumb(img)).max())
    return np.r_[gf.image_features(img), layout]


def transform(raw: np.ndarray) -> np.ndarray:
    """(N, C) raw features -> the space the score is fitted in (see _LOG / _LOG_ONE_MINUS)."""
    out = np.array(raw, dtype=np.float64, copy=True)
    for name, eps in _LOG.items():
        i = COLUMNS.index(name)
        out[:, i] = np.log(np.maximum(out[:, i], 0) + eps)
    for name, eps in _LOG_ONE_MINUS.items():
        i = COLUMNS.index(name)
        out[:, i] = np.log(np.maximum(1 - out[:, i], 0) + eps)
    return out


def quadratic(z: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C + C(C+1)/2): the terms z_i and z_i z_j (i <= j) the logistic score is linear in."""
    iu = np.triu_indices(z.shape[1])
    return np.concatenate([z, (z[:, :, None] * z[:, None, :])[:, iu[0], iu[1]]], axis=1)


@dataclass
class ModelFreeGate:
    """The fitted model-free check; :meth:`verdict` per image, :meth:`margins` for many."""

    centre: np.ndarray  # (C,) median of the transformed features on validation CXRs
    scale: np.ndarray  # (C,) robust sd (IQR / 1.349) of the same
    coef: np.ndarray  # (C + C(C+1)/2,)
    intercept: float
    threshold: float  # on the logistic score; margin = score - threshold, >= 0 passes
    prototypes: np.ndarray  # (K, 576) unit-norm 24 px layout prototypes
    lo: np.ndarray  # (C,) per-feature 0.5 % / 99.5 % quantiles of validation CXRs (raw), for the reason
    hi: np.ndarray
    env_lo: np.ndarray  # (C,) the envelope, in standardised transformed units
    env_hi: np.ndarray
    max_colourfulness: float
    provenance: dict

    @classmethod
    def from_params(cls, p: dict) -> ModelFreeGate:
        if tuple(p.get("columns", ())) != COLUMNS:
            raise ConfigError(f"{PARAMS_PATH}: fitted for features {p.get('columns')}, this cxrfm computes {COLUMNS}; "
                              "refit with `python benchmarks/ood_gate.py --write-params`")
        a = {k: np.asarray(p[k], dtype=np.float64) for k in ("centre", "scale", "coef", "prototypes", "lo", "hi",
                                                          "env_lo", "env_hi")}
        return cls(intercept=float(p["intercept"]), threshold=float(p["threshold"]),
                   max_colourfulness=float(p["max_colourfulness"]), provenance=dict(p.get("provenance", {})), **a)

    def raw(self, images) -> np.ndarray:
        return np.stack([raw_features(im, self.prototypes) for im in images]) if len(images) else \
            np.zeros((0, len(COLUMNS)))

    def scores_from_raw(self, raw: np.ndarray) -> np.ndarray:
        z = (transform(raw) - self.centre) / self.scale
        return quadratic(z) @ self.coef + self.intercept

    def envelope_excess(self, raw: np.ndarray) -> np.ndarray:
        """(N,) how far (robust sd) the furthest feature lies outside the envelope; 0 inside."""
        z = (transform(raw) - self.centre) / self.scale
        return np.maximum(np.maximum(self.env_lo - z, z - self.env_hi), 0).max(axis=1)

    def margins_from_raw(self, raw: np.ndarray) -> np.ndarray:
        """(N,) score - threshold, capped at -excess outside the envelope (>= 0: a chest film)."""
        m = self.scores_from_raw(raw) - self.threshold
        ex = self.envelope_excess(raw)
        return np.where(ex > 0, np.minimum(m, -ex), m)

    def margins(self, images, sources=None) -> np.ndarray:
        """(N,) score - threshold (>= 0: a chest film); too-small and colour sources get -inf-like margins."""
        return np.array([self.verdict(im, None if sources is None else sources[i])["margin"]
                         for i, im in enumerate(images)], dtype=np.float64)

    def verdict(self, img: torch.Tensor, source=None) -> dict:
        """{"passed", "margin", "reason", "colourfulness"} for one (1, H, W) image in [0, 1];
        ``source``: its bytes, path or RGB array, for the colour check (None skips it)."""
        h, w = img.shape[-2:]
        if min(h, w) < MIN_SIDE:
            return {"passed": False, "margin": -100.0, "colourfulness": None,
                    "reason": f"too small to be a chest film ({w} x {h} px; at least {MIN_SIDE} px a side)"}
        colour = gf.colourfulness(source) if source is not None else None
        if colour is not None and colour > self.max_colourfulness:
            return {"passed": False, "margin": -50.0, "colourfulness": colour,
                    "reason": f"a colour image (colourfulness {colour:.1f} > {self.max_colourfulness:.0f}); "
                              "chest films are grey"}
        raw = self.raw([img])
        margin = float(self.margins_from_raw(raw)[0])
        out = {"passed": margin >= 0, "margin": margin, "colourfulness": colour, "reason": None}
        if margin < 0:
            odd = [f"{n} {v:.3g} (films: {a:.3g}-{b:.3g})" for n, v, a, b in zip(COLUMNS, raw[0], self.lo, self.hi)
                   if not a <= v <= b]
            out["reason"] = "its image statistics are unlike a chest film's" + (f": {'; '.join(odd[:3])}" if odd else "")
        return out


@functools.lru_cache(maxsize=2)
def load_model_free_gate(path: str | None = None) -> ModelFreeGate:
    """The shipped model-free gate (``prompts/gate_model_free.json``), read once."""
    p = Path(path) if path else PARAMS_PATH
    try:
        params = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read the model-free OOD gate parameters ({e}); restore the file from the "
                          "package or refit it with `python benchmarks/ood_gate.py --write-params`") from e
    return ModelFreeGate.from_params(params)


# ---------------------------------------------------------------- fitting (benchmarks/ood_gate.py)
def fit_prototypes(cxr_images, k: int = 32, seed: int = 0) -> np.ndarray:
    """(k, 576) unit-norm k-means centres of the validation CXRs' layout thumbnails."""
    from sklearn.cluster import KMeans

    t = np.stack([gf.layout_thumb(im) for im in cxr_images])
    c = KMeans(k, n_init=4, random_state=seed).fit(t).cluster_centers_
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def fit_params(cxr_raw: np.ndarray, other_raw: np.ndarray, prototypes: np.ndarray, threshold_quantile: float = 0.002,
               c: float = 0.03, max_colourfulness: float = 15.0, envelope_margin: float = 2.0,
               provenance: dict | None = None) -> dict:
    """Fit the statistics score on validation features: CXRs (positive) vs non-CXR families (negative),
    classes weighted equally, L2-regularised (``c``) so the quadratic terms stay smooth."""
    from sklearn.linear_model import LogisticRegression

    t = transform(cxr_raw)
    centre = np.median(t, 0)
    q75, q25 = np.quantile(t, [0.75, 0.25], axis=0)
    scale = np.maximum((q75 - q25) / 1.349, 1e-6)
    z = np.r_[(t - centre) / scale, (transform(other_raw) - centre) / scale]
    y = np.r_[np.ones(len(cxr_raw)), np.zeros(len(other_raw))]
    clf = LogisticRegression(C=c, max_iter=20000, class_weight="balanced").fit(quadratic(z), y)
    s = clf.decision_function(quadratic(z[: len(cxr_raw)]))
    r = lambda a: np.round(np.asarray(a, dtype=np.float64), 6).tolist()
    return {"columns": list(COLUMNS), "centre": r(centre), "scale": r(scale), "coef": r(clf.coef_[0]),
            "intercept": float(clf.intercept_[0]), "threshold": float(np.quantile(s, threshold_quantile)),
            "threshold_quantile": threshold_quantile, "prototypes": np.round(prototypes, 4).tolist(),
            "lo": r(np.quantile(cxr_raw, 0.005, axis=0)), "hi": r(np.quantile(cxr_raw, 0.995, axis=0)),
            "env_lo": r(z[: len(cxr_raw)].min(0) - envelope_margin), "env_hi": r(z[: len(cxr_raw)].max(0) + envelope_margin),
            "envelope_margin": envelope_margin,
            "max_colourfulness": max_colourfulness, "provenance": provenance or {}}
