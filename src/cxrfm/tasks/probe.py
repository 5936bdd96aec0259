"""Label-efficient disease prediction: linear probes on frozen image embeddings at 1 %, 10 %, 100 % of labels.

The linear-probe protocol of CLIP (Radford et al. 2021, section 3.2: logistic regression on frozen
features) as used for chest X-rays by ConVIRT (Zhang et al. 2020) and GLoRIA (Huang et al., ICCV
2021), which report fine-tuning at 1 %, 10 % and 100 % of the training labels: a pretrained encoder
earns its keep when few labels reach the AUROC that a network trained from scratch needs all labels
for. The from-scratch baseline (:mod:`cxrfm.tasks.baseline`) is the same image tower architecture at
the encoder's input size, randomly initialised, with its schedule chosen on a validation part of the
training rows, trained on the same labelled subsets.

Subsets are per finding, stratified and nested (the 1 % rows are part of the 10 % rows): positives and
negatives are shuffled once with the task's generator and the first ``round(f * n)`` of each are kept.
A fraction that leaves fewer than :data:`MIN_TRAIN_POS` positives or negatives is skipped with its reason;
the headline means average the findings each fraction has and say how many (``n_findings``).

Scoring follows :mod:`cxrfm.tasks.zero_shot`: per finding AUROC with a patient-level bootstrap CI,
per-source AUROC and the AUROC of a source-only predictor. Sources are a shortcut in the bundled data
(pediatric pneumonia vs adult NIH images; Zech et al., PLoS Med 2018), so within-source AUROC comes first.

The probes fitted on all training labels are the served ones: with a run folder, they go into the
findings head (:mod:`cxrfm.inference.heads`) that ``serve`` answers with.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..data.findings import FINDINGS
from ..errors import SplitError
from .baseline import BaselineSettings, choose_schedule, predict_supervised, train_supervised
from .embed import embed_manifest
from .split import TaskSplit, carve_validation, context_images, load_pixels, resolve_split, train_images  # noqa: F401
from .zero_shot import zero_shot_auroc

if TYPE_CHECKING:
    from .suite import EvalContext

FRACTIONS: tuple[float, ...] = (0.01, 0.1, 1.0)
# A logistic regression on fewer positives (or negatives) than this is noise, not a measurement.
MIN_TRAIN_POS = 3


# ---------------------------------------------------------------- label subsets
def label_subsets(y: np.ndarray, fractions: Sequence[float], rng: np.random.Generator,
                  min_pos: int = MIN_TRAIN_POS) -> dict[float, np.ndarray | str]:
    """Per fraction, the nested stratified subset of rows of ``y`` (1 / 0 / NaN) to train on, or the
    reason it is skipped. Unknown (NaN) rows are never chosen."""
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    pos, neg = pos[rng.permutation(len(pos))], neg[rng.permutation(len(neg))]
    out: dict[float, np.ndarray | str] = {}
    for f in fractions:
        k_pos, k_neg = int(round(f * len(pos))), int(round(f * len(neg)))
        if k_pos < min_pos or k_neg < min_pos:
            out[f] = (f"{k_pos} positives and {k_neg} negatives at {f:g} of {len(pos)} / {len(neg)} training "
                      f"labels; needs >= {min_pos} of each")
        else:
            out[f] = np.sort(np.concatenate([pos[:k_pos], neg[:k_neg]]))
    return out


# ---------------------------------------------------------------- the probe
def fit_linear_probe(train_emb: np.ndarray, train_y: np.ndarray, C: float = 1.0, seed: int = 0
                     ) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardised ``train_emb`` (N, D) for labels ``train_y`` (0/1).

    Returns ``(w (D,), b)`` on the *raw* embedding: the standardisation is folded in, so
    ``sigmoid(emb @ w + b)`` is the fitted model's positive-class probability (what the findings head
    stores and ``serve`` computes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_y = np.asarray(train_y).astype(int)
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear_probe: training labels hold one class only")
    x = np.asarray(train_emb, dtype=np.float64)
    # (N, 128) problems: BLAS threads only add overhead, and on a busy laptop they spin (50x slower)
    with threadpool_limits(1):
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(scaler.transform(x), train_y)
    coef = clf.coef_[0] / scaler.scale_  # (D,)
    return coef, float(clf.intercept_[0] - coef @ scaler.mean_)


def probe_probabilities(emb: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """(M,) ``sigmoid(emb @ w + b)``."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(emb, dtype=np.float64) @ w + b)))


def linear_probe(train_emb: np.ndarray, train_y: np.ndarray, eval_emb: np.ndarray, C: float = 1.0,
                 seed: int = 0) -> np.ndarray:
    """Fit :func:`fit_linear_probe` and return the positive-class probability of each ``eval_emb`` row (M,)."""
    w, b = fit_linear_probe(train_emb, train_y, C=C, seed=seed)
    return probe_probabilities(eval_emb, w, b)


# ---------------------------------------------------------------- scoring
def _key(f: float) -> str:
    return str(float(f))


def _scored_by_fraction(scores: dict[float, np.ndarray], labels: np.ndarray, pids, srcs,
                        findings: list[str], available: dict[str, dict[float, bool]], context,
                        rng: np.random.Generator) -> dict[str, dict]:
    """zero_shot_auroc per fraction, over the findings scored at that fraction; merged per finding."""
    merged: dict[str, dict] = {}
    for f, s in scores.items():
        cols = [j for j, name in enumerate(findings) if available[name].get(f)]
        if not cols:
            continue
        res = zero_shot_auroc(s[:, cols], labels[:, cols], pids, srcs, [findings[j] for j in cols], rng=rng,
                              n_boot=context.n_boot, min_pos=context.min_pos, min_neg=context.min_neg)
        for name, r in res["findings"].items():
            m = merged.setdefault(name, {"auroc": {}, "ci": {}, "per_source": {}, "within_source_auroc": {}})
            k = _key(f)
            m["auroc"][k], m["ci"][k] = r["auroc"], r["ci"]
            m["per_source"][k], m["within_source_auroc"][k] = r["per_source"], r["within_source_auroc"]
            for extra in ("n_pos", "n_neg", "n_patients", "prevalence", "source_only_auroc", "source_counts"):
                m[extra] = r[extra]
    return merged


def mean_by_fraction(findings: dict[str, dict], fractions: Sequence[float], key: str
                     ) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per fraction, the mean of ``key`` over the findings that have a value at that fraction, and how
    many findings that is: a finding missing one fraction does not blank the others' means."""
    means: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for f in fractions:
        vals = [r[key][_key(f)] for r in findings.values() if r[key].get(_key(f)) is not None]
        means[_key(f)] = float(np.mean(vals)) if vals else None
        counts[_key(f)] = len(vals)
    return means, counts


def _headline(found: dict[str, dict], fractions: Sequence[float]) -> dict:
    mean, n = mean_by_fraction(found, fractions, "auroc")
    within, n_within = mean_by_fraction(found, fractions, "within_source_auroc")
    return {"mean_auroc": mean, "n_findings": n, "mean_within_source_auroc": within,
            "n_findings_within_source": n_within,
            "means_note": "per label fraction, the mean over the findings scored at that fraction (n_findings says "
                          "how many); fractions may average different findings"}


def probe_findings(
    train_emb: np.ndarray, train_labels: np.ndarray, eval_emb: np.ndarray, eval_labels: np.ndarray,
    eval_pids: Sequence, eval_sources: Sequence, findings: Sequence[str], rng: np.random.Generator,
    fractions: Sequence[float] = FRACTIONS, n_boot: int = 1000, min_pos: int = 10, min_neg: int = 10,
) -> tuple[dict, dict, dict, dict]:
    """The probe without the suite: per finding, fit on the label subsets, score the eval rows.

    ``*_labels`` are (N, F) 1/0/NaN in ``findings`` order. Returns ``(findings_result, skipped,
    subsets, probes)``: ``subsets[finding][fraction]`` are the training rows used (for the baseline),
    ``probes[finding] = (w, b)`` the probe fitted at the largest fraction (for the findings head).
    """
    ctx = SimpleNamespace(n_boot=n_boot, min_pos=min_pos, min_neg=min_neg)  # the scoring thresholds
    findings = list(findings)
    skipped: dict[str, str] = {}
    subsets: dict[str, dict[float, np.ndarray]] = {}
    probes: dict[str, tuple[np.ndarray, float]] = {}
    skipped_fractions: dict[str, dict[str, str]] = {}
    scores = {f: np.full(eval_labels.shape, np.nan) for f in fractions}
    available: dict[str, dict[float, bool]] = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(eval_labels[:, j])
        n_pos, n_neg = int((eval_labels[known, j] == 1).sum()), int((eval_labels[known, j] == 0).sum())
        available[name] = {}
        if n_pos < min_pos or n_neg < min_neg:
            skipped[name] = (f"{n_pos} positives and {n_neg} negatives in the eval split; needs >= {min_pos} "
                             f"and >= {min_neg}")
            continue
        picks = label_subsets(train_labels[:, j], fractions, rng)
        if all(isinstance(v, str) for v in picks.values()):
            skipped[name] = f"too few training labels: {picks[max(fractions)]}"
            continue
        subsets[name] = {}
        for f, rows in picks.items():
            if isinstance(rows, str):
                skipped_fractions.setdefault(name, {})[_key(f)] = rows
                continue
            subsets[name][f] = rows
            w, b = fit_linear_probe(train_emb[rows], train_labels[rows, j], seed=0)
            scores[f][:, j] = probe_probabilities(eval_emb, w, b)
            available[name][f] = True
            if f == max(fractions):
                probes[name] = (w, b)
    # the eval rows with a known label for a finding; scores elsewhere are unused (NaN-masked by labels)
    for f in fractions:
        scores[f] = np.where(np.isnan(scores[f]), 0.0, scores[f])
    merged = _scored_by_fraction(scores, eval_labels, eval_pids, eval_sources, findings, available, ctx, rng)
    for name in merged:
        merged[name]["n_train_labels"] = {_key(f): int(len(r)) for f, r in subsets[name].items()}
        merged[name]["n_train_pos"] = {_key(f): int((train_labels[r, findings.index(name)] == 1).sum())
                                       for f, r in subsets[name].items()}
        if name in skipped_fractions:
            merged[name]["skipped_fractions"] = skipped_fractions[name]
    return merged, skipped, subsets, probes


def baseline_findings(
    train_pixels: torch.Tensor, train_labels: np.ndarray, eval_pixels: torch.Tensor, eval_labels: np.ndarray,
    eval_pids: Sequence, eval_sources: Sequence, findings: Sequence[str], subsets: dict, rng: np.random.Generator,
    fractions: Sequence[float] = FRACTIONS, model_config=None, schedule: tuple[int, float] = (4, 2e-3),
    settings: BaselineSettings = BaselineSettings(), seed: int = 0, n_boot: int = 1000, min_pos: int = 10,
    min_neg: int = 10, progress: bool = False,
) -> dict:
    """The from-scratch baseline on the probe's label subsets: one multi-label network per fraction,
    trained with ``schedule`` (epochs, lr) on the labels each finding's subset reveals (the rest
    masked), scored like the probe."""
    ctx = SimpleNamespace(n_boot=n_boot, min_pos=min_pos, min_neg=min_neg)
    findings = list(findings)
    scores: dict[float, np.ndarray] = {}
    available = {name: {} for name in findings}
    trained: dict[str, int] = {}
    for f in fractions:
        y = revealed_labels(train_labels, findings, subsets, f)
        for name in findings:
            if subsets.get(name, {}).get(f) is not None:
                available[name][f] = True
        rows = np.flatnonzero(~np.isnan(y).all(axis=1))
        if len(rows) == 0:
            continue
        net = train_supervised(train_pixels[rows], y[rows], model_config, schedule[0], schedule[1], settings,
                               seed=seed, progress=progress)
        scores[f] = predict_supervised(net, eval_pixels)
        trained[_key(f)] = int(len(rows))
    merged = _scored_by_fraction(scores, eval_labels, eval_pids, eval_sources, findings, available, ctx, rng)
    return {"findings": merged, "n_train_images": trained}


def revealed_labels(train_labels: np.ndarray, findings: Sequence[str], subsets: dict, fraction: float) -> np.ndarray:
    """(N, F) labels with only each finding's subset rows at ``fraction`` known (NaN elsewhere)."""
    y = np.full(train_labels.shape, np.nan, dtype=np.float32)
    for j, name in enumerate(findings):
        rows = subsets.get(name, {}).get(fraction)
        if rows is not None:
            y[rows, j] = train_labels[rows, j]
    return y


# ---------------------------------------------------------------- the suite task
def _baseline(context: "EvalContext", split: TaskSplit, found: dict, subsets: dict, wanted: list[str],
              train_labels: np.ndarray, eval_labels: np.ndarray, pids, srcs, fractions: Sequence[float],
              settings: BaselineSettings, rng: np.random.Generator) -> dict:
    """The from-scratch baseline at the encoder's size, its schedule chosen on a validation part of the
    training rows (at the largest label fraction), then trained on each fraction's subsets."""
    names = list(found)
    j_of = [wanted.index(n) for n in names]
    encoder_size = int(context.model.image_size)
    size = int(settings.image_size) if settings.image_size else encoder_size
    keep = np.unique(np.concatenate([subsets[n][f] for n in names for f in subsets[n]]))
    remap = {n: {f: np.searchsorted(keep, r) for f, r in subsets[n].items()} for n in names}
    train_pixels = load_pixels(train_images(context, split), split.train_rows[keep], size)
    eval_pixels = load_pixels(context_images(context), split.eval_rows, size)
    y = train_labels[keep][:, j_of]
    cfg = getattr(context.model, "config", None)
    y_top = revealed_labels(y, names, remap, max(fractions))
    have = np.flatnonzero(~np.isnan(y_top).all(axis=1))
    try:
        fit, val = carve_validation(split.train, split.train_rows[keep][have], settings.val_fraction, context.seed)
        chosen = choose_schedule(train_pixels[have], y_top[have], fit, val, cfg, settings, seed=context.seed,
                                 progress=context.progress)
    except SplitError as e:
        epochs, lr = settings.schedules[0]
        chosen = {"epochs": int(epochs), "lr": float(lr), "candidates": [], "how": f"kept the first candidate: {e}"}
    base = baseline_findings(
        train_pixels, y, eval_pixels, eval_labels[:, j_of], pids, srcs, names, remap, rng, fractions,
        model_config=cfg, schedule=(chosen["epochs"], chosen["lr"]), settings=settings, seed=context.seed,
        n_boot=context.n_boot, min_pos=context.min_pos, min_neg=context.min_neg, progress=context.progress)
    base["description"] = (f"the image tower architecture trained from scratch on the same label subsets at {size} px "
                           f"(masked BCE, {chosen['epochs']} epochs / >= {settings.min_steps} steps, batch "
                           f"{settings.batch_size}, AdamW warm-up + cosine, peak lr {chosen['lr']:g}; schedule chosen on a "
                           f"validation part of the training rows)")
    base["image_size"] = size
    base["encoder_image_size"] = encoder_size
    base["schedule"] = chosen
    base.update(_headline(base["findings"], fractions))
    return base


def save_probe_head(context: "EvalContext", split: TaskSplit, probes: dict[str, tuple[np.ndarray, float]]
                    ) -> str | None:
    """Put the probes fitted on all training labels into the run's findings head, so that ``serve``
    answers those findings with them; returns the head file (None without a run folder or probes).

    Calibration a previous ``eval`` fitted on the same training data is kept; the report task refits it
    and keeps these probes when it runs after this one on the same training part."""
    if getattr(context, "run_dir", None) is None or not probes:
        return None
    from ..inference.heads import FindingsHead, load_findings_head

    findings = [f for f in FINDINGS if f in context.prompts]  # the head serve and the report task build
    if not any(f in findings for f in probes):
        return None
    head = FindingsHead.zero_shot(context.model, findings, context.prompts, context.logit_scale)
    data_hash = split.train.content_hash()
    saved, _ = load_findings_head(context.run_dir, context.model, findings, context.prompts, context.logit_scale)
    if saved.fitted_on.get("data_hash") == data_hash:
        head.calibration = dict(saved.calibration)
    for f, (w, b) in probes.items():
        if f in findings:
            head.set_probe(f, w, b)
    head.fitted_on = {"data_hash": data_hash, "n_rows": int(len(split.train_rows)), "split": split.describe()}
    return str(head.save(context.run_dir))


def run(context: "EvalContext", fractions: Sequence[float] = FRACTIONS,
        baseline: BaselineSettings | None = BaselineSettings()) -> dict:
    """The ``probe`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .registry import TaskSkipped

    rng = context.rng("probe")
    split = resolve_split(context)
    manifest = context.manifest
    wanted = list(context.findings) if context.findings is not None else list(FINDINGS)
    cols = [FINDINGS.index(f) for f in wanted]
    eval_labels = manifest.labels()[split.eval_rows][:, cols]  # (M, F)
    train_labels = split.train.labels()[split.train_rows][:, cols]  # (N, F)
    enough = [(int((eval_labels[:, j] == 1).sum()) >= context.min_pos and
               int((eval_labels[:, j] == 0).sum()) >= context.min_neg) for j in range(len(wanted))]
    if not any(enough):
        raise TaskSkipped(f"no finding has >= {context.min_pos} positives and >= {context.min_neg} negatives in the "
                          f"eval split ({split.how}; {len(split.eval_rows)} rows)")
    if not np.any((train_labels == 1).sum(axis=0) >= MIN_TRAIN_POS):
        raise TaskSkipped(f"no finding has >= {MIN_TRAIN_POS} positive training labels ({split.how})")

    eval_emb = context.image_embeddings(split.eval_rows)
    if split.train_external:
        train_emb = embed_manifest(context.model, split.train, cache_dir=context.cache_dir,
                                   batch_size=context.batch_size, progress=context.progress)
    else:
        train_emb = context.image_embeddings(split.train_rows)
    table = manifest.table
    pids = table["patient_id"].to_numpy()[split.eval_rows]
    srcs = table["source"].to_numpy()[split.eval_rows]
    found, skipped, subsets, probes = probe_findings(
        train_emb, train_labels, eval_emb, eval_labels, pids, srcs, wanted, rng, fractions,
        n_boot=context.n_boot, min_pos=context.min_pos, min_neg=context.min_neg)
    if not found:
        raise TaskSkipped("no finding could be probed: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    out: dict = {
        "split": split.describe(),
        "fractions": [float(f) for f in fractions],
        "classifier": "logistic regression (L2, C=1) on standardised L2-normalised image embeddings",
        "n": int(len(split.eval_rows)),
        "n_boot": context.n_boot,
        "findings": found,
        "skipped_findings": skipped,
        **_headline(found, fractions),
    }
    if baseline is not None:
        out["baseline"] = _baseline(context, split, found, subsets, wanted, train_labels, eval_labels, pids, srcs,
                                    fractions, baseline, rng)
    out["head_file"] = save_probe_head(context, split, {f: p for f, p in probes.items() if f in found})
    return out  # the label-efficiency figure is drawn by the report from these numbers (reporting.plots)


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="probe", run=run, title="Label-efficient prediction (linear probe)", needs=("labels",),
    result_keys=("findings", "fractions", "mean_auroc", "mean_within_source_auroc", "split"),
    console="cxrfm.reporting.sections.probe:console", html="cxrfm.reporting.sections.probe:html",
    default=False, order=30, summary="linear probes at 1/10/100 % of labels vs a from-scratch network"))
