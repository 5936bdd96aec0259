"""A rule-based CheXpert-14 report labeler that needs no model download.

Follows the CheXpert labeler (Irvin et al., AAAI 2019; github.com/stanfordmlgroup/chexpert-labeler):
mention extraction with per-finding phrase lists, then negation and uncertainty classification per
mention, then aggregation per report (positive beats uncertain beats negative; "No Finding" is
positive only when no pathology other than Support Devices is positive or uncertain). The phrase
lists here are our own, modelled on CheXpert's public mention/unmention categories.

Pipeline (spaCy 3.8, no trained model): ``spacy.blank("en")`` tokenizer + sentencizer -> an
``entity_ruler`` with the mention phrases -> negspacy's NegEx (Chapman et al., J Biomed Inform 2001)
with a radiology negation termset -> a second NegEx instance whose "negations" are hedges, marking
uncertainty. medspaCy is not used: medspaCy 1.3.1 pins spaCy 3.7, whose thinc does not import with
numpy >= 2 (see docs/labeler.md).

Output values: 1 positive, 0 negated, -1 uncertain, NaN not mentioned.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Iterable, Sequence

import numpy as np

from .findings import CHEXPERT_14
from .reports import report_body
from .labeler_terms import (  # noqa: E402,F401  (re-exported: callers and benchmarks read them here)
    _CONJUNCTION_HEDGES, _DESCRIPTOR_NEGATORS, _DESCRIPTOR_WINDOW, _DEVICE_TIP_PATTERNS, _NORMAL_TOKEN_PATTERNS,
    _PATHOLOGIES, MENTIONS, NEGATION_TERMSET, NORMAL, OTHER, SIZE_DESCRIPTORS, SIZE_MENTIONS, UNCERTAIN_MENTIONS,
    UNCERTAINTY_TERMSET,
)

# ---------------------------------------------------------------- pipeline
def _blank_line_boundaries(doc):
    """A blank line ends a sentence even without a full stop (lists in MIMIC reports)."""
    for tok in doc[:-1]:
        if tok.is_space and tok.text.count("\n") >= 2:
            doc[tok.i + 1].is_sent_start = True
    return doc


@functools.lru_cache(maxsize=1)
def build_pipeline():
    """The spaCy pipeline (built once per process): blank English + rules, no downloaded model."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from spacy.language import Language

    if "cxrfm_blank_line_boundaries" not in Language.factories:
        Language.component("cxrfm_blank_line_boundaries", func=_blank_line_boundaries)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("cxrfm_blank_line_boundaries")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    patterns: list[dict] = []
    for label, phrases in MENTIONS.items():
        patterns += [{"label": label, "pattern": p, "id": "mention"} for p in phrases]
    for label, phrases in UNCERTAIN_MENTIONS.items():
        patterns += [{"label": label, "pattern": p, "id": "uncertain"} for p in phrases]
    for label, phrases in SIZE_MENTIONS.items():
        patterns += [{"label": label, "pattern": p, "id": "size"} for p in phrases]
    patterns += [{"label": "Support Devices", "pattern": p, "id": "mention"} for p in _DEVICE_TIP_PATTERNS]
    patterns += [{"label": NORMAL, "pattern": p, "id": "normal"} for p in _NORMAL_TOKEN_PATTERNS]
    ruler.add_patterns(patterns)
    ent_types = [lab for lab in list(MENTIONS) + list(UNCERTAIN_MENTIONS) + list(SIZE_MENTIONS)]
    nlp.add_pipe("negex", name="negation", config={
        "neg_termset": NEGATION_TERMSET, "ent_types": ent_types, "extension_name": "negex"})
    nlp.add_pipe("negex", name="uncertainty", config={
        "neg_termset": UNCERTAINTY_TERMSET, "ent_types": ent_types, "extension_name": "uncertain"})
    return nlp


@functools.lru_cache(maxsize=1)
def _descriptor_matcher():
    from spacy.matcher import PhraseMatcher

    nlp = build_pipeline()
    m = PhraseMatcher(nlp.vocab, attr="LOWER")
    for value, phrases in SIZE_DESCRIPTORS.items():
        m.add(str(value), list(nlp.tokenizer.pipe(phrases)))
    return m


def _size_value(ent, descriptors) -> float | None:
    """State of a size mention from the nearest descriptor in its sentence (None: no descriptor)."""
    doc = ent.doc
    sent = ent.sent
    best: tuple[int, float, int] | None = None
    for value, start, end in descriptors:
        if start < sent.start or end > sent.end or (start < ent.end and end > ent.start):
            continue
        gap = start - ent.end if start >= ent.end else ent.start - end
        if gap > _DESCRIPTOR_WINDOW:
            continue
        if best is None or gap < best[0]:
            best = (gap, value, start)
    if best is None:
        return None
    _, value, start = best
    if value == 1.0:
        lo = max(sent.start, min(start, ent.end) - 3) if start >= ent.end else max(sent.start, start - 3)
        if any(t.lower_ in _DESCRIPTOR_NEGATORS for t in doc[lo:start]):
            return 0.0  # "the heart is not significantly enlarged"
    return value


def _has_normal_descriptor(ent, doc, nlp) -> bool:
    descriptors = [(float(nlp.vocab.strings[m]), s, e) for m, s, e in _descriptor_matcher()(doc)]
    return _size_value(ent, [d for d in descriptors if d[0] == 0.0]) == 0.0


def _resolve_conflict(doc, ent, nlp) -> float:
    """A mention both negated and hedged.

    Hedges that open a new assertion ("possible", "likely") end a negation's scope (they are in the
    negation termset's terminations), so a preceding hedge that is still under a negation belongs
    to it: "no opacity to suggest pneumonia" -> 0. Only a following hedge nearer than every negation
    trigger wins ("... pneumonia, which cannot be excluded"); bare conjunctions ("no effusion or
    pneumothorax") never do.
    """
    neg_pre, neg_fol, _ = nlp.get_pipe("negation").process_negations(doc)
    _, unc_fol, _ = nlp.get_pipe("uncertainty").process_negations(doc)
    d_neg = min([ent.start - e for _, s, e in neg_pre if s >= ent.sent.start and e <= ent.start]
                + [s - ent.end for _, s, e in neg_fol if s >= ent.end and e <= ent.sent.end], default=math.inf)
    d_unc = min([s - ent.end for _, s, e in unc_fol if s >= ent.end and e <= ent.sent.end
                 and doc[s:e].text.lower() not in _CONJUNCTION_HEDGES], default=math.inf)
    return -1.0 if d_unc < d_neg else 0.0


def _doc_mentions(doc, nlp) -> tuple[dict[str, list[float]], list[float], bool]:
    """Per-finding mention values, OTHER-abnormality values, and whether a normal statement was made."""
    values: dict[str, list[float]] = {}
    other: list[float] = []
    normal = False
    descriptors = None
    for ent in doc.ents:
        label, kind = ent.label_, ent.ent_id_
        if label == NORMAL:
            normal = True
            continue
        neg, unc = bool(ent._.negex), bool(ent._.uncertain)
        if kind == "size":
            if descriptors is None:
                descriptors = [(float(nlp.vocab.strings[m]), s, e) for m, s, e in _descriptor_matcher()(doc)]
            d = _size_value(ent, descriptors)
            if d is None:
                continue
            value = 0.0 if (neg or d == 0.0) else (-1.0 if (d == -1.0 or unc) else 1.0)
        elif kind == "uncertain" and not neg and _has_normal_descriptor(ent, doc, nlp):
            value = 0.0  # "pulmonary vascular engorgement appears within limits of normal"
        elif neg and unc:
            value = _resolve_conflict(doc, ent, nlp)
        elif neg:
            value = 0.0
        elif unc or kind == "uncertain":
            value = -1.0
        else:
            value = 1.0
        if label == OTHER:
            other.append(value)
            continue
        for finding in label.split("|"):
            values.setdefault(finding, []).append(value)
    return values, other, normal


def _aggregate(values: Iterable[float]) -> float:
    """CheXpert's rule across mentions: positive beats uncertain beats negative."""
    vals = set(values)
    for v in (1.0, -1.0, 0.0):
        if v in vals:
            return v
    return math.nan


def _row(values: dict[str, list[float]], other: list[float]) -> np.ndarray:
    row = np.full(len(CHEXPERT_14), np.nan, dtype=np.float32)
    for i, f in enumerate(CHEXPERT_14):
        if f in values:
            row[i] = _aggregate(values[f])
    abnormal = any(row[CHEXPERT_14.index(f)] in (1.0, -1.0) for f in _PATHOLOGIES) or any(
        v in (1.0, -1.0) for v in other)
    row[0] = 0.0 if abnormal else 1.0
    return row


# ---------------------------------------------------------------- bounded work
# Reports longer than this are a per-row error by default (labels unknown, reason recorded): real
# radiology reports run to a few thousand characters (the longest of the 239 notes in shared/data is
# 2,225; MIMIC-CXR's are shorter), so 20,000 leaves room while a pasted document or a 1 MB cell
# does not hold up (or, past spaCy's 1,000,000-character limit, crash) the whole file.
DEFAULT_MAX_CHARS = 20_000
# NegEx, the descriptor search and the conflict resolution each scan the whole doc per mention, so
# one doc costs O(length^2). Texts are labeled in pieces of at most this many characters, cut at
# sentence ends: negation and size scopes never cross a sentence, so the labels are the same, and
# the work is linear in the length. Shorter texts are labeled whole, exactly as before.
CHUNK_CHARS = 2_000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
# NUL and other C0 controls (from binary exports) glue tokens together and hide sentence ends
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def split_for_labeling(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """``text`` as consecutive pieces of at most ``chunk_chars`` characters, cut after a sentence end
    where one exists (else at the last space, else hard): joined back they are ``text``."""
    if len(text) <= chunk_chars:
        return [text]
    pieces, start = [], 0
    ends = [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    k = 0
    while start < len(text):
        limit = start + chunk_chars
        if limit >= len(text):
            pieces.append(text[start:])
            break
        while k < len(ends) and ends[k] <= start:
            k += 1
        cut = None
        while k < len(ends) and ends[k] <= limit:  # the last sentence end within the limit
            cut = ends[k]
            k += 1
        if cut is None:
            space = text.rfind(" ", start + 1, limit)
            cut = space + 1 if space > start else limit
        pieces.append(text[start:cut])
        start = cut
    return pieces


# ---------------------------------------------------------------- public API
def label_reports_with_notes(texts: Sequence[str | None], progress: bool = False, batch_size: int = 256,
                             max_chars: int | None = DEFAULT_MAX_CHARS) -> tuple[np.ndarray, list[str | None]]:
    """Labels as :func:`label_reports`, and per row why it has none (None where it was labeled).

    Notes: ``empty report``, ``no findings/impression text``, or ``report has N characters, over
    max_chars=M`` (that row is left unknown instead of stopping the file; ``max_chars=None`` lifts
    the cap, the work stays linear in the length).
    """
    nlp = build_pipeline()
    out = np.full((len(texts), len(CHEXPERT_14)), np.nan, dtype=np.float32)
    notes: list[str | None] = [None] * len(texts)
    pieces: list[tuple[int, str]] = []
    for i, t in enumerate(texts):
        if t is None or (isinstance(t, float) and math.isnan(t)) or not str(t).strip():
            notes[i] = "empty report"
            continue
        t = str(t)
        if max_chars is not None and len(t) > max_chars:
            notes[i] = (f"report has {len(t):,} characters, over max_chars={max_chars:,}: labels left unknown; "
                        f"raise --max-chars to label it")
            continue
        body = report_body(_CONTROL.sub(" ", t))
        if not body.strip():
            notes[i] = "no findings/impression text"
            continue
        pieces.extend((i, p) for p in split_for_labeling(body))
    docs = nlp.pipe((p for _, p in pieces), batch_size=batch_size)
    if progress:
        from tqdm.auto import tqdm

        docs = tqdm(docs, total=len(pieces), desc="label reports", unit="piece")
    values: dict[int, tuple[dict[str, list[float]], list[float]]] = {}
    for (i, _), doc in zip(pieces, docs):
        v, other, _ = _doc_mentions(doc, nlp)
        acc_v, acc_other = values.setdefault(i, ({}, []))
        for f, vals in v.items():
            acc_v.setdefault(f, []).extend(vals)
        acc_other.extend(other)
    for i, (v, other) in values.items():
        out[i] = _row(v, other)
    return out, notes


def label_reports(texts: Sequence[str | None], progress: bool = False, batch_size: int = 256,
                  max_chars: int | None = DEFAULT_MAX_CHARS) -> np.ndarray:
    """Label reports: float32 (N, 14) in the order of ``CHEXPERT_14`` with 1 / 0 / -1 / NaN.

    Each text is reduced to its findings + impression (:func:`cxrfm.data.reports.report_body`; text
    without headers is read whole). None, NaN or blank text, a report with neither section, or one
    longer than ``max_chars`` gives an all-NaN row (:func:`label_reports_with_notes` says which).
    """
    return label_reports_with_notes(texts, progress=progress, batch_size=batch_size, max_chars=max_chars)[0]


def label_sentence_findings(sentence: str) -> dict[str, float]:
    """Findings one sentence states, as ``{finding: 1 | 0 | -1}`` (absent findings are left out).

    ``"No Finding"`` is 1 for an explicit normal statement ("No acute cardiopulmonary abnormality.")
    with nothing abnormal in it, 0 when the sentence states a pathology or another abnormality
    (positive or uncertain), and absent otherwise.
    """
    if sentence is None or not str(sentence).strip():
        return {}
    nlp = build_pipeline()
    values, other, normal = _doc_mentions(nlp(str(sentence)), nlp)
    out = {f: _aggregate(v) for f, v in values.items()}
    abnormal = any(out.get(f) in (1.0, -1.0) for f in _PATHOLOGIES) or any(v in (1.0, -1.0) for v in other)
    if abnormal:
        out["No Finding"] = 0.0
    elif normal:
        out["No Finding"] = 1.0
    return {f: out[f] for f in CHEXPERT_14 if f in out}
