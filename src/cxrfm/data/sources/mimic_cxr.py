"""MIMIC-CXR-JPG (Johnson et al., PhysioNet 2019/2024, doi:10.13026/jsn5-t979) + MIMIC-CXR reports.

Official layout (physionet.org/content/mimic-cxr-jpg/2.1.0/)::

    SRC/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ...  (required)
    SRC/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id + 14 CheXpert labels 1/0/-1/blank
    SRC/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
    SRC/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

Reports come from ``mimic-cxr-reports.zip`` of MIMIC-CXR (physionet.org/content/mimic-cxr/2.0.0/),
one text per study at ``files/p10/p10000032/s50414267.txt``; they are looked for in ``SRC/files``
and ``SRC/mimic-cxr-reports/files``. A study without a report keeps its rows with an empty
report; a report that is not UTF-8 skips its rows with the reason. Labels are study-level: every
image of a study gets the study's 14 columns, and ``labels`` lists the positives. Sex and age are
not part of MIMIC-CXR (they live in MIMIC-IV) and are left empty.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from ..findings import CHEXPERT_14
from .registry import ORIGIN, SKIP, copy_image, register_layout

SOURCE = "mimic-cxr"
LICENSE = "PhysioNet Credentialed Health Data License 1.5.0"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
LABELS = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
REPORT_DIRS = ("files", "mimic-cxr-reports/files")


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """Metadata + CheXpert label tables (.csv.gz), ``files/p10/p1000000N/s5000000N/<dicom_id>.jpg`` + report."""
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    labels = ["subject_id,study_id," + ",".join(CHEXPERT_14)]
    for i, png in enumerate(images):
        subject, study = f"1000000{i}", f"5000000{i}"
        copy_image(png, root / "files" / "p10" / f"p{subject}" / f"s{study}" / f"d{i}.jpg")
        (root / "files" / "p10" / f"p{subject}" / f"s{study}.txt").write_text(
            "FINDINGS: Small left pleural effusion.\nIMPRESSION: Effusion." if i % 2 else "", encoding="utf-8")
        meta.append(f"d{i},{subject},{study},{'PA' if i % 2 else 'LATERAL'}")
        labels.append(f"{subject},{study}," + ",".join("1.0" if (i + j) % 5 == 0 else "" for j in range(14)))
    for name, lines in ((METADATA, meta), (LABELS, labels)):
        with gzip.open(root / f"{name}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return root


@register_layout("mimic-cxr", example=write_example)
def read_rows(src: Path) -> pd.DataFrame:
    """One row per image listed in the metadata table (paths relative to SRC)."""
    src = Path(src)
    meta_path = _find(src, METADATA)
    if meta_path is None:
        raise ManifestError(
            f"{src}: no {METADATA}.gz; it ships at the root of MIMIC-CXR-JPG "
            f"(physionet.org/files/mimic-cxr-jpg/2.1.0/); put it in SRC beside files/")
    meta = _read(meta_path, ("dicom_id", "subject_id", "study_id"))
    rows = pd.DataFrame({
        "image": [f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg"
                  for d, s, st in zip(meta["dicom_id"], meta["subject_id"], meta["study_id"])],
        "patient_id": "mimic:" + meta["subject_id"],
        "source": SOURCE,
        "view": meta["ViewPosition"] if "ViewPosition" in meta.columns else None,
        "license": LICENSE,
        "source_image": meta["dicom_id"] + ".jpg",
        "subject_id": meta["subject_id"],
        "study_id": meta["study_id"],
        ORIGIN: [f"{meta_path.name} line {i + 2}" for i in range(len(meta))],
    })
    notes = []
    label_path = _find(src, LABELS)
    if label_path is not None:
        labels = _read(label_path, ("subject_id", "study_id") + CHEXPERT_14)[["subject_id", "study_id", *CHEXPERT_14]]
        rows = rows.merge(labels.drop_duplicates(["subject_id", "study_id"]), on=["subject_id", "study_id"], how="left")
        pos = {f: pd.to_numeric(rows[f], errors="coerce").eq(1).to_numpy() for f in CHEXPERT_14}
        rows["labels"] = [";".join(f for f in CHEXPERT_14 if pos[f][i]) or None for i in range(len(rows))]
    else:
        notes.append(f"no {LABELS}(.gz) in SRC: rows have no labels")
    split_path = _find(src, SPLIT)
    if split_path is not None:
        split = _read(split_path, ("dicom_id", "split"))
        rows["source_split"] = rows["source_image"].str[:-4].map(dict(zip(split["dicom_id"], split["split"])))
    reports, skips, n_found = [], [], 0
    cache: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    for s, st in zip(rows["subject_id"], rows["study_id"]):
        key = (s, st)
        if key not in cache:
            cache[key] = _read_report(src, s, st)
        text, skip = cache[key]
        n_found += text is not None
        reports.append(text or "")
        skips.append(skip)
    rows["report"], rows[SKIP] = reports, skips
    if n_found == 0 and not any(skips):
        notes.append("no MIMIC-CXR report .txt found under SRC/files or SRC/mimic-cxr-reports/files: "
                     "reports are empty (unzip mimic-cxr-reports.zip into SRC to add them)")
    rows = rows.drop(columns=["subject_id", "study_id"])
    rows.attrs["notes"] = notes
    rows.attrs["inputs"] = [p for p in (meta_path, label_path, split_path) if p is not None]
    return rows


def _read_report(src: Path, subject: str, study: str) -> tuple[str | None, str | None]:
    rel = f"p{subject[:2]}/p{subject}/s{study}.txt"
    for d in REPORT_DIRS:
        p = src / d / rel
        if p.is_file():
            try:
                return p.read_bytes().decode("utf-8").strip(), None
            except UnicodeDecodeError as e:
                return None, (f"{p}: report is not UTF-8 ({e.reason} at byte {e.start}); re-extract it from "
                              f"mimic-cxr-reports.zip or re-save it as UTF-8")
    return None, None


def _find(src: Path, name: str) -> Path | None:
    return next((src / n for n in (name + ".gz", name) if (src / n).is_file()), None)


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as e:
        raise ManifestError(f"{path}: cannot be read as a (gzipped) CSV ({e}); download it again from PhysioNet") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; expected the official "
                            f"MIMIC-CXR-JPG 2.0.0 header; download the file again from PhysioNet")
    return df
