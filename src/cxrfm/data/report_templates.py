"""The hand-written templates of the pseudo-reports: phrasings per finding and polarity, and the
``template`` style (:func:`template_report`). The ``sentences`` style (:mod:`.sentence_bank`) reuses
them for what IU never says; :func:`cxrfm.data.pseudo_reports.training_texts` chooses between them.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import ReportError
from .findings import CHEXPERT_14, FINDING_INDEX, FINDINGS

_WHOLE_STUDY_NORMAL = re.compile(r"\b(cardiopulmonary|chest|intrathoracic|thoracic|disease)\b", re.IGNORECASE)
_PART_NORMAL = re.compile(r"\b(osseous|bony|bones?|skelet\w*)\b", re.IGNORECASE)
# bump when the sentence-bank selection rules change (it keys the on-disk cache)
BANK_VERSION = 2
# words that make a positive sentence tentative or about a finding that is gone; a labeler may still
# read the sentence as positive, so the bank does not use it as a positive statement
_NOT_PLAINLY_POSITIVE = re.compile(
    r"\b(may|might|could|possibl\w*|probabl\w*|likely|suggest\w*|suspect\w*|question\w*|concern\w*|cannot|"
    r"versus|vs|differential|consider\w*|favou?r\w*|worrisome|represent\w*|borderline|resolv\w*|resolution|"
    r"removed|no longer|cleared|improv\w*|decreas\w*|previous\w*|prior|if|recommend\w*)\b", re.IGNORECASE)

# finding -> (positive phrasings, negative sentences, noun used in "No A, B or C." lists)
# Positive phrasings name the finding only: no side, lobe, size or device type, because the row's
# labels say none of that and a pseudo-report states exactly what the row knows. Phrasings avoid hedges ("may", "possible", "suggests") because a
# labeler reads those as uncertain, and never name a second finding.
PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "Enlarged Cardiomediastinum": (
        ("The mediastinum is widened.", "Widened mediastinum.", "Enlarged cardiomediastinal silhouette.",
         "Widening of the mediastinum."),
        ("The mediastinum is not widened.", "No mediastinal widening.", "Mediastinal contours are normal."),
        "mediastinal widening"),
    "Cardiomegaly": (
        ("Cardiomegaly.", "The heart is enlarged.", "There is cardiomegaly.",
         "Enlargement of the cardiac silhouette."),
        ("No cardiomegaly.", "Heart size is normal.", "The heart is not enlarged.", "Normal heart size."),
        "cardiomegaly"),
    "Lung Opacity": (
        ("Lung opacity.", "There is a pulmonary opacity.", "Increased lung opacity.",
         "There are opacities in the lungs."),
        ("No focal opacity.", "There is no focal airspace opacity.", "No pulmonary opacities."),
        "focal opacity"),
    "Lung Lesion": (
        ("A lung lesion.", "There is a pulmonary lesion.", "A focal lung lesion.",
         "There is a lung lesion."),
        ("No pulmonary nodule or mass.", "No suspicious pulmonary nodules.", "There is no lung mass."),
        "pulmonary nodule"),
    "Edema": (
        ("Pulmonary edema.", "There is pulmonary edema.", "Findings of pulmonary edema."),
        ("No pulmonary edema.", "There is no edema.", "No evidence of pulmonary edema."),
        "pulmonary edema"),
    "Consolidation": (
        ("Consolidation.", "There is consolidation.", "Findings of lung consolidation."),
        ("No focal consolidation.", "There is no consolidation.", "No evidence of consolidation."),
        "focal consolidation"),
    "Pneumonia": (
        ("Pneumonia.", "There is pneumonia.", "Findings of pneumonia.", "Findings consistent with pneumonia."),
        ("No pneumonia.", "There is no evidence of pneumonia.", "No radiographic signs of pneumonia."),
        "pneumonia"),
    "Atelectasis": (
        ("Atelectasis.", "There is atelectasis.", "Findings of atelectasis."),
        ("No atelectasis.", "There is no atelectasis.", "No evidence of atelectasis."),
        "atelectasis"),
    "Pneumothorax": (
        ("Pneumothorax.", "There is a pneumothorax.", "A pneumothorax is present."),
        ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
        "pneumothorax"),
    "Pleural Effusion": (
        ("Pleural effusion.", "There is a pleural effusion.", "A pleural effusion is present."),
        ("No pleural effusion.", "There is no pleural effusion.", "No effusion."),
        "pleural effusion"),
    "Pleural Other": (
        ("Pleural thickening.", "There is pleural thickening.", "Pleural thickening is present."),
        ("No pleural thickening.", "There is no pleural thickening."),
        "pleural thickening"),
    "Fracture": (
        ("Fracture.", "There is a fracture.", "A fracture is seen."),
        ("No fracture.", "No acute fracture.", "There is no fracture."),
        "fracture"),
    "Support Devices": (
        ("Support devices are present.", "Support lines and tubes are present.", "Medical devices are in place."),
        ("No lines or tubes.", "No support devices are seen."),
        "lines or tubes"),
}
NORMAL_PHRASES: tuple[str, ...] = (
    "No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.", "Normal chest radiograph.",
    "No acute cardiopulmonary disease.", "Normal chest x-ray.", "No active disease in the chest.")
# short names for the IMPRESSION line ("Cardiomegaly and pleural effusion."): no sides or locations,
# so the impression never contradicts the findings paragraph
IMPRESSION_NAMES: dict[str, str] = {
    "Enlarged Cardiomediastinum": "widened mediastinum", "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "pulmonary opacity", "Lung Lesion": "pulmonary nodule", "Edema": "pulmonary edema",
    "Consolidation": "consolidation", "Pneumonia": "pneumonia", "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax", "Pleural Effusion": "pleural effusion", "Pleural Other": "pleural thickening",
    "Fracture": "fracture", "Support Devices": "support devices in place", "COVID-19": "COVID-19 pneumonia",
    "Bacterial pneumonia": "bacterial pneumonia", "Viral pneumonia": "viral pneumonia",
}

_PNA_TYPES: dict[str, tuple[str, ...]] = {
    # subtype -> positive phrasings that also state Pneumonia; IU text never names these
    "COVID-19": ("COVID-19 pneumonia.", "Pneumonia due to COVID-19.", "Findings of COVID-19 pneumonia."),
    "Bacterial pneumonia": ("Bacterial pneumonia.", "There is a bacterial pneumonia.",
                            "Findings of bacterial pneumonia."),
    "Viral pneumonia": ("Viral pneumonia.", "There is a viral pneumonia.", "Findings of viral pneumonia."),
}
# negatives of the subtypes never use "pneumonia" or "infection" (a labeler reads those as Pneumonia,
# which may be positive or unknown on the same row)
_PNA_TYPE_NEG: dict[str, tuple[str, ...]] = {
    "COVID-19": ("No evidence of COVID-19.", "Not COVID-19.", "COVID-19 is not present."),
    "Bacterial pneumonia": ("Not bacterial in origin.", "Not of bacterial origin."),
    "Viral pneumonia": ("Not viral in origin.", "Not of viral origin."),
}


def _join_nouns(nouns: Sequence[str], rng: np.random.Generator) -> str:
    nouns = list(nouns)
    if len(nouns) == 1:
        body = nouns[0]
    else:
        last = " or " if len(nouns) == 2 else str(rng.choice([" or ", ", or "]))
        body = ", ".join(nouns[:-1]) + last + nouns[-1]
    lead = str(rng.choice(["No ", "There is no ", "No evidence of "]))
    return lead + body + "."


def _pneumonia_positive(row: np.ndarray, rng: np.random.Generator) -> str:
    """One sentence for a positive Pneumonia row, naming its known positive subtype(s) when there are."""
    types = [t for t in ("COVID-19", "Bacterial pneumonia", "Viral pneumonia") if row[FINDING_INDEX[t]] == 1]
    if "COVID-19" in types:  # COVID-19 is viral: one phrase states both
        return str(rng.choice(_PNA_TYPES["COVID-19"]))
    if types:
        return str(rng.choice(_PNA_TYPES[types[0]])) + "".join(
            " " + str(rng.choice(_PNA_TYPES[t])) for t in types[1:])
    return str(rng.choice(PHRASES["Pneumonia"][0]))


def _check_row(labels_row: np.ndarray) -> np.ndarray:
    row = np.asarray(labels_row, dtype=np.float32)
    if row.shape != (len(FINDINGS),):
        raise ReportError(f"a labels row has shape {row.shape}; expected ({len(FINDINGS)},) in FINDINGS order "
                          f"(Manifest.labels() gives it)")
    if np.isin(row, [-1]).any():
        raise ReportError("a labels row holds -1 (uncertain); map it first with apply_uncertain_policy")
    return row


def _positive_sentences(row: np.ndarray, rng: np.random.Generator, skip: set[str] = frozenset()) -> list[str]:
    out = []
    for f in CHEXPERT_14[1:]:
        if row[FINDING_INDEX[f]] != 1 or f in skip:
            continue
        out.append(_pneumonia_positive(row, rng) if f == "Pneumonia" else str(rng.choice(PHRASES[f][0])))
    # a subtype known positive while Pneumonia itself is not labelled (a user's canonical columns): the
    # subtype's phrase names pneumonia, which the subtype implies
    if row[FINDING_INDEX["Pneumonia"]] != 1 and "Pneumonia" not in skip:
        for t in _PNA_TYPES:
            if row[FINDING_INDEX[t]] == 1:
                out.append(str(rng.choice(_PNA_TYPES[t])))
    return out


def _negative_sentences(negatives: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Sentences for known negatives: a mix of "No A, B or C." lists and one-finding sentences."""
    negs = [f for f in negatives if f in PHRASES]
    types = [t for t in negatives if t in _PNA_TYPES]
    # if Pneumonia is negative, its subtypes are negative too and "no pneumonia" says it all
    if "Pneumonia" in negs:
        types = []
    negs = [negs[i] for i in rng.permutation(len(negs))]
    out: list[str] = []
    while negs:
        if len(negs) >= 2 and rng.random() < 0.6:
            k = int(rng.integers(2, min(5, len(negs)) + 1))
            out.append(_join_nouns([PHRASES[f][2] for f in negs[:k]], rng))
            negs = negs[k:]
        else:
            out.append(str(rng.choice(PHRASES[negs[0]][1])))
            negs = negs[1:]
    for t in types:
        out.append(str(rng.choice(_PNA_TYPE_NEG[t])))
    return out


def _impression_line(row: np.ndarray, rng: np.random.Generator) -> str | None:
    """"Cardiomegaly and pleural effusion." for some (at least one) of the row's positives."""
    pos = [f for f in FINDINGS[1:] if row[FINDING_INDEX[f]] == 1]
    if "COVID-19" in pos:
        pos = [f for f in pos if f not in ("Pneumonia", "Viral pneumonia")]
    if any(t in pos for t in ("Bacterial pneumonia", "Viral pneumonia")):
        pos = [f for f in pos if f != "Pneumonia"]
    if not pos:
        return None
    pos = [pos[i] for i in rng.permutation(len(pos))][: int(rng.integers(1, len(pos) + 1))]
    names = [IMPRESSION_NAMES[f] for f in pos]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."


def _assemble(positives: list[str], negatives: list[str], normal: bool, rng: np.random.Generator,
              impression_line: str | None = None) -> str:
    """Shuffle, then either a plain paragraph or FINDINGS / IMPRESSION sections."""
    positives = [positives[i] for i in rng.permutation(len(positives))]
    negatives = [negatives[i] for i in rng.permutation(len(negatives))]
    normal_line = str(rng.choice(NORMAL_PHRASES)) if normal else None
    structured = rng.random() < 0.5
    if not structured:
        body = positives + negatives
        if normal_line:
            body.insert(int(rng.integers(0, len(body) + 1)), normal_line)
        return " ".join(body) if body else (normal_line or "")
    findings = positives + negatives
    if positives:
        impression = [impression_line] if impression_line else positives[:1]
    elif normal_line:
        impression = [normal_line]
    else:
        impression = negatives[:1]
    if not findings:
        return "IMPRESSION: " + " ".join(impression)
    return "FINDINGS: " + " ".join(findings) + " IMPRESSION: " + " ".join(impression)


def template_report(labels_row: np.ndarray, rng: np.random.Generator) -> str:
    """A varied template report stating exactly the row's positives (1) and negatives (0).

    ``labels_row`` is ``(len(FINDINGS),)`` of 1 / 0 / NaN; NaN findings are never mentioned. Raises
    :class:`ReportError` for a row with nothing known (there is nothing true to say).
    """
    row = _check_row(labels_row)
    if np.isnan(row).all():
        raise ReportError("a labels row with no known finding has no pseudo-report; drop the row or label it")
    normal = bool(row[FINDING_INDEX["No Finding"]] == 1)
    positives = _positive_sentences(row, rng)  # on a normal row only Support Devices can be positive
    negatives = [f for f in FINDINGS[1:] if row[FINDING_INDEX[f]] == 0]
    if normal and rng.random() < 0.5:
        # a normal report names a few of the negatives and lets "no acute abnormality" cover the rest
        keep = int(rng.integers(0, min(4, len(negatives)) + 1))
        negatives = [negatives[i] for i in rng.permutation(len(negatives))[:keep]]
    return _assemble(positives, _negative_sentences(negatives, rng), normal, rng, _impression_line(row, rng))


# ---------------------------------------------------------------------------------------- manifest
