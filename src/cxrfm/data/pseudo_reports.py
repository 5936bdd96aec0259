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

import zlib

import numpy as np

from ..errors import ManifestError, ReportError
from .report_templates import (BANK_VERSION, IMPRESSION_NAMES, NORMAL_PHRASES, PHRASES,  # noqa: F401 - re-exported
                               template_report)
from .schema import Manifest
from .sentence_bank import SentenceBank, real_sentence_report  # noqa: F401 - re-exported

STYLES: tuple[str, ...] = ("template", "sentences", "mixed")


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
