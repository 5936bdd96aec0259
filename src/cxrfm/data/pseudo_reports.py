"""Pseudo-reports for label-only sources, so every image has a text to contrast against.

CheXficient (data- and compute-efficient CXR foundation model pretraining) and MedCLIP (Wang et al.,
EMNLP 2022) both turn labels into text for sources that ship labels but no report (ChestX-ray14,
the pediatric and COVID-19 sets). Two styles:

* ``template``: varied hand-written phrasings, several per finding and polarity, in shuffled order,
  sometimes with ``FINDINGS:`` / ``IMPRESSION:`` structure;
* ``sentences``: real sentences of the 3,955 IU X-ray reports (Demner-Fushman et al., JAMIA 2016),
  chosen by what :mod:`cxrfm.data.labeler` says they state, with templates for what IU never says
  (COVID-19, bacterial / viral pneumonia) and for findings without a usable sentence.

Both state exactly the row's known positives (1) and known negatives (0) and say nothing about
unknowns (NaN): a text that asserted "no effusion" where the source never looked would teach the
model a negative nobody observed. Two small exceptions, both implied rather than stated findings:
``No Finding = 0`` is stated only through the positives that make it 0, and a normal row's text may
summarise its negatives with "no acute cardiopulmonary abnormality".
"""
from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from ..errors import ManifestError, ReportError
from .findings import CHEXPERT_14, FINDING_INDEX, FINDINGS
from .schema import Manifest

STYLES: tuple[str, ...] = ("template", "sentences", "mixed")
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
def _row_rng(seed: int, row_id: str) -> np.random.Generator:
    """One stream per (seed, row id): a row's text does not change when others are added or reordered."""
    return np.random.default_rng([seed, zlib.crc32(row_id.encode("utf-8"))])


def training_texts(manifest: Manifest, style: str = "template", seed: int = 0, skip: bool = False,
                   bank: "SentenceBank | None" = None) -> list[str | None]:
    """One training text per row: the real report body where present, else a pseudo-report from labels.

    ``style`` is ``template``, ``sentences`` (real IU sentences; needs the shared IU reports) or
    ``mixed`` (each row picks one of the two). Rows with neither a report nor a known label raise
    :class:`ManifestError`, or give ``None`` with ``skip=True``.
    """
    if style not in STYLES:
        raise ReportError(f"pseudo-report style {style!r}: use one of {', '.join(STYLES)}")
    try:
        from .reports import report_body
    except ImportError:  # pragma: no cover - reports.py is part of the package
        def report_body(text):  # type: ignore[no-redef]
            return str(text).strip()

    reports = manifest.reports()
    labels = manifest.labels()
    ids = manifest.ids
    from .sentence_bank import SentenceBank, real_sentence_report

    if style in ("sentences", "mixed") and bank is None:
        bank = SentenceBank.build()
    out: list[str | None] = []
    missing: list[int] = []
    for i, (rep, row, rid) in enumerate(zip(reports, labels, ids)):
        text = report_body(rep) if isinstance(rep, str) and rep.strip() else ""
        if not text and isinstance(rep, str) and rep.strip():
            text = rep.strip()
        if text:
            out.append(text)
            continue
        if np.isnan(row).all():
            missing.append(i)
            out.append(None)
            continue
        rng = _row_rng(seed, rid)
        use_sentences = style == "sentences" or (style == "mixed" and rng.random() < 0.5)
        out.append(real_sentence_report(row, rng, bank) if use_sentences else template_report(row, rng))
    if missing and not skip:
        where = manifest.path or manifest.root
        raise ManifestError(
            f"{where}: {len(missing)} row(s) have neither a report nor any known label (first: row {missing[0] + 2}, "
            f"image {ids[missing[0]]!r}); add a report or labels, drop them, or pass skip=True to leave them out")
    return out


def __getattr__(name: str):
    """``SentenceBank`` and ``real_sentence_report`` live in :mod:`cxrfm.data.sentence_bank` (which
    imports this module's templates); they are still importable from here."""
    if name in ("SentenceBank", "real_sentence_report"):
        from . import sentence_bank

        return getattr(sentence_bank, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
