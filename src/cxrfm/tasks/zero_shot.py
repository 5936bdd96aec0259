"""Zero-shot findings classification, evaluated: the prompt-ensemble head of
:mod:`cxrfm.inference.zero_shot` (CheXzero-style positive / negative prompts) scored per finding.

Scoring is honest about sources: pooled AUROC over a multi-source set rewards telling hospitals
apart (Zech et al., PLoS Med 2018; DeGrave et al., Nat. Mach. Intell. 2021 for COVID-19), so each
finding also gets its AUROC within each source, and the AUROC a source-only predictor reaches.
Labels are 1 / 0 / NaN; NaN (unknown) rows are left out per finding, never counted as negatives.

The bundled prompts are held out: none is (or contains) a sentence the pseudo-report generator
writes, so on label-only data the headline is not template matching. The generator's own sentences
are scored beside it under ``template_matched``, named so, to show how much that difference is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from ..data.findings import FINDINGS
from ..errors import ConfigError
from ..metrics import auroc, bootstrap_ci
from ..inference.zero_shot import (PROMPTS_FILE, TEMPLATE_PROMPTS_FILE, build_zero_shot_classifier,  # noqa: F401
                                   load_prompts, zero_shot_scores)
from ..reporting.sections.zeroshot import template_matched_line  # noqa: F401 - the console line
from .embed import DualEncoderLike

if TYPE_CHECKING:
    from .suite import EvalContext

MIN_POS = 10
MIN_NEG = 10


def _source_only_scores(y: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Each row scored by its source's positive rate among the same (known) rows: in-sample."""
    out = np.empty(len(y))
    for src in np.unique(sources):
        m = sources == src
        out[m] = y[m].mean()
    return out


def zero_shot_auroc(
    scores: np.ndarray, labels: np.ndarray, patient_ids: Sequence, sources: Sequence, findings: Sequence[str],
    rng: np.random.Generator, n_boot: int = 1000, min_pos: int = MIN_POS, min_neg: int = MIN_NEG,
    alpha: float = 0.05,
) -> dict:
    """Per-finding AUROC with a patient-level bootstrap CI, per-source and source-only AUROC.

    ``scores`` and ``labels`` are (N, F), columns in ``findings`` order; labels 1 / 0 / NaN (NaN rows
    are left out for that finding). A finding is scored when it has >= ``min_pos`` known positives
    and >= ``min_neg`` known negatives, a source when it has as many of both on its own.
    Returns ``{"findings": {f: {...}}, "skipped_findings": {f: reason}, "mean_auroc",
    "mean_within_source_auroc", "mean_source_only_auroc"}`` (means over scored findings; the
    within-source mean over findings that have one; None when there are none).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    pids = np.asarray([str(p) for p in patient_ids], dtype=object)
    srcs = np.asarray([str(s) for s in sources], dtype=object)
    if scores.shape != labels.shape or scores.shape != (len(pids), len(findings)) or len(srcs) != len(pids):
        raise ValueError(f"zero_shot_auroc: scores {scores.shape}, labels {labels.shape}, {len(pids)} patient ids, "
                         f"{len(srcs)} sources and {len(findings)} findings do not line up")
    per_finding: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for j, f in enumerate(findings):
        known = ~np.isnan(labels[:, j])
        y, s = labels[known, j], scores[known, j]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos < min_pos or n_neg < min_neg:
            skipped[f] = (f"{n_pos} known positives and {n_neg} known negatives; needs >= {min_pos} and >= {min_neg}")
            continue
        src_k, pid_k = srcs[known], pids[known]
        per_source: dict[str, float] = {}
        counts: dict[str, dict[str, int]] = {}
        for src in sorted(set(src_k)):
            m = src_k == src
            sp, sn = int((y[m] == 1).sum()), int((y[m] == 0).sum())
            counts[src] = {"n_pos": sp, "n_neg": sn}
            if sp >= min_pos and sn >= min_neg:
                per_source[src] = auroc(y[m], s[m])
        lo, hi = bootstrap_ci(y, s, pid_k, n_boot=n_boot, alpha=alpha, rng=rng)
        per_finding[f] = {
            "auroc": auroc(y, s),
            "ci": [lo, hi],
            "n_pos": n_pos,
            "n_neg": n_neg,
            "n_patients": int(len(set(pid_k))),
            "prevalence": n_pos / (n_pos + n_neg),
            "within_source_auroc": float(np.mean(list(per_source.values()))) if per_source else None,
            "per_source": per_source,
            "source_counts": counts,
            "source_only_auroc": auroc(y, _source_only_scores(y, src_k)),
        }

    def _mean(key: str) -> float | None:
        vals = [v[key] for v in per_finding.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "findings": per_finding,
        "skipped_findings": skipped,
        "mean_auroc": _mean("auroc"),
        "mean_within_source_auroc": _mean("within_source_auroc"),
        "mean_source_only_auroc": _mean("source_only_auroc"),
        "n_findings": len(per_finding),
        "ci_alpha": alpha,
        "source_only_note": "AUROC of a predictor that knows only the source: each row scored by its source's "
                            "positive rate among the known rows (in-sample, an upper bound for that shortcut)",
    }


def run(context: "EvalContext") -> dict:
    """The ``zeroshot`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .registry import TaskSkipped

    manifest = context.manifest
    prompts = context.prompts
    explicit = context.findings is not None
    wanted = list(context.findings) if explicit else list(FINDINGS)
    labels_all = manifest.labels()  # (N, len(FINDINGS))
    skipped: dict[str, str] = {}
    countable: list[str] = []
    for f in wanted:
        col = labels_all[:, FINDINGS.index(f)]
        n_pos, n_neg = int((col == 1).sum()), int((col == 0).sum())
        if n_pos < context.min_pos or n_neg < context.min_neg:
            skipped[f] = f"{n_pos} known positives and {n_neg} known negatives; needs >= {context.min_pos} and >= {context.min_neg}"
        else:
            countable.append(f)
    no_prompt = [f for f in countable if f not in prompts]
    if explicit and no_prompt:
        raise ConfigError(
            f"no prompts for {', '.join(no_prompt)} in {context.prompts_source}; add "
            f"{{\"{no_prompt[0]}\": {{\"positive\": [...], \"negative\": [...]}}}} to it or drop it from --findings")
    if countable and len(no_prompt) == len(countable):
        raise ConfigError(
            f"none of the findings this manifest can score ({', '.join(countable)}) has prompts in "
            f"{context.prompts_source}; add positive/negative sentences for them (format: {PROMPTS_FILE})")
    for f in no_prompt:
        skipped[f] = f"no prompts for it in {context.prompts_source}"
    scored = [f for f in countable if f in prompts]
    if not scored:
        raise TaskSkipped(
            f"no finding has >= {context.min_pos} known positives and >= {context.min_neg} known negatives "
            f"in this manifest (labels: 1 / 0 per finding; NaN = unknown is left out)")
    cols = [FINDINGS.index(f) for f in scored]
    labels = labels_all[:, cols]  # (N, F)
    rows = np.flatnonzero(~np.isnan(labels).all(axis=1))  # rows with any known label
    image_emb = context.image_embeddings(rows)  # (R, D)
    classifier = build_zero_shot_classifier(context.model, scored, prompts)
    scores = zero_shot_scores(image_emb, classifier, context.logit_scale)  # (R, F)
    table = manifest.table
    out = zero_shot_auroc(
        scores, labels[rows], table["patient_id"].to_numpy()[rows], table["source"].to_numpy()[rows], scored,
        rng=context.rng("zeroshot"), n_boot=context.n_boot, min_pos=context.min_pos, min_neg=context.min_neg)
    out["skipped_findings"] = {**skipped, **out["skipped_findings"]}
    out["prompts"] = context.prompts_source
    out["prompt_set"] = (HELD_OUT_LABEL if str(context.prompts_source).startswith("builtin")
                         else "given prompts (not checked against the pseudo-report generator's sentences)")
    out["logit_scale"] = context.logit_scale
    out["n_rows"] = int(len(rows))
    out["n_boot"] = context.n_boot
    out["template_matched"] = template_matched(context, scored, labels[rows], image_emb,
                                               table["patient_id"].to_numpy()[rows], table["source"].to_numpy()[rows])
    return out


HELD_OUT_LABEL = "held-out: radiology phrasings disjoint from every sentence the pseudo-report generator writes"
TEMPLATE_MATCHED_LABEL = ("template-matched: the pseudo-report generator's own sentences, what label-only rows were "
                          "trained against; closer to supervised template matching than to zero-shot")


def template_matched(context: "EvalContext", findings: Sequence[str], labels: np.ndarray, image_emb: np.ndarray,
                     patient_ids: Sequence, sources: Sequence) -> dict:
    """The same scoring with the template-matched prompts (:data:`TEMPLATE_PROMPTS_FILE`), for comparison.

    Uses its own generator, so adding it leaves the held-out figures' bootstrap draws unchanged."""
    prompts = load_prompts(TEMPLATE_PROMPTS_FILE)
    cols = [j for j, f in enumerate(findings) if f in prompts]
    if not cols:
        return {"skipped": f"no scored finding has prompts in {TEMPLATE_PROMPTS_FILE.name}"}
    names = [findings[j] for j in cols]
    scores = zero_shot_scores(image_emb, build_zero_shot_classifier(context.model, names, prompts),
                              context.logit_scale)  # (R, F')
    res = zero_shot_auroc(scores, labels[:, cols], patient_ids, sources, names,
                          rng=context.rng("zeroshot/template_matched"), n_boot=context.n_boot,
                          min_pos=context.min_pos, min_neg=context.min_neg)
    return {"label": TEMPLATE_MATCHED_LABEL, "prompts": TEMPLATE_PROMPTS_FILE.name, **res}


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="zeroshot", run=run, title="Zero-shot findings classification", needs=("labels",),
    result_keys=("findings", "mean_auroc", "mean_within_source_auroc", "mean_source_only_auroc", "skipped_findings"),
    console="cxrfm.reporting.sections.zeroshot:console", html="cxrfm.reporting.sections.zeroshot:html",
    default=True, order=10, summary="prompt-ensemble AUROC per finding, within each source and pooled"))
