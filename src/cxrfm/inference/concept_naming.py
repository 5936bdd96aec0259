"""Name SAE features without an LLM: what is enriched among the images a feature fires on most.

LUCID-style naming from data: for each feature, its top-activating images are compared with all other
images on three kinds of evidence, each as a 2x2 table (in the top images or not, has the property or
not, among rows where the property is known):

- findings (labels 1 / 0; unknown labels are left out of that finding's table),
- report words (a word present in the report; rows without a report are left out),
- metadata (source, view, sex, age band).

The statistic is the odds ratio with a Haldane-Anscombe 0.5 correction and its 95 % Woolf CI, with the
one-sided hypergeometric (Fisher) p-value; an entry counts as enriched when the CI's lower bound is above
1 and p < 0.05 / number of candidates of that kind (Bonferroni). The text label (the nearest phrases of a
bank through the model's own text tower) is added by :mod:`cxrfm.inference.concepts`.

A manifest without labels names from metadata, report words and text only, and says so (``fallback``).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from ..data.findings import FINDINGS

Z95 = 1.959963984540054
TOP_ROWS = 25  # top-activating images a feature is described by
MIN_WORD_REPORTS = 5  # a report word must occur in this many reports to be a candidate
MAX_WORDS = 400
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, np.inf, "80+"))
STOPWORDS = frozenset(
    "the and with for was were this that there from have has had not are but which who into onto over under then "
    "than also been being they their them patient patients year years old male female history presented days "
    "admitted hospital showed shows shown after before during while when where what other some more most very "
    "left right both without within about".split())


def metadata_values(table) -> dict[str, np.ndarray]:
    """Per metadata attribute (source, view, sex, age_band), one value per row (None = unknown)."""
    import pandas as pd

    out: dict[str, np.ndarray] = {}
    for name in ("source", "view", "sex"):
        col = table[name] if name in table.columns else [None] * len(table)
        out[name] = np.array([None if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip()
                              else str(v) for v in col], dtype=object)
    ages = (pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=float) if "age" in table.columns
            else np.full(len(table), np.nan))
    out["age_band"] = np.array([next((n for lo, hi, n in AGE_BANDS if lo <= a < hi), None) if np.isfinite(a) else None
                                for a in ages], dtype=object)
    return out


def report_words(reports: Sequence[str | None], min_reports: int = MIN_WORD_REPORTS, max_words: int = MAX_WORDS
                 ) -> tuple[list[str], np.ndarray]:
    """(vocabulary, (N, V) float presence matrix; NaN rows where a row has no report)."""
    tokens = [set(re.findall(r"[a-z][a-z\-]{3,}", r.lower())) - STOPWORDS if isinstance(r, str) and r.strip() else None
              for r in reports]
    counts = Counter(w for t in tokens if t for w in t)
    vocab = sorted([w for w, c in counts.items() if c >= min_reports], key=lambda w: (-counts[w], w))[:max_words]
    mat = np.full((len(reports), len(vocab)), np.nan)
    col = {w: j for j, w in enumerate(vocab)}
    for i, t in enumerate(tokens):
        if t is not None:
            mat[i] = 0.0
            for w in t & col.keys():
                mat[i, col[w]] = 1.0
    return vocab, mat


def enrichment(in_top: np.ndarray, has: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised over candidates: ``in_top`` (N,) bool, ``has`` (N, C) 1 / 0 / NaN (unknown, left out).

    Returns arrays (C,): n_top (top rows with the property), n_top_known, odds_ratio, ci_low, ci_high, p."""
    from scipy.stats import hypergeom

    known = np.isfinite(has)
    pos = np.nan_to_num(has) > 0
    t = in_top[:, None]
    a = (pos & known & t).sum(0).astype(float)  # top, has
    b = (~pos & known & t).sum(0).astype(float)  # top, has not
    c = (pos & known & ~t).sum(0).astype(float)  # rest, has
    d = (~pos & known & ~t).sum(0).astype(float)  # rest, has not
    log_or = np.log((a + .5) * (d + .5) / ((b + .5) * (c + .5)))
    se = np.sqrt(1 / (a + .5) + 1 / (b + .5) + 1 / (c + .5) + 1 / (d + .5))
    n_known, n_pos, n_top = a + b + c + d, a + c, a + b
    p = hypergeom.sf(a - 1, n_known.astype(int), n_pos.astype(int), n_top.astype(int))
    return {"n_top": a, "n_top_known": n_top, "odds_ratio": np.exp(log_or), "ci_low": np.exp(log_or - Z95 * se),
            "ci_high": np.exp(log_or + Z95 * se), "p": np.where(n_top > 0, p, 1.0)}


def _significant(names: Sequence[str], stats: Mapping[str, np.ndarray], top: int) -> list[dict]:
    alpha = 0.05 / max(1, len(names))
    ok = np.flatnonzero((stats["ci_low"] > 1) & (stats["p"] < alpha) & (stats["n_top"] >= 2))
    ok = ok[np.argsort(-stats["ci_low"][ok], kind="stable")][:top]
    return [{"value": names[j], "n_top": int(stats["n_top"][j]), "n_top_known": int(stats["n_top_known"][j]),
             "odds_ratio": float(stats["odds_ratio"][j]), "ci": [float(stats["ci_low"][j]), float(stats["ci_high"][j])],
             "p": float(stats["p"][j])} for j in ok]


class NamingEvidence:
    """The candidate properties of a set of rows, built once and reused for every feature."""

    def __init__(self, table, labels: np.ndarray | None, reports: Sequence[str | None]):
        self.n = len(table)
        self.finding_names: list[str] = []
        cols = []
        if labels is not None:
            for j, f in enumerate(FINDINGS):
                y = labels[:, j]
                if np.nansum(y == 1) >= 2 and np.nansum(y == 0) >= 2:
                    self.finding_names.append(f)
                    cols.append(np.where(np.isfinite(y), (y == 1).astype(float), np.nan))
        self.findings = np.stack(cols, 1) if cols else np.zeros((self.n, 0))
        self.words, self.word_matrix = report_words(reports)
        meta = metadata_values(table)
        self.meta_names, mcols = [], []
        for attr, vals in meta.items():
            known = np.array([v is not None for v in vals])
            for v in sorted({v for v in vals if v is not None}):
                if known.sum() and len({x for x in vals if x is not None}) > 1:
                    self.meta_names.append(f"{attr}={v}")
                    mcols.append(np.where(known, (vals == v).astype(float), np.nan))
        self.meta = np.stack(mcols, 1) if mcols else np.zeros((self.n, 0))
        notes = []
        if not self.finding_names:
            notes.append("no finding has known labels: names come from metadata, report words and the text tower")
        if not self.words:
            notes.append("no report text: no report-word evidence")
        self.fallback = "; ".join(notes) or None

    def describe(self, in_top: np.ndarray, top: int = 3) -> dict:
        """Enriched findings, words and metadata of the rows ``in_top`` (N,) bool against the rest."""
        out = {}
        for kind, names, mat in (("findings", self.finding_names, self.findings), ("words", self.words, self.word_matrix),
                                 ("metadata", self.meta_names, self.meta)):
            out[kind] = _significant(names, enrichment(in_top, mat), top) if len(names) else []
        return out


def top_rows(codes: np.ndarray, feature: int, n: int = TOP_ROWS) -> np.ndarray:
    """Rows where ``feature`` fires, highest activation first (at most ``n``)."""
    a = codes[:, feature]
    rows = np.flatnonzero(a > 0)
    return rows[np.argsort(-a[rows], kind="stable")][:n]


def compose_name(evidence: Mapping, text: Sequence[Mapping]) -> str:
    """A short name: the most enriched finding, else the nearest phrase; the top metadata value beside."""
    parts = []
    if evidence.get("findings"):
        parts.append(evidence["findings"][0]["value"])
    elif text:
        parts.append(f'"{text[0]["phrase"]}"')
    elif evidence.get("words"):
        parts.append(f'word "{evidence["words"][0]["value"]}"')
    if evidence.get("metadata"):
        parts.append(evidence["metadata"][0]["value"])
    return " · ".join(parts) or "unnamed"


def name_features(codes: np.ndarray, evidence: NamingEvidence, ids: Sequence[str],
                  text: Sequence[Sequence[Mapping]] | None = None, n_top: int = TOP_ROWS) -> list[dict]:
    """One entry per feature: {feature, name, n_active, top_ids, findings, words, metadata, text}.

    ``codes`` (N, M) are the SAE codes of the naming rows (row-aligned with ``evidence`` and ``ids``);
    ``text`` holds each feature's nearest phrases (from :func:`cxrfm.inference.concepts.text_labels`)."""
    out = []
    active = (codes > 0).sum(axis=0)
    for f in range(codes.shape[1]):
        rows = top_rows(codes, f, n_top)
        in_top = np.zeros(len(codes), dtype=bool)
        in_top[rows] = True
        ev = evidence.describe(in_top) if len(rows) >= 2 else {"findings": [], "words": [], "metadata": []}
        phrases = list(text[f]) if text is not None else []
        out.append({"feature": f, "name": compose_name(ev, phrases), "n_active": int(active[f]),
                    "top_ids": [str(ids[r]) for r in rows], **ev, "text": phrases})
    return out
