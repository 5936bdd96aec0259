"""Count clinically significant errors of a candidate report against a reference, offline, no LLM.

Follows the idea of GREEN (Ostmeier et al., "GREEN: Generative Radiology Report Evaluation and Error
Notation", EMNLP Findings 2024): score a generated report by the clinically significant errors it
makes, not by n-gram overlap. GREEN asks an LLM; here the labeler (:mod:`cxrfm.data.labeler`) reads
each sentence of both reports to CheXpert findings with present / absent / uncertain, and rules read
the side, zone, severity, comparison and device words of the sentences that state each finding.

Error kinds (one count per finding and kind):

* ``false_finding``   a pathology the candidate states as present (or possible) that the reference
  does not;
* ``missed_finding``  a pathology the reference states as present (or possible) that the candidate
  omits or negates;
* ``wrong_location``  both state it, the sides (left / right / bilateral) or zones (upper / lower)
  disagree;
* ``wrong_severity``  both state it, with severity words of different grades (small vs large...);
* ``false_comparison`` the candidate compares with a prior study (unchanged, increased, new...) that
  the reference never mentions;
* ``device_error``    a support device stated by one report and not the other.

``matched`` counts the pathologies (and devices) both state as present with no location or severity
error, plus one for agreeing that the study is normal. ``score = matched / (matched + errors)``, 1.0
when there is nothing to match and no error.

A reference the labeler cannot read is not scored (its row has ``unscored``: the reason, and no counts):
an empty one, one with neither a findings nor an impression section, or one not in English (the
labeler reads English only; :func:`not_english`). A candidate is always scored: an empty or foreign
candidate states nothing, so it misses every finding of its reference.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ReportError
from .findings import CHEXPERT_14
from .reports import report_body, split_sentences

ERROR_KINDS = ("false_finding", "missed_finding", "wrong_location", "wrong_severity", "false_comparison",
               "device_error")
_PATHOLOGIES = tuple(f for f in CHEXPERT_14 if f not in ("No Finding", "Support Devices"))
_IDX = {f: i for i, f in enumerate(CHEXPERT_14)}

_SIDES = {"left": "left", "right": "right", "bilateral": "bilateral", "both": "bilateral", "bibasilar": "bilateral",
          "bibasal": "bilateral", "biapical": "bilateral"}
_ZONES = {"upper": "upper", "apex": "upper", "apical": "upper", "apices": "upper", "lower": "lower",
          "base": "lower", "bases": "lower", "basilar": "lower", "basal": "lower", "bibasilar": "lower",
          "bibasal": "lower", "biapical": "upper", "middle": "middle", "mid": "middle", "lingula": "middle",
          "lingular": "middle", "perihilar": "middle", "midlung": "middle", "midlungs": "middle"}
# severity grades: a word in a different grade than the reference's is a severity error
_SEVERITY = {"trace": 0, "tiny": 0, "minimal": 0, "small": 0, "mild": 0, "mildly": 0, "slight": 0, "slightly": 0,
             "minor": 0, "moderate": 1, "moderately": 1, "large": 2, "severe": 2, "severely": 2, "extensive": 2,
             "massive": 2, "marked": 2, "markedly": 2, "substantial": 2, "huge": 2}
_COMPARISON = re.compile(
    r"\b(unchanged|stable|again (?:seen|noted|demonstrated)|interval(?:ly)?|(?:compared|comparison) (?:to|with)|"
    r"since (?:the )?(?:prior|previous|last)|prior (?:study|exam|examination|radiograph|film)|previous (?:study|"
    r"exam|examination|radiograph|film)|increased|decreased|improved|improving|worsened|worsening|new)\b", re.I)
_NO_PRIOR = re.compile(r"\b(no (?:prior|previous|comparison)|none)\b", re.I)
_WORD = re.compile(r"[a-z]+")


@dataclass
class ReportFacts:
    """What one report states: per finding its value (1 / 0 / -1) and where / how severe it is.

    ``places[f]`` holds (side, zone) pairs (None where a clause names only one of them) and
    ``grades[f]`` maps a side (or None) to the highest severity grade stated for it, both read from
    the clauses that mention ``f`` (a clause names one finding's place far more often than a sentence).
    """

    values: dict[str, float] = field(default_factory=dict)
    places: dict[str, set[tuple[str | None, str | None]]] = field(default_factory=dict)
    grades: dict[str, dict[str | None, int]] = field(default_factory=dict)
    comparison: bool = False

    def present(self, finding: str) -> bool:
        return self.values.get(finding) in (1.0, -1.0)

    def sides(self, finding: str) -> set[str]:
        return {s for s, _ in self.places.get(finding, ()) if s}

    def zones(self, finding: str) -> set[str]:
        return {z for _, z in self.places.get(finding, ()) if z}


_CLAUSE = re.compile(r"[,;:()]|\b(?:and|with|which|as well as|while|whereas|but)\b", re.I)
_RANK = {1.0: 2, -1.0: 1, 0.0: 0}  # positive beats uncertain beats negative, as the labeler aggregates


@functools.lru_cache(maxsize=1)
def _mention_patterns() -> dict[str, re.Pattern]:
    from .labeler import MENTIONS

    phrases: dict[str, list[str]] = {}
    for key, words in MENTIONS.items():
        for f in key.split("|"):
            phrases.setdefault(f, []).extend(words)
    return {f: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True)) + r")\b", re.I)
            for f, ws in phrases.items()}


def _clauses_of(sentence: str, finding: str) -> list[str]:
    """The clauses of ``sentence`` that mention ``finding`` (the whole sentence if none matches)."""
    pattern = _mention_patterns().get(finding)
    parts = [c for c in _CLAUSE.split(sentence) if c and c.strip()]
    hits = [c for c in parts if pattern is not None and pattern.search(c)]
    return hits or [sentence]


def _read_place(clause: str) -> tuple[str | None, str | None, int | None]:
    words = _WORD.findall(clause.lower())
    sides = [_SIDES[w] for w in words if w in _SIDES]
    zones = [_ZONES[w] for w in words if w in _ZONES]
    grades = [_SEVERITY[w] for w in words if w in _SEVERITY]
    return (sides[0] if sides else None, zones[0] if zones else None, max(grades) if grades else None)


def _facts(sentences: Sequence[str], labels: np.ndarray) -> ReportFacts:
    facts = ReportFacts()
    for sentence, row in zip(sentences, labels):
        if _COMPARISON.search(sentence) and not _NO_PRIOR.search(sentence):
            facts.comparison = True
        for f, j in _IDX.items():
            v = row[j]
            if np.isnan(v):
                continue
            old = facts.values.get(f)
            if old is None or _RANK[float(v)] > _RANK[old]:
                facts.values[f] = float(v)
            if v not in (1.0, -1.0):
                continue
            for clause in _clauses_of(sentence, f):
                side, zone, grade = _read_place(clause)
                if side or zone:
                    facts.places.setdefault(f, set()).add((side, zone))
                if grade is not None:
                    g = facts.grades.setdefault(f, {})
                    g[side] = max(grade, g.get(side, grade))
    return facts


def report_facts(texts: Sequence[str | None]) -> list[ReportFacts]:
    """The facts of each report, labelling every sentence of every report in one batched pass."""
    from .labeler import label_reports

    sentences: list[list[str]] = []
    for t in texts:
        body = report_body(t) if t and str(t).strip() else ""
        sentences.append(split_sentences(body) if body.strip() else [])
    flat = [s for ss in sentences for s in ss]
    labels = label_reports(flat) if flat else np.zeros((0, len(CHEXPERT_14)), np.float32)
    out, k = [], 0
    for ss in sentences:
        out.append(_facts(ss, labels[k:k + len(ss)]))
        k += len(ss)
    return out


def _disagree(a: set, b: set) -> bool:
    """Both name something and share nothing (an unstated side is not an error)."""
    return bool(a) and bool(b) and not (a & b)


def _wrong_place(c: ReportFacts, r: ReportFacts, f: str) -> bool:
    """Sides or zones that contradict, or a side moved to the other lung within one zone."""
    if _disagree(c.sides(f), r.sides(f)) or _disagree(c.zones(f), r.zones(f)):
        return True
    full_c = {p for p in c.places.get(f, ()) if all(p)}
    full_r = {p for p in r.places.get(f, ()) if all(p)}
    for mine, other in ((full_c, full_r), (full_r, full_c)):
        for side, zone in mine:
            if any(z == zone for _, z in other) and (side, zone) not in other and (side != "bilateral"):
                if not any(s == "bilateral" and z == zone for s, z in other):
                    return True
    return False


def _wrong_grade(c: ReportFacts, r: ReportFacts, f: str) -> bool:
    """Severity grades that differ for the same side (or overall, when no side is named)."""
    gc, gr = c.grades.get(f, {}), r.grades.get(f, {})
    if not gc or not gr:
        return False
    shared = (set(gc) & set(gr)) - {None}
    if shared:
        return any(gc[s] != gr[s] for s in shared)
    return max(gc.values()) != max(gr.values())


def compare_facts(candidate: ReportFacts, reference: ReportFacts) -> dict[str, int]:
    """Error counts per kind, ``matched``, for one candidate against its reference."""
    counts = {k: 0 for k in ERROR_KINDS}
    matched = 0
    for f in _PATHOLOGIES:
        c, r = candidate.present(f), reference.present(f)
        if c and not r:
            counts["false_finding"] += 1
        elif r and not c:
            counts["missed_finding"] += 1
        elif c and r:
            loc, sev = _wrong_place(candidate, reference, f), _wrong_grade(candidate, reference, f)
            counts["wrong_location"] += int(loc)
            counts["wrong_severity"] += int(sev)
            matched += int(not (loc or sev))
    c_dev, r_dev = candidate.present("Support Devices"), reference.present("Support Devices")
    if c_dev != r_dev:
        counts["device_error"] += 1
    elif c_dev:
        matched += 1
    if candidate.comparison and not reference.comparison:
        counts["false_comparison"] += 1
    if not any(candidate.present(f) for f in _PATHOLOGIES) and not any(reference.present(f) for f in _PATHOLOGIES):
        matched += int(candidate.values.get("No Finding") == 1.0 or reference.values.get("No Finding") == 1.0)
    errors = sum(counts.values())
    counts["matched"] = matched
    counts["errors"] = errors
    return counts


# ---------------------------------------------------------------- references the labeler cannot read
_LETTERS = re.compile(r"[^\W\d_]", re.U)
_WORDS = re.compile(r"[^\W\d_]+", re.U)
_LANGUAGES = ("es", "de", "fr", "it", "pt", "nl")  # spaCy's stop-word lists of the commonest other languages


@functools.lru_cache(maxsize=1)
def _stop_words() -> tuple[frozenset, frozenset]:
    """(English stop words, stop words of the other languages that are not English words, >= 2 letters)."""
    import importlib

    en = set(importlib.import_module("spacy.lang.en.stop_words").STOP_WORDS)
    other: set[str] = set()
    for lang in _LANGUAGES:
        other |= set(importlib.import_module(f"spacy.lang.{lang}.stop_words").STOP_WORDS)
    return frozenset(en), frozenset(w for w in other - en if len(w) >= 2)


def not_english(text: str) -> str | None:
    """Why ``text`` is not English (a short reason), or None when it reads as English (or is too short to tell).

    Rules, checked on all 3,955 IU X-ray and 239 cxr-manifest reports with no report flagged: mostly
    non-Latin letters; or at least two stop words of Spanish / German / French / Italian / Portuguese /
    Dutch (not English words) and more than twice as many as English ones; or >= 10 % of the words
    with accented letters and hardly any English stop word; or a short text (<= 8 words) with a foreign
    stop word and no English one."""
    letters = _LETTERS.findall(text)
    if len(letters) >= 4 and sum(not ("a" <= c.lower() <= "z" or "\u00c0" <= c <= "\u024f") for c in letters) \
            > 0.3 * len(letters):
        return "not in the Latin script"
    words = [w.lower() for w in _WORDS.findall(text)]
    if len(words) < 2:
        return None
    en, other = _stop_words()
    n_en, n_other = sum(w in en for w in words), sum(w in other for w in words)
    accented = sum(any("\u00c0" <= c <= "\u024f" for c in w) for w in words)
    if (n_other >= 2 and n_other > 2 * n_en) or (accented >= 0.1 * len(words) and n_en <= n_other + 1) or \
            (n_other >= 1 and n_en == 0 and len(words) <= 8):
        return "not English"
    return None


def unreadable_reference(text: str | None) -> str | None:
    """Why a reference report cannot be scored (None when it can): empty, no findings or impression
    section, or not English. The labeler would read such a reference as stating nothing, and every
    finding of the candidate would count as false."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return "empty reference report"
    body = report_body(str(text))
    if not body.strip():
        return "the reference has no findings or impression section"
    why = not_english(body)
    return f"the reference is {why} (the labeler reads English reports only)" if why else None


def score_reports(candidates: Sequence[str | None], references: Sequence[str | None]) -> list[dict]:
    """Per pair: the error counts by kind, ``matched``, ``errors`` and ``score``; a pair whose reference
    cannot be read (:func:`unreadable_reference`) gets ``{"unscored": reason, "score": None}`` instead."""
    if len(candidates) != len(references):
        raise ValueError(f"score_reports: {len(candidates)} candidates for {len(references)} references")
    facts = report_facts(list(candidates) + list(references))
    n = len(candidates)
    out = []
    for cand, ref, text in zip(facts[:n], facts[n:], references):
        why = unreadable_reference(text)
        if why:
            out.append({**{k: None for k in ERROR_KINDS}, "matched": None, "errors": None, "score": None,
                        "unscored": why})
            continue
        c = compare_facts(cand, ref)
        total = c["matched"] + c["errors"]
        c["score"] = c["matched"] / total if total else 1.0
        out.append(c)
    return out


def summarize_scores(rows: Sequence[dict]) -> dict:
    """Mean score and total errors per kind over scored pairs (what ``eval --tasks report`` records);
    ``n_unscored`` and ``unscored`` (reason -> count) say how many references could not be read."""
    skipped = [r["unscored"] for r in rows if r.get("unscored")]
    rows = [r for r in rows if not r.get("unscored")]
    extra = {"n_unscored": len(skipped), "unscored": dict(Counter(skipped))} if skipped else {}
    if not rows:
        return {"n": 0, "mean_score": None, **{k: 0 for k in ERROR_KINDS}, **extra}
    return {"n": len(rows), "mean_score": float(np.mean([r["score"] for r in rows])),
            "mean_errors": float(np.mean([r["errors"] for r in rows])),
            **{k: int(sum(r[k] for r in rows)) for k in ERROR_KINDS}, **extra}


def _report_table(path: str | Path, what: str) -> pd.DataFrame:
    from .schema import read_table

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file; give the {what} table (CSV or Parquet with `id` and `report`)")
    df = read_table(path)
    missing = [c for c in ("id", "report") if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: no column {', '.join(repr(c) for c in missing)}; the {what} table needs "
                          "`id` and `report` columns")
    dup = df["id"].astype(str).duplicated()
    if dup.any():
        raise ReportError(f"{path}: id {df['id'].astype(str)[dup].iloc[0]!r} appears more than once; ids must be unique")
    return df.assign(id=df["id"].astype(str))


def _text(v: object) -> str | None:
    return v if isinstance(v, str) and v.strip() else None


def score_report_files(candidates: str | Path, references: str | Path, out: str | Path) -> str:
    """``cxrfm score-reports``: join on ``id``, score each pair, write one row per id; returns a summary.

    Ids present in only one table are not scored: they are counted in the summary (never silently lost).
    """
    from .schema import write_table

    cand = _report_table(candidates, "candidate")
    ref = _report_table(references, "reference")
    both = cand.merge(ref, on="id", suffixes=("_candidate", "_reference"))
    rows = score_reports([_text(v) for v in both["report_candidate"]], [_text(v) for v in both["report_reference"]])
    columns = ["id", *ERROR_KINDS, "matched", "errors", "score"] + (["unscored"] if any(r.get("unscored") for r in rows)
                                                                     else [])
    table = pd.DataFrame([{"id": i, **r} for i, r in zip(both["id"], rows)], columns=columns)
    write_table(table, out)
    s = summarize_scores(rows)
    only_c, only_r = len(set(cand["id"]) - set(ref["id"])), len(set(ref["id"]) - set(cand["id"]))
    lines = [f"wrote {out}: {s['n']} scored pairs; mean score "
             f"{s['mean_score']:.3f}" if s["mean_score"] is not None else f"wrote {out}: no scorable id in both tables",
             "errors by kind: " + ", ".join(f"{k} {s[k]}" for k in ERROR_KINDS)]
    if s.get("n_unscored"):
        lines.append(f"not scored (the reference cannot be read; rows kept with the reason in `unscored`): "
                     + ", ".join(f"{n} {why}" for why, n in s["unscored"].items()))
    if only_c or only_r:
        lines.append(f"not scored: {only_c} ids only in {candidates}, {only_r} only in {references}")
    return "\n".join(lines)
