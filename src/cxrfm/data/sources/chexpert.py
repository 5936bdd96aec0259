"""CheXpert (Irvin et al., AAAI 2019) and CheXpert Plus reports (Chambon et al., arXiv:2405.19538).

Official layouts::

    SRC/CheXpert-v1.0-small/train.csv, valid.csv      (SRC may also be CheXpert-v1.0-small itself)
        Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, ..., Support Devices   (1.0/0.0/-1.0/blank)
        Path = CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    SRC/df_chexpert_plus_240401.csv                   (CheXpert Plus, optional)
        path_to_image (train/patient00001/study1/view1_frontal.jpg), deid_patient_id, frontal_lateral,
        ap_pa, age, sex, report, section_findings, section_impression, split, ...

``Path`` starts with the dataset folder's name, so images are resolved from the folder holding the
CSV. CheXpert Plus rows join the label rows on the path under ``train/``/``valid/`` and add the
report ("FINDINGS: ... IMPRESSION: ..." when those sections exist, else the full ``report``);
with Plus alone, images are looked for at ``SRC/<path>`` and ``SRC/PNG/<path>`` (``.jpg`` or the
``.png`` the Plus release ships). The 14 finding columns are written as the CSV gives them and
``labels`` lists the positives. Lateral views get ``view`` = ``L`` (as in shared/data/cxr).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from ..findings import CHEXPERT_14
from ..schema import read_table
from .registry import ORIGIN, copy_image, register_layout

SOURCE = "chexpert"
LICENSE = "Stanford University School of Medicine CheXpert Dataset Research Use Agreement"
SPLIT_TABLES = ("train.csv", "valid.csv")
LABEL_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_14
SEX = {"male": "M", "female": "F", "m": "M", "f": "F"}


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """``root/CheXpert-v1.0-small/train.csv`` + ``train/patientN/study1/view1_frontal.jpg`` (1 / 0 / -1 / blank)."""
    base = root / "CheXpert-v1.0-small"
    values = ["1.0", "0.0", "-1.0", ""]
    rows = []
    for i, png in enumerate(images):
        rel = f"train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        copy_image(png, base / rel)
        rows.append({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "Female", "Age": str(50 + i),
                     "Frontal/Lateral": "Frontal", "AP/PA": "AP",
                     **{f: values[(i + j) % len(values)] for j, f in enumerate(CHEXPERT_14)}})
    pd.DataFrame(rows).to_csv(base / "train.csv", index=False)
    return root


@register_layout("chexpert", example=write_example)
def read_rows(src: Path) -> pd.DataFrame:
    """One row per image of train.csv/valid.csv and/or df_chexpert_plus_*.csv (paths relative to SRC)."""
    src = Path(src)
    label_tables = [p for d in [src, *sorted(src.glob("CheXpert-v1.0*"))] for p in (d / n for n in SPLIT_TABLES)
                    if p.is_file()]
    plus_tables = sorted(src.glob("df_chexpert_plus*.csv"))
    if not label_tables and not plus_tables:
        raise ManifestError(
            f"{src}: no CheXpert train.csv/valid.csv (in SRC or SRC/CheXpert-v1.0*/) and no "
            f"df_chexpert_plus_*.csv; give the folder that holds CheXpert-v1.0-small/ (or the Plus CSV)")
    frames = [_label_rows(src, p) for p in label_tables]
    rows = pd.concat(frames, ignore_index=True) if frames else None
    if plus_tables:
        plus = _plus_rows(src, plus_tables[-1])  # the newest release sorts last (df_chexpert_plus_YYMMDD)
        if rows is None:
            rows = plus.drop(columns="key")
        else:
            # CheXpert labels + Plus reports: the label table decides which images exist.
            reports = plus.drop_duplicates("key").set_index("key")["report"]
            rows["report"] = rows["key"].map(reports).fillna("")
    rows = rows.drop(columns="key", errors="ignore")
    rows.attrs["inputs"] = label_tables + plus_tables
    return rows


def _label_rows(src: Path, path: Path) -> pd.DataFrame:
    df = read_table(path)
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; expected the official CheXpert "
                            f"header ({', '.join(LABEL_COLUMNS[:5])}, then the 14 findings)")
    base = path.parent.relative_to(src)
    # "CheXpert-v1.0-small/train/patient00001/..." -> "train/patient00001/..." under the CSV's folder
    under = [p.split("/", 1)[1] if "/" in p else p for p in df["Path"].str.replace("\\", "/")]
    frontal = df["Frontal/Lateral"].str.lower().eq("frontal")
    out = pd.DataFrame({
        "image": [(base / u).as_posix() for u in under],
        "patient_id": ["chexpert:" + u.split("/")[1] if u.count("/") >= 2 else f"chexpert:{u}" for u in under],
        "source": SOURCE,
        "view": [ap if f else "L" for f, ap in zip(frontal, df["AP/PA"])],
        "sex": [SEX.get(str(s).lower()) for s in df["Sex"]],
        "age": df["Age"],
        "labels": _positives(df),
        **{f: df[f] for f in CHEXPERT_14},
        "license": LICENSE,
        "source_split": path.stem,
        "key": [_key(u) for u in under],
        ORIGIN: [f"{path} line {i + 2}" for i in range(len(df))],
    })
    return out


def _positives(df: pd.DataFrame) -> list[str | None]:
    pos = {f: pd.to_numeric(df[f], errors="coerce").eq(1).to_numpy() for f in CHEXPERT_14}
    return [";".join(f for f in CHEXPERT_14 if pos[f][i]) or None for i in range(len(df))]


def _plus_rows(src: Path, path: Path) -> pd.DataFrame:
    df = read_table(path)
    if "path_to_image" not in df.columns:
        raise ManifestError(f"{path}: no path_to_image column; expected the CheXpert Plus df_chexpert_plus "
                            f"table from the Stanford AIMI release")
    paths = [p.replace("\\", "/") for p in df["path_to_image"]]
    col = lambda c: df[c] if c in df.columns else pd.Series([None] * len(df))  # noqa: E731
    frontal = col("frontal_lateral").fillna("").str.lower().eq("frontal")
    return pd.DataFrame({
        "image": [_locate(src, p) for p in paths],
        "patient_id": ["chexpert:" + p.split("/")[1] if p.count("/") >= 2 else f"chexpert:{p}" for p in paths],
        "source": SOURCE,
        "view": [ap if f else ("L" if isinstance(fl, str) and fl else None)
                 for f, ap, fl in zip(frontal, col("ap_pa"), col("frontal_lateral"))],
        "sex": [SEX.get(str(s).lower()) for s in col("sex")],
        "age": col("age"),
        "report": [_report(f, i, r) for f, i, r in zip(col("section_findings"), col("section_impression"),
                                                        col("report"))],
        "license": LICENSE,
        "source_split": col("split"),
        "key": [_key(p) for p in paths],
        ORIGIN: [f"{path} line {i + 2}" for i in range(len(df))],
    })


def _report(findings: object, impression: object, full: object) -> str:
    text = " ".join(f"{name}: {v.strip()}" for name, v in (("FINDINGS", findings), ("IMPRESSION", impression))
                    if isinstance(v, str) and v.strip())
    return text or (full.strip() if isinstance(full, str) else "")


def _locate(src: Path, p: str) -> str:
    for cand in (p, f"PNG/{p}"):
        for suffix in ("", ".png"):
            c = str(Path(cand).with_suffix(suffix)) if suffix else cand
            if (src / c).is_file():
                return Path(c).as_posix()
    return p


def _key(p: str) -> str:
    return str(Path(p).with_suffix("")).lower()
