"""Shortcut audit: what nuisance attributes the embedding encodes, and where zero-shot errors cluster.

Two checks in the spirit of RaVL (Varma et al., "RaVL: Discovering and Mitigating Spurious
Correlations in Fine-Tuned Vision-Language Models", NeurIPS 2024), which finds spurious features by
clustering a model's errors and checking what the clusters share, and of the shortcut literature for
chest X-rays: models detect the hospital (Zech et al., PLoS Med 2018) and the acquisition (DeGrave et
al., Nat. Mach. Intell. 2021) and predict through them.

1. Attribute probes: a cross-validated logistic regression (folds grouped by patient, stratified by
   class: scikit-learn's ``StratifiedGroupKFold``) predicts each nuisance attribute (source, view, sex,
   age band) from the frozen image embedding; out-of-fold AUROC (macro one-vs-rest for several classes)
   with a patient-level bootstrap CI. An attribute the embedding predicts well (AUROC >= 0.8) is one
   that pooled figures can ride on: a warning says so.
2. Error clusters: zero-shot scores are thresholded per finding at Youden's J; the false positives and
   false negatives are clustered by k-means over their embeddings, and each cluster lists the attribute
   values over-represented in it (share in the cluster vs the base rate).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.findings import FINDINGS
from ..metrics import auroc

if TYPE_CHECKING:
    from .suite import EvalContext

ATTRIBUTES: tuple[str, ...] = ("source", "view", "sex", "age_band")
# Pediatric vs adult matters most in the bundled data; 18 is the usual cut, decades above it.
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, np.inf, "80+"))
MIN_CLASS_ROWS = 10
N_SPLITS = 5
WARN_AUROC = 0.8
MAX_CLUSTERS = 5


def age_band(age: float | None) -> str | None:
    if age is None or not np.isfinite(age):
        return None
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    return None


def attribute_values(manifest) -> dict[str, np.ndarray]:
    """Per attribute, one value per row (object array; None where unknown or the column is absent)."""
    t = manifest.table
    out: dict[str, np.ndarray] = {}
    for name in ("source", "view", "sex"):
        col = t[name] if name in t.columns else [None] * len(t)
        out[name] = np.array([None if (v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "")
                              else str(v) for v in col], dtype=object)
    ages = pd.to_numeric(t["age"], errors="coerce").to_numpy(dtype=float) if "age" in t.columns \
        else np.full(len(t), np.nan)
    out["age_band"] = np.array([age_band(a) for a in ages], dtype=object)
    return out


def _macro_auroc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    if n_classes == 2:
        return auroc(y == 1, proba[:, 1])
    return float(np.mean([auroc(y == c, proba[:, c]) for c in range(n_classes)]))


def _bootstrap_macro_auroc(y: np.ndarray, proba: np.ndarray, n_classes: int, groups: np.ndarray,
                           rng: np.random.Generator, n_boot: int, alpha: float = 0.05) -> tuple[float, float] | None:
    inv, uniq = pd.factorize(pd.Series(groups))
    rows_of = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[g] for g in rng.integers(0, len(uniq), size=len(uniq))])
        yb = y[idx]
        if len(np.unique(yb)) < n_classes:
            continue
        values.append(_macro_auroc(yb, proba[idx], n_classes))
    if not values:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def attribute_probe(emb: np.ndarray, values: Sequence, groups: Sequence, rng: np.random.Generator,
                    n_splits: int = N_SPLITS, min_class_rows: int = MIN_CLASS_ROWS, n_boot: int = 1000) -> dict:
    """Out-of-fold AUROC of predicting ``values`` (one per row, None = unknown) from ``emb`` (N, D).

    Classes with fewer than ``min_class_rows`` rows or ``n_splits`` patients are dropped; folds are
    grouped by ``groups`` (patient ids). Returns ``{"skipped": reason}`` when fewer than two classes remain.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    values = np.asarray(values, dtype=object)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    known = np.array([v is not None for v in values])
    counts = pd.Series(values[known]).value_counts()
    patients = pd.DataFrame({"v": values[known], "g": groups[known]}).groupby("v")["g"].nunique()
    kept = sorted(c for c in counts.index if counts[c] >= min_class_rows and patients[c] >= n_splits)
    dropped = {str(c): int(counts[c]) for c in counts.index if c not in kept}
    if len(kept) < 2:
        return {"skipped": f"fewer than two classes with >= {min_class_rows} rows and >= {n_splits} patients "
                           f"(known values: {dict(counts.astype(int))})", "dropped_classes": dropped}
    rows = np.flatnonzero(known & np.isin(values, kept))
    y = np.searchsorted(np.array(kept, dtype=object), values[rows]).astype(int)
    x, g = np.asarray(emb, dtype=np.float64)[rows], groups[rows]
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(rng.integers(2**31)))
    proba = np.zeros((len(rows), len(kept)))
    for tr, te in cv.split(x, y, g):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        with threadpool_limits(1):  # small problems: BLAS threads only add overhead (and spin on a busy CPU)
            clf.fit(x[tr], y[tr])
            p = np.zeros((len(te), len(kept)))
            p[:, clf.classes_] = clf.predict_proba(x[te])  # a class absent from a training fold scores 0
        proba[te] = p
    per_class = {str(c): auroc(y == k, proba[:, k]) for k, c in enumerate(kept)}
    ci = _bootstrap_macro_auroc(y, proba, len(kept), g, rng, n_boot)
    n_kept = np.bincount(y, minlength=len(kept))
    return {
        "auroc": _macro_auroc(y, proba, len(kept)),
        "ci": list(ci) if ci else None,
        "per_class_auroc": per_class,
        "n": int(len(rows)),
        "n_patients": int(len(set(g))),
        "classes": {str(c): int(n) for c, n in zip(kept, n_kept)},
        "prevalence": {str(c): float(n / len(rows)) for c, n in zip(kept, n_kept)},
        "dropped_classes": dropped,
        "n_unknown": int((~known).sum()),
        "average": "binary" if len(kept) == 2 else "macro one-vs-rest",
    }


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (Youden's J), among observed scores."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    ok = np.isfinite(thr)  # roc_curve's first threshold is +inf (nothing called positive)
    return float(thr[ok][int(np.argmax((tpr - fpr)[ok]))])


def describe_rows(rows: np.ndarray, reference: np.ndarray, attributes: Mapping[str, np.ndarray],
                  top: int = 3) -> dict:
    """Per attribute, the values most over-represented in ``rows`` relative to ``reference`` rows:
    share among ``rows`` with a known value, base rate among ``reference`` rows, lift = share / base."""
    out = {}
    for name, vals in attributes.items():
        v, ref = pd.Series(vals[rows]).dropna(), pd.Series(vals[reference]).dropna()
        if not len(v) or not len(ref):
            continue
        base = ref.value_counts(normalize=True)
        entries = []
        for value, sh in v.value_counts(normalize=True).items():
            b = float(base.get(value, 0.0))
            entries.append({"value": str(value), "share": float(sh), "base_rate": b,
                            "lift": float(sh / b) if b > 0 else None})
        entries.sort(key=lambda e: (-(e["lift"] or 0.0) * e["share"], e["value"]))
        out[name] = {"known": int(len(v)), "top": entries[:top]}
    return out


def error_clusters(emb: np.ndarray, scores: np.ndarray, labels: np.ndarray, findings: Sequence[str],
                   attributes: Mapping[str, np.ndarray], rng: np.random.Generator, k: int | None = None,
                   min_errors: int = 10, top: int = 3) -> dict:
    """Per finding, cluster its zero-shot errors by embedding and describe each cluster (RaVL-style).

    ``scores`` and ``labels`` are (N, F) in ``findings`` order (labels 1 / 0 / NaN). A finding's errors
    are its false positives and false negatives at Youden's threshold among its known rows; they are
    split into ``k`` clusters (default: one per 20 errors, 2 to :data:`MAX_CLUSTERS`) by k-means over
    ``emb`` (N, D); each cluster lists the attribute values (``attributes``: name -> one value per row,
    None = unknown) over-represented in it against that finding's known rows.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = np.asarray(emb, dtype=np.float64)
    out: dict[str, dict] = {}
    for j, f in enumerate(findings):
        known = np.flatnonzero(~np.isnan(labels[:, j]))
        y, s = labels[known, j] == 1, scores[known, j]
        if y.all() or not y.any():
            out[f] = {"skipped": "one class only among the known labels"}
            continue
        t = youden_threshold(y, s)
        fp, fn = known[(s >= t) & ~y], known[(s < t) & y]
        err = np.sort(np.concatenate([fp, fn]))
        entry = {"threshold": t, "n_known": int(len(known)), "n_fp": int(len(fp)), "n_fn": int(len(fn))}
        if len(err) < min_errors:
            out[f] = {**entry, "skipped": f"{len(err)} errors; needs >= {min_errors} to cluster"}
            continue
        kk = int(k) if k is not None else int(min(MAX_CLUSTERS, max(2, len(err) // 20)))
        with threadpool_limits(1):
            assign = KMeans(n_clusters=kk, n_init=10, random_state=int(rng.integers(2**31))).fit_predict(x[err])
        is_fp = np.isin(err, fp)
        clusters = []
        for c in range(kk):
            m = assign == c
            rows = err[m]
            clusters.append({"n": int(m.sum()), "n_fp": int(is_fp[m].sum()), "n_fn": int((~is_fp[m]).sum()),
                             "attributes": describe_rows(rows, known, attributes, top),
                             "examples": [int(r) for r in rows[:5]]})
        clusters.sort(key=lambda c: -c["n"])
        out[f] = {**entry, "k": kk, "clusters": clusters}
    return {"threshold": "Youden's J per finding, errors = false positives + false negatives", "findings": out}


def shortcut_warnings(attrs: Mapping[str, dict], clusters: Mapping | None, warn_auroc: float = WARN_AUROC) -> list[str]:
    out = []
    for name, r in attrs.items():
        a = r.get("auroc")
        if a is not None and a >= warn_auroc:
            plural = {"sex": "sexes", "age_band": "age bands"}.get(name, f"{name}s")
            out.append(f"{name} is predictable from the embedding (AUROC {a:.2f}): classification figures pooled "
                       f"across {plural} reflect the {name}; read the within-{name} figures first")
    for f, r in (clusters or {}).get("findings", {}).items():
        hits: dict[tuple[str, str], list] = {}  # (attribute, value) -> [(cluster n, share, base rate)]
        for c in r.get("clusters", []):
            for name, a in c["attributes"].items():
                e = a["top"][0]
                if e["share"] >= 0.8 and e["lift"] is not None and e["lift"] >= 1.5 and a["known"] >= 10:
                    hits.setdefault((name, e["value"]), []).append((c["n"], e["share"], e["base_rate"]))
        for (name, value), cs in hits.items():
            n_err = sum(n for n, _, _ in cs)
            out.append(f"{f}: {len(cs)} of {len(r['clusters'])} zero-shot error clusters ({n_err} of "
                       f"{r['n_fp'] + r['n_fn']} errors) are >= {min(sh for _, sh, _ in cs):.0%} {name}={value}, "
                       f"against {cs[0][2]:.0%} of the labelled images")
    return out


def _zero_shot(context: "EvalContext", emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]] | str:
    from ..inference.zero_shot import build_zero_shot_classifier, zero_shot_scores

    labels_all = context.manifest.labels()
    wanted = list(context.findings) if context.findings is not None else list(FINDINGS)
    usable = [f for f in wanted if f in context.prompts
              and int((labels_all[:, FINDINGS.index(f)] == 1).sum()) >= context.min_pos
              and int((labels_all[:, FINDINGS.index(f)] == 0).sum()) >= context.min_neg]
    if not usable:
        return (f"no finding has prompts and >= {context.min_pos} positives and >= {context.min_neg} negatives; "
                f"no zero-shot errors to cluster")
    cls = build_zero_shot_classifier(context.model, usable, context.prompts)
    scores = zero_shot_scores(emb, cls, context.logit_scale)
    return scores, labels_all[:, [FINDINGS.index(f) for f in usable]], usable


def run(context: "EvalContext") -> dict:
    """The ``shortcut`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .suite import TaskSkipped

    manifest = context.manifest
    if len(manifest) < 2 * MIN_CLASS_ROWS:
        raise TaskSkipped(f"{len(manifest)} rows; the attribute probes need >= {2 * MIN_CLASS_ROWS}")
    rng = context.rng("shortcut")
    emb = context.image_embeddings()
    pids = manifest.table["patient_id"].astype(str).to_numpy()
    values = attribute_values(manifest)
    attrs = {name: attribute_probe(emb, values[name], pids, rng, n_boot=context.n_boot) for name in ATTRIBUTES}
    if all("skipped" in r for r in attrs.values()):
        raise TaskSkipped("no attribute has two classes with enough rows: "
                          + "; ".join(f"{k}: {v['skipped']}" for k, v in attrs.items()))
    zs = _zero_shot(context, emb)
    if isinstance(zs, str):
        clusters = {"skipped": zs}
    else:
        scores, labels, usable = zs
        clusters = error_clusters(emb, scores, labels, usable, values, rng)
        ids = manifest.ids
        for r in clusters["findings"].values():
            for c in r.get("clusters", []):
                c["examples"] = [ids[i] for i in c["examples"]]
    return {
        "n": int(len(manifest)),
        "n_patients": int(len(set(pids))),
        "cv": f"{N_SPLITS}-fold StratifiedGroupKFold by patient; logistic regression on standardised embeddings",
        "attributes": attrs,
        "error_clusters": clusters,
        "warnings": shortcut_warnings(attrs, clusters),
        "n_boot": context.n_boot,
    }


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="shortcut", run=run, title="Shortcut audit", needs=(),
    result_keys=("attributes", "error_clusters", "warnings"),
    console="cxrfm.reporting.sections.shortcut:console", html="cxrfm.reporting.sections.shortcut:html",
    default=False, order=70, summary="which attributes (source, sex, view...) the embedding predicts"))
