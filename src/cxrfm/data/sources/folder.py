"""Class sub-folders: ``SRC/<CLASS>/**/<image>`` -> one row per image, labelled by its folder.

This is the ImageFolder layout most public CXR classification sets ship in, e.g. Kermany et al.
(Cell 2018, doi:10.17632/rscbjbr9sj.2) ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`` or
the COVID-19 Radiography Database ``{COVID,Normal,Lung_Opacity,Viral Pneumonia}/images/*.png``.

* A top-level folder named like a split (train, val, valid, validation, test) is descended into
  and recorded in ``source_split``; the class folders are the next level.
* The class folder name is matched to a canonical finding (:data:`cxrfm.data.findings.FINDINGS`),
  case-insensitively and ignoring ``_``/``-``; ``NORMAL`` -> ``No Finding``. A sub-type brings
  its parent (``Viral Pneumonia`` -> ``Pneumonia;Viral pneumonia``). A folder that matches no
  finding is an error naming it: guessing a label would poison evaluation.
* The set is exhaustive over its own classes only: the finding columns of the class findings are
  written (1 for the image's class; 0 for the other classes on a normal image; ``No Finding`` 0 on
  an abnormal one), every other finding stays unknown.
* Images may sit at any depth under the class folder. ``patient_id`` is the file stem unless
  ``patient_pattern`` (a regular expression searched in the path relative to SRC; its group
  ``patient``, else group 1, else the match) is given. ``source`` is SRC's folder name unless given.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from ..findings import CHILDREN, FINDINGS
from .registry import ORIGIN, copy_image, register_layout

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})

# Folder names seen in public sets that are not a finding's canonical spelling.
FOLDER_ALIASES: dict[str, str] = {
    "normal": "No Finding",
    "healthy": "No Finding",
    "covid": "COVID-19",
    "covid19": "COVID-19",
    "effusion": "Pleural Effusion",
    "bacteria": "Bacterial pneumonia",
    "virus": "Viral pneumonia",
}


def canonical_findings(folder_name: str) -> tuple[str, ...] | None:
    """Canonical findings asserted by a class folder name, or None when it names none."""
    key = re.sub(r"[\s_\-]+", " ", folder_name).strip().lower()
    canon = {re.sub(r"[\s_\-]+", " ", f).lower(): f for f in FINDINGS}
    name = canon.get(key) or FOLDER_ALIASES.get(key.replace(" ", "")) or FOLDER_ALIASES.get(key)
    if name is None:
        return None
    parents = tuple(p for p, kids in CHILDREN.items() if name in kids)
    return parents + (name,)


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """Kermany's tree: ``root/chest_xray/{train,test}/{NORMAL,PNEUMONIA}/personN_*.jpeg``."""
    for i, png in enumerate(images):
        split, cls = ("train", "test")[i % 2], ("NORMAL", "PNEUMONIA")[(i // 2) % 2]
        copy_image(png, root / "chest_xray" / split / cls / f"person{i}_virus_{i}.jpeg")
    return root / "chest_xray"


@register_layout("folder", example=write_example)
def read_rows(src: Path, source: str | None = None, patient_pattern: str | None = None) -> pd.DataFrame:
    """One row per image under SRC's class folders (paths relative to SRC)."""
    src = Path(src)
    if not src.is_dir():
        raise ManifestError(f"{src}: not a folder; --format folder reads SRC/<CLASS>/**/<image>")
    pattern = _compile(patient_pattern)
    source = source or Path(os.path.abspath(src)).name
    class_dirs: list[tuple[Path, str | None]] = []
    for d in _subdirs(src):
        if d.name.lower() in SPLIT_NAMES:
            class_dirs.extend((c, d.name) for c in _subdirs(d))
        else:
            class_dirs.append((d, None))
    unknown = sorted({str(d.relative_to(src)) for d, _ in class_dirs if canonical_findings(d.name) is None})
    if unknown:
        raise ManifestError(
            f"{src}: class folder(s) {', '.join(unknown)} name no known finding; rename each to one of "
            f"{', '.join(FINDINGS)} (or Normal), or move it out of SRC")
    rows, unmatched = [], []
    for d, split in class_dirs:
        labels = ";".join(canonical_findings(d.name))
        for path in sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(src).parts)):
            rel = path.relative_to(src).as_posix()
            patient = path.stem
            if pattern is not None:
                m = pattern.search(rel)
                if m is None:
                    unmatched.append(rel)
                    continue
                patient = m.group("patient") if "patient" in pattern.groupindex else m.group(1 if m.groups() else 0)
            rows.append({"image": rel, "patient_id": patient, "source": source, "labels": labels,
                         "finding_raw": d.name, "source_split": split, ORIGIN: rel})
    if unmatched:
        raise ManifestError(f"{src / unmatched[0]} (and {len(unmatched) - 1} more): --patient-pattern "
                            f"{patient_pattern!r} does not match the path {unmatched[0]!r}; fix the pattern")
    df = pd.DataFrame(rows)
    if not df.empty and df["source_split"].isna().all():
        df = df.drop(columns="source_split")
    if not df.empty:
        classes = {f for d, _ in class_dirs for f in canonical_findings(d.name)}
        for f in FINDINGS:
            if f in classes:
                df[f] = [_class_value(f, set(labels.split(";"))) for labels in df["labels"]]
    return df


def _class_value(finding: str, own: set[str]) -> float:
    """A class-folder set knows only its classes: an image is positive for its folder's findings, a
    normal image is a known negative for the other classes' findings, an abnormal one is not normal;
    anything else (a pneumonia image and another class's finding) stays unknown."""
    if finding in own:
        return 1.0
    return 0.0 if "No Finding" in own or finding == "No Finding" else float("nan")


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _compile(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ManifestError(f"--patient-pattern {pattern!r} is not a regular expression ({e}); "
                            f"e.g. '(person\\d+)' for Kermany file names") from e
