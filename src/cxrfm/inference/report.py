"""A draft structured report from per-finding probabilities.

Layout follows the common structured chest radiograph template (RSNA RadReport "Chest radiograph",
template 1 of radreport.org: Lungs / Pleura / Heart and mediastinum / Bones / Lines and tubes, then
Impression). Wording is calibrated by probability band in the spirit of the hedging scale that
radiologists use ("no", "possible", "likely"; Panicek & Hricak, "How sure are you, doctor?",
AJR 2016): a finding below the lower band is stated as absent, between the bands as possible, above
the upper band as likely. Only canonical findings (:data:`cxrfm.data.findings.FINDINGS`) are
reported; anything else in ``probs`` is ignored. The draft is for a clinician to edit, never final.
"""
from __future__ import annotations

import math
from typing import Mapping

from ..data.findings import FINDINGS

# Probability bands: below "possible" -> "No ...", [possible, likely) -> "Possible ...", >= likely -> "Likely ...".
DEFAULT_THRESHOLDS = {"possible": 0.35, "likely": 0.65}

# Section -> (finding, noun phrase used in a sentence). Pneumonia sub-types stay under Lungs.
SECTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "Lungs": (
        ("Lung Opacity", "airspace opacity"),
        ("Consolidation", "consolidation"),
        ("Atelectasis", "atelectasis"),
        ("Edema", "pulmonary edema"),
        ("Lung Lesion", "focal lung lesion (nodule or mass)"),
        ("Pneumonia", "pneumonia"),
        ("Bacterial pneumonia", "bacterial pneumonia pattern"),
        ("Viral pneumonia", "viral pneumonia pattern"),
        ("COVID-19", "COVID-19 pneumonia pattern"),
    ),
    "Pleura": (
        ("Pleural Effusion", "pleural effusion"),
        ("Pneumothorax", "pneumothorax"),
        ("Pleural Other", "other pleural abnormality (thickening or plaque)"),
    ),
    "Heart and mediastinum": (
        ("Cardiomegaly", "cardiomegaly"),
        ("Enlarged Cardiomediastinum", "enlarged cardiomediastinal silhouette"),
    ),
    "Bones": (("Fracture", "acute fracture"),),
    "Lines and tubes": (("Support Devices", "support devices (lines, tubes)"),),
}
_NORMAL_SENTENCE = {
    "Lungs": "The lungs are clear.",
    "Pleura": "No pleural effusion or pneumothorax.",
    "Heart and mediastinum": "Heart size and mediastinal contours are within normal limits.",
    "Bones": "No acute osseous abnormality.",
    "Lines and tubes": "No lines or tubes.",
}
_SENTENCE_OPENERS = {"likely": "Likely", "possible": "Possible", "no": "No"}


def grade(p: float, thresholds: Mapping[str, float] | None = None) -> str:
    """The wording band of a probability: ``"no"``, ``"possible"`` or ``"likely"``."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    if p >= t["likely"]:
        return "likely"
    if p >= t["possible"]:
        return "possible"
    return "no"


def _clean(probs: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for name, p in probs.items():
        if name in FINDINGS and p is not None and not math.isnan(float(p)):
            out[name] = min(1.0, max(0.0, float(p)))
    return out


def structured_report(probs: Mapping[str, float], thresholds: Mapping[str, float] | None = None) -> str:
    """Draft report text with one section per anatomical region and an Impression.

    ``probs``: canonical finding -> probability in [0, 1] (missing or NaN = not assessed; other keys
    are ignored). ``thresholds``: override ``{"possible": 0.35, "likely": 0.65}``.
    """
    p = _clean(probs)
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    lines: list[str] = []
    positives: list[tuple[float, str, str]] = []  # (prob, band, phrase)
    for section, items in SECTIONS.items():
        assessed = [(f, phrase, p[f]) for f, phrase in items if f in p]
        lines.append(f"{section.upper()}:")
        if not assessed:
            lines.append("  Not assessed.")
            continue
        flagged = [(f, phrase, q, grade(q, t)) for f, phrase, q in assessed if grade(q, t) != "no"]
        if not flagged:
            lines.append(f"  {_NORMAL_SENTENCE[section]}")
            continue
        for _f, phrase, q, band in sorted(flagged, key=lambda x: -x[2]):
            lines.append(f"  {_SENTENCE_OPENERS[band]} {phrase} (p = {q:.2f}).")
            positives.append((q, band, phrase))
        negatives = [phrase for f, phrase, q in assessed if grade(q, t) == "no"]
        if negatives:
            lines.append(f"  No {', '.join(negatives)}.")
    lines.append("IMPRESSION:")
    if positives:
        for i, (q, band, phrase) in enumerate(sorted(positives, key=lambda x: -x[0]), 1):
            lines.append(f"  {i}. {_SENTENCE_OPENERS[band]} {phrase}.")
    elif "No Finding" in p and grade(p["No Finding"], t) == "no":
        lines.append("  Abnormal study without a specific finding above threshold; review the image.")
    else:
        lines.append("  No acute cardiopulmonary abnormality.")
    lines.append("Draft generated automatically from image-level probabilities; to be reviewed by a radiologist.")
    return "\n".join(lines)
