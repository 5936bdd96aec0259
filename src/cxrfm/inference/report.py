"""A draft structured report from per-finding probabilities, each sentence pointing to its evidence.

Layout follows the common structured chest radiograph template (RSNA RadReport "Chest radiograph",
template 1 of radreport.org: Lungs / Pleura / Heart and mediastinum / Bones / Lines and tubes, then
Impression), grouped by organ system as structured radiology report generation does (SRRG: lungs and
airways, pleura, cardiovascular / mediastinum, bones, devices, other) with every finding present,
absent or uncertain. The operating point is a pair of probability bands in the spirit of the hedging
scale radiologists use (Panicek & Hricak, "How sure are you, doctor?", AJR 2016): below ``possible``
a finding is absent ("No ..."), from ``possible`` uncertain ("Possible ..."), from ``likely`` present.
With an evidence trail (:mod:`.evidence`) a finding's status is the trail's: a finding drafted present
without evidence is stated as possible, with the reason in the trail.

Sentences are worded so that the project's labeler (:mod:`cxrfm.data.labeler`) reads the draft back
to the statuses it was drafted from (tested): present "Pleural effusion (p = 0.90).", uncertain
"Possible pleural effusion (p = 0.50).", absent "No pneumothorax or acute fracture.". The impression
ranks what matters: present before uncertain, then by clinical urgency (:data:`URGENCY`), then by
probability. Only canonical findings (:data:`cxrfm.data.findings.FINDINGS`) are reported; anything
else in ``probs`` is ignored. The draft is for a clinician to edit, never final.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..data.findings import FINDINGS

# Probability bands: below "possible" -> absent, [possible, likely) -> uncertain, >= likely -> present.
DEFAULT_THRESHOLDS = {"possible": 0.35, "likely": 0.65}

# organ system -> (title in the text, ((finding, noun phrase), ...)). Pneumonia sub-types stay under the lungs.
SYSTEMS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "lungs_airways": ("Lungs", (
        ("Lung Opacity", "airspace opacity"),
        ("Consolidation", "consolidation"),
        ("Atelectasis", "atelectasis"),
        ("Edema", "pulmonary edema"),
        ("Lung Lesion", "focal lung lesion"),
        ("Pneumonia", "pneumonia"),
        ("Bacterial pneumonia", "bacterial pneumonia pattern"),
        ("Viral pneumonia", "viral pneumonia pattern"),
        ("COVID-19", "COVID-19 pneumonia pattern"),
    )),
    "pleura": ("Pleura", (
        ("Pleural Effusion", "pleural effusion"),
        ("Pneumothorax", "pneumothorax"),
        ("Pleural Other", "pleural thickening"),
    )),
    "cardiovascular_mediastinum": ("Heart and mediastinum", (
        ("Cardiomegaly", "cardiomegaly"),
        ("Enlarged Cardiomediastinum", "enlarged cardiomediastinal silhouette"),
    )),
    "bones": ("Bones", (("Fracture", "acute fracture"),)),
    "devices": ("Lines and tubes", (("Support Devices", "support devices (lines, tubes)"),)),
    "other": ("Other", ()),  # findings of FINDINGS not placed above (none today); shown only when assessed
}
SECTIONS = {title: items for title, items in SYSTEMS.values() if items}  # the former name: title -> items
PHRASES: dict[str, str] = {f: phrase for _, items in SYSTEMS.values() for f, phrase in items}
SYSTEM_OF: dict[str, str] = {f: system for system, (_, items) in SYSTEMS.items() for f, _ in items}
# Clinical urgency used to rank the impression (higher first): findings that need action within
# minutes to hours, then findings that change management, then the rest.
URGENCY: dict[str, int] = {
    "Pneumothorax": 3, "Enlarged Cardiomediastinum": 3, "Edema": 3,
    "Consolidation": 2, "Pneumonia": 2, "COVID-19": 2, "Bacterial pneumonia": 2, "Viral pneumonia": 2,
    "Pleural Effusion": 2, "Lung Lesion": 2, "Fracture": 2,
    "Cardiomegaly": 1, "Atelectasis": 1, "Lung Opacity": 1, "Pleural Other": 1, "Support Devices": 0,
}
STATUSES = ("present", "uncertain", "absent")
_OPENER = {"present": "Likely", "uncertain": "Possible"}
DISCLAIMER = "Draft generated automatically from image-level probabilities; to be reviewed by a radiologist."


def grade(p: float, thresholds: Mapping[str, float] | None = None) -> str:
    """The wording band of a probability: ``"no"``, ``"possible"`` or ``"likely"``."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    if p >= t["likely"]:
        return "likely"
    if p >= t["possible"]:
        return "possible"
    return "no"


def status_of(p: float, thresholds: Mapping[str, float] | None = None) -> str:
    """present / uncertain / absent for a probability at the operating point ``thresholds``."""
    return {"likely": "present", "possible": "uncertain", "no": "absent"}[grade(p, thresholds)]


def _clean(probs: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for name, p in probs.items():
        if name in FINDINGS and p is not None and not math.isnan(float(p)):
            out[name] = min(1.0, max(0.0, float(p)))
    return out


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def draft_report(probs: Mapping[str, float], thresholds: Mapping[str, float] | None = None,
                 evidence: Sequence[Mapping] | Mapping[str, Mapping] | None = None) -> dict:
    """The structured draft: ``{"sections": [...], "impression": [...], "text": str, "statuses": {...}}``.

    ``probs``: canonical finding -> probability in [0, 1] (missing or NaN = not assessed; other keys
    are ignored). ``thresholds``: override ``{"possible": 0.35, "likely": 0.65}``. ``evidence``: the
    trail of :class:`cxrfm.inference.evidence.EvidenceBuilder` (entries or finding -> entry); each
    finding's status is then the trail's, and each sentence carries the ids of its findings' entries.
    A section is ``{system, title, sentences: [{id, text, status, findings, evidence}]}``.
    """
    p = _clean(probs)
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    ev = ({e["finding"]: e for e in evidence} if isinstance(evidence, Sequence) else dict(evidence or {}))
    status = {f: (ev[f]["status"] if f in ev and ev[f].get("status") in STATUSES else status_of(q, t))
              for f, q in p.items()}
    placed = {f for _, items in SYSTEMS.values() for f, _ in items}
    others = tuple((f, f.lower()) for f in p if f not in placed and f != "No Finding")
    counter = iter(range(1, 10_000))

    def sentence(text: str, st: str, findings: Sequence[str]) -> dict:
        return {"id": f"s{next(counter)}", "text": text, "status": st, "findings": list(findings),
                "evidence": [ev[f]["id"] for f in findings if f in ev and ev[f].get("id")]}

    sections = []
    for system, (title, items) in SYSTEMS.items():
        items = others if system == "other" else items
        assessed = [(f, phrase) for f, phrase in items if f in p]
        if system == "other" and not assessed:
            continue
        sents = []
        flagged = sorted((x for x in assessed if status[x[0]] != "absent"),
                         key=lambda x: (STATUSES.index(status[x[0]]), -p[x[0]]))
        for f, phrase in flagged:
            note = ""
            if ev.get(f, {}).get("downgraded"):
                note = f", above {t['likely']:.2f} but unsupported by the image evidence"
            text = (f"{_cap(phrase)} (p = {p[f]:.2f})." if status[f] == "present"
                    else f"Possible {phrase} (p = {p[f]:.2f}{note}).")
            sents.append(sentence(text, status[f], [f]))
        negatives = [(f, phrase) for f, phrase in assessed if status[f] == "absent"]
        if negatives:
            sents.append(sentence(f"No {_join([ph for _, ph in negatives])}.", "absent", [f for f, _ in negatives]))
        sections.append({"system": system, "title": title, "sentences": sents})
    ranked = sorted((f for f in p if status[f] != "absent" and f != "No Finding"),
                    key=lambda f: (STATUSES.index(status[f]), -URGENCY.get(f, 0), -p[f]))
    impression = [sentence(f"{i}. {_OPENER[status[f]]} {PHRASES.get(f, f.lower())}.", status[f], [f])
                  for i, f in enumerate(ranked, 1)]
    if not impression:
        absent = [f for f in p if f != "No Finding"]
        if "No Finding" in p and grade(p["No Finding"], t) == "no":
            impression = [sentence("Abnormal study without a specific finding above threshold; review the image.",
                                   "uncertain", ["No Finding"])]
        else:
            impression = [sentence("No acute cardiopulmonary abnormality.", "absent", absent)]
    return {"sections": sections, "impression": impression, "statuses": status, "thresholds": t,
            "text": render(sections, impression)}


def render(sections: Sequence[Mapping], impression: Sequence[Mapping]) -> str:
    """The draft as plain text: one ``TITLE:`` line per section, its sentences indented, the impression."""
    lines: list[str] = []
    for s in sections:
        lines.append(f"{s['title'].upper()}:")
        lines.extend(f"  {x['text']}" for x in s["sentences"]) if s["sentences"] else lines.append("  Not assessed.")
    lines.append("IMPRESSION:")
    lines.extend(f"  {x['text']}" for x in impression)
    lines.append(DISCLAIMER)
    return "\n".join(lines)


def structured_report(probs: Mapping[str, float], thresholds: Mapping[str, float] | None = None,
                      evidence: Sequence[Mapping] | Mapping[str, Mapping] | None = None) -> str:
    """The text of :func:`draft_report`: one section per organ system and an Impression."""
    return draft_report(probs, thresholds, evidence)["text"]
