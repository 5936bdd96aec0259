"""NIH ChestX-ray14 (Wang et al., CVPR 2017; https://nihcc.app.box.com/v/ChestXray-NIHCC).

Official layout::

    SRC/Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv, optionally .gz)
    SRC/images_001/images/00000001_000.png ... SRC/images_012/images/...   (or SRC/images/*.png)
    SRC/train_val_list.txt, SRC/test_list.txt                               (optional)

``Data_Entry_2017`` columns used: Image Index, Finding Labels (``|``-separated, ``No Finding``),
Patient ID, Patient Age (``58`` in v2020, ``058Y`` in the 2017 file), Patient Gender, View Position.
``labels`` keeps the NIH names ``;``-joined; :mod:`cxrfm.data.findings` maps them for source
``nih-chestxray14``. Patient ids are prefixed ``nih:`` as in ``shared/data/cxr/manifest.csv``.
Images are found by file name anywhere under SRC; a row whose file is absent points at
``images/<name>`` and is skipped by ingest with that path in ``skipped_rows.csv``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from ..schema import read_table
from .registry import ORIGIN, copy_image, register_layout

SOURCE = "nih-chestxray14"
LICENSE = "public, unrestricted use, attribution required"
TABLE_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv",
               "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv.gz")
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """``root/Data_Entry_2017.csv`` (the 2017 age format) + ``root/images_001/images/*.png``."""
    labels = ["No Finding", "Cardiomegaly|Effusion", "Infiltration|Nodule", "Hernia"]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for i, png in enumerate(images):
        name = f"{i + 1:08d}_000.png"
        copy_image(png, root / "images_001" / "images" / name)
        lines.append(f"{name},{labels[i % len(labels)]},0,{i + 1:05d},0{40 + i}Y,{'MF'[i % 2]},PA")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@register_layout("nih", example=write_example)
def read_rows(src: Path) -> pd.DataFrame:
    """One row per line of Data_Entry_2017 (paths relative to SRC)."""
    src = Path(src)
    table_path = next((src / n for n in TABLE_NAMES if (src / n).is_file()), None)
    if table_path is None:
        raise ManifestError(
            f"{src}: no Data_Entry_2017.csv (or _v2020, .gz); download it from "
            f"https://nihcc.app.box.com/v/ChestXray-NIHCC and put it in SRC beside the images_0NN/ folders")
    if table_path.suffix == ".gz":
        df = pd.read_csv(table_path, dtype=str, keep_default_na=False, na_values=[""])
    else:
        df = read_table(table_path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{table_path}: missing column(s) {', '.join(missing)}; expected the official "
                            f"Data_Entry_2017 header ({', '.join(COLUMNS)}, ...)")
    found = _index_images(src)
    split = _official_split(src)
    out = pd.DataFrame({
        "image": [found.get(n, f"images/{n}") for n in df["Image Index"]],
        "patient_id": ["nih:" + str(int(p)) if str(p).isdigit() else f"nih:{p}" for p in df["Patient ID"]],
        "source": SOURCE,
        "view": df["View Position"],
        "sex": df["Patient Gender"],
        "age": [_age(a) for a in df["Patient Age"]],
        "labels": [";".join(s.strip() for s in str(v).split("|") if s.strip()) for v in df["Finding Labels"]],
        "license": LICENSE,
        "source_image": df["Image Index"],
        "finding_raw": df["Finding Labels"],
        ORIGIN: [f"{table_path.name} line {i + 2}" for i in range(len(df))],
    })
    if split:
        out["source_split"] = [split.get(n) for n in df["Image Index"]]
    out.attrs["inputs"] = [table_path]
    return out


def _index_images(src: Path) -> dict[str, str]:
    """File name -> path relative to SRC, for every PNG under SRC (images_0NN/images/ or images/)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(src)
        for f in filenames:
            if f.lower().endswith(".png"):
                found.setdefault(f, (rel / f).as_posix())
    return found


def _official_split(src: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for fname, name in (("train_val_list.txt", "train_val"), ("test_list.txt", "test")):
        p = src / fname
        if p.is_file():
            out.update({line.strip(): name for line in p.read_text(encoding="utf-8").splitlines() if line.strip()})
    return out


def _age(v: object) -> float | None:
    m = re.fullmatch(r"0*(\d+)\s*([YMD]?)", str(v).strip(), flags=re.I)
    if m is None:
        return None
    n, unit = int(m.group(1)), m.group(2).upper()
    return n / {"": 1, "Y": 1, "M": 12, "D": 365}[unit]
