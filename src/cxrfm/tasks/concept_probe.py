"""What SAE concepts are used for in evaluation: a concept-bottleneck probe and RaVL-like shortcut ranking.

- :func:`bottleneck_probe`: per finding, the ``k`` features whose activations separate the finding best
  on the training rows (univariate AUROC, either direction) feed a logistic regression; its AUROC on the
  evaluation rows is set against a dense logistic probe on the full embedding, same rows (SAIL reports
  87.8 % of the dense figure from 10 features). AUROC is within source first (the mean over sources that
  hold both classes), since the source is a shortcut on our data (Zech et al. 2018), pooled beside.
- :func:`rank_shortcuts`: RaVL (Varma et al., NeurIPS 2024) looks for the features a model's errors load
  on. Here every feature gets an *error loading* per finding (how well its activation separates the
  zero-shot errors from the correct calls among the labelled rows: AUROC - 0.5, clipped at 0) and, when
  nuisance attributes are known, an *attribute strength* (how well it predicts the best-predicted value of
  an attribute: 2 |AUROC - 0.5|). A feature's suspicion is the product (or the error loading alone when
  no attribute is given, as when the artefact is not annotated); suspects are ranked by it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..metrics import auroc

BOTTLENECK_K = 10


def fast_auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``s`` (N, C) for binary ``y`` (N,), ties counted half (rank formula)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return np.full(s.shape[1], np.nan)
    r = rankdata(s, axis=0)
    return (r[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def within_source_auroc(y: np.ndarray, s: np.ndarray, sources: np.ndarray, min_each: int = 5) -> tuple[float, int]:
    """(mean AUROC over sources with >= ``min_each`` of both classes, how many); (nan, 0) when none."""
    vals = [auroc(y[m], s[m]) for src in np.unique(sources) for m in [sources == src]
            if (y[m] == 1).sum() >= min_each and (y[m] == 0).sum() >= min_each]
    return (float(np.mean(vals)), len(vals)) if vals else (float("nan"), 0)


def _logistic(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, c: float = 1.0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
        clf.fit(x_tr, y_tr)
        return clf.predict_proba(x_te)[:, 1]


def bottleneck_probe(codes_tr: np.ndarray, emb_tr: np.ndarray, y_tr: np.ndarray, codes_te: np.ndarray,
                     emb_te: np.ndarray, y_te: np.ndarray, sources_te: np.ndarray, k: int = BOTTLENECK_K,
                     names: Sequence[str] | None = None) -> dict:
    """One finding: ``k`` features (chosen on the training rows) vs the dense embedding, same split.

    Labels are 1 / 0 (rows with unknown labels must be removed by the caller)."""
    sep = np.abs(np.nan_to_num(fast_auroc(y_tr == 1, codes_tr), nan=0.5) - 0.5)
    chosen = np.argsort(-sep, kind="stable")[:k]
    s_cb = _logistic(codes_tr[:, chosen], y_tr, codes_te[:, chosen])
    s_dense = _logistic(emb_tr, y_tr, emb_te)
    cb_within, n_src = within_source_auroc(y_te, s_cb, sources_te)
    dense_within, _ = within_source_auroc(y_te, s_dense, sources_te)
    within = n_src > 0
    out = {
        "auroc": cb_within if within else auroc(y_te == 1, s_cb),
        "dense_auroc": dense_within if within else auroc(y_te == 1, s_dense),
        "pooled_auroc": auroc(y_te == 1, s_cb), "pooled_dense_auroc": auroc(y_te == 1, s_dense),
        "within_source": bool(within), "n_sources": int(n_src),
        "features": [int(f) for f in chosen], "n_train": int(len(y_tr)), "n_eval": int(len(y_te)),
        "n_pos_eval": int((y_te == 1).sum()),
    }
    if names is not None:
        out["feature_names"] = [names[f] for f in chosen]
    out["ratio"] = out["auroc"] / out["dense_auroc"] if out["dense_auroc"] and out["dense_auroc"] > 0 else None
    return out


def error_loading(codes: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """(M,) how much each feature fires on ``errors`` (bool, N) more than on correct rows: AUROC - 0.5, >= 0."""
    a = fast_auroc(errors, codes)
    return np.clip(np.nan_to_num(a, nan=0.5) - 0.5, 0, None)


def attribute_strength(codes: np.ndarray, values: np.ndarray, min_rows: int = 10) -> tuple[np.ndarray, np.ndarray,
                                                                                            list[str]]:
    """Per feature: (best AUROC over one-vs-rest values (M,), its value index (M,), the values).

    ``values`` (N,) objects, None = unknown; values with fewer than ``min_rows`` rows (or all but that) skip."""
    known = np.array([v is not None for v in values])
    vals = sorted({v for v in values[known]})
    cand = [v for v in vals if min_rows <= int((values[known] == v).sum()) <= int(known.sum()) - min_rows]
    if not cand:
        return np.full(codes.shape[1], 0.5), np.zeros(codes.shape[1], dtype=int), []
    aucs = np.stack([fast_auroc(values[known] == v, codes[known]) for v in cand])  # (V, M)
    dev = np.abs(np.nan_to_num(aucs, nan=0.5) - 0.5)
    best = np.argmax(dev, axis=0)
    return aucs[best, np.arange(codes.shape[1])], best, [str(v) for v in cand]


def rank_shortcuts(codes: np.ndarray, errors: Mapping[str, np.ndarray], attributes: Mapping[str, np.ndarray] | None,
                   names: Sequence[str] | None = None, top: int = 10,
                   labels: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """Suspect features, most suspicious first: [{feature, attribute, value, auroc, finding, error_auroc,
    score, name}].

    ``codes`` (N, M) SAE codes of the audited rows; ``errors``: finding -> (N,) 1 = zero-shot error,
    0 = correct, NaN = unlabelled; ``attributes``: name -> (N,) values (None = unknown), or None to rank
    by error loading alone (``attribute`` is then None). With ``labels`` (finding -> (N,) 1 / 0 / NaN) the
    loading is measured within each class (false positives against true negatives, false negatives against
    true positives) and the larger kept: a shortcut towards the positive class causes false positives on
    the negatives that carry it and false negatives on the positives that lack it, which cancel when all
    errors are pooled; and it is multiplied by 1 - 2 |AUROC(feature, label) - 0.5|, since a feature
    that carries the finding itself separates errors too (the classifier reads it) but is no shortcut."""
    m = codes.shape[1]
    load = np.zeros(m)
    load_finding = np.full(m, "", dtype=object)
    for f, e in errors.items():
        known = np.isfinite(e)
        if (e[known] == 1).sum() < 2 or (e[known] == 0).sum() < 2:
            continue
        if labels is not None and f in labels:
            y = labels[f]
            lf = np.zeros(m)
            for cls in (0, 1):
                rows = known & (y == cls)
                if (e[rows] == 1).sum() >= 2 and (e[rows] == 0).sum() >= 2:
                    lf = np.maximum(lf, error_loading(codes[rows], e[rows] == 1))
            # a feature that carries the finding itself also separates errors (the classifier reads it);
            # a shortcut predicts the errors but not the label, so loading is discounted by label relevance
            lab = known & np.isfinite(y)
            relevance = 2 * np.abs(np.nan_to_num(fast_auroc(y[lab] == 1, codes[lab]), nan=0.5) - 0.5)
            lf = lf * (1 - relevance)
        else:
            lf = error_loading(codes[known], e[known] == 1)
        better = lf > load
        load[better], load_finding[better] = lf[better], f
    strength, attr_of, value_of, attr_auc = np.ones(m), np.full(m, None, dtype=object), np.full(m, None, dtype=object), \
        np.full(m, np.nan)
    if attributes:
        strength = np.zeros(m)
        for a, vals in attributes.items():
            auc, best, cand = attribute_strength(codes, np.asarray(vals, dtype=object))
            if not cand:
                continue
            s = 2 * np.abs(auc - 0.5)
            better = s > strength
            strength[better], attr_of[better], attr_auc[better] = s[better], a, auc[better]
            value_of[better] = np.array(cand, dtype=object)[best[better]]
    score = 2 * load * strength
    order = np.argsort(-score, kind="stable")[:top]
    return [{"feature": int(f), "attribute": attr_of[f], "value": value_of[f],
             "auroc": None if not np.isfinite(attr_auc[f]) else float(attr_auc[f]),
             "finding": load_finding[f] or None, "error_auroc": float(0.5 + load[f]), "score": float(score[f]),
             "name": names[f] if names is not None else f"feature {f}"} for f in order if score[f] > 0]
