"""A readable summary of a manifest: what the data is before anything is trained on it.

The label table reports positives, known negatives and unknowns separately (the distinction
:mod:`cxrfm.data.findings` keeps, after the per-source exhaustive-label rules), because a finding
that is "unknown" for most rows cannot be evaluated on them. Datasheets for Datasets (Gebru et al.,
CACM 2021) motivates stating source, licence and demographics next to the counts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .findings import FINDINGS
from .schema import Manifest, unmapped_labels

# how many findings the per-source table shows (most positives first)
MAIN_FINDINGS = 8


def _nonempty(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(False, index=df.index)
    return df[column].notna() & (df[column].astype(str).str.strip() != "")


def _short_source(name: str, taken: set[str]) -> str:
    short = name.split("-")[0][:12]
    return short if short not in taken else name[:20]


def _counts_line(title: str, series: pd.Series) -> str:
    vc = series.fillna("").astype(str).str.strip().replace("", "(unknown)").value_counts()
    return f"{title}: " + ", ".join(f"{k} {v}" for k, v in vc.items())


def summarize(manifest: Manifest) -> str:
    """A multi-line text summary: totals, per source, views, sex, age, and per-finding label counts."""
    df = manifest.table
    labels = manifest.labels()  # (N, F) of 1 / 0 / NaN
    where = str(manifest.path) if manifest.path is not None else str(manifest.root)
    lines = [f"manifest: {where}",
             f"rows: {len(df)}   patients: {df['patient_id'].nunique()}   sources: {df['source'].nunique()}", ""]

    has_report = _nonempty(df, "report")
    has_mask = _nonempty(df, "mask")
    per_source = []
    for src, idx in df.groupby("source", sort=True).groups.items():
        sub = df.loc[idx]
        lic = (sub["license"].fillna("(none)").value_counts() if "license" in df.columns
               else pd.Series({"(not given)": len(sub)}))
        per_source.append({
            "source": src, "rows": len(sub), "patients": sub["patient_id"].nunique(),
            "report": int(has_report.loc[idx].sum()), "mask": int(has_mask.loc[idx].sum()),
            "licence": "; ".join(f"{k} ({v})" if len(lic) > 1 else str(k) for k, v in lic.items()),
        })
    src_table = pd.DataFrame(per_source)
    for c in ("source", "licence"):  # left-aligned text columns read better
        src_table[c] = src_table[c].str.ljust(int(src_table[c].str.len().max()))
    lines.append(src_table.to_string(index=False))
    lines.append("")
    if "split" in df.columns:
        lines.append(_counts_line("split", df["split"]))
    if "view" in df.columns:
        lines.append(_counts_line("view", df["view"]))
    if "sex" in df.columns:
        lines.append(_counts_line("sex", df["sex"]))
    if "age" in df.columns:
        age = pd.to_numeric(df["age"], errors="coerce").dropna()
        lines.append(f"age: {len(age)} known" + (
            f", {age.min():g}-{age.max():g} years (median {age.median():g})" if len(age) else ""))
    lines.append("")

    pos = (labels == 1).sum(0)
    neg = (labels == 0).sum(0)
    unk = np.isnan(labels).sum(0)
    table = pd.DataFrame({"finding": FINDINGS, "positive": pos, "negative": neg, "unknown": unk})
    lines.append("labels (canonical findings; unknown = not stated by the source)")
    lines.append(table.to_string(index=False))
    lines.append("")

    main = [FINDINGS[j] for j in np.argsort(-pos, kind="stable")[:MAIN_FINDINGS] if pos[j] > 0]
    if main:
        cols: dict[str, list[int]] = {}
        taken: set[str] = set()
        for src in sorted(df["source"].unique()):
            short = _short_source(src, taken)
            taken.add(short)
            rows = (df["source"] == src).to_numpy()
            cols[short] = [int((labels[rows, FINDINGS.index(f)] == 1).sum()) for f in main]
        lines.append("positives per source (main findings)")
        lines.append(pd.DataFrame(cols, index=main).rename_axis("finding").reset_index().to_string(index=False))
    no_label = int(np.isnan(labels).all(1).sum())
    if no_label:
        lines.append(f"\n{no_label} row(s) have no known label")
    unmapped = unmapped_labels(df)
    if len(unmapped):
        names = ", ".join(f"{k!r} {v}" for k, v in unmapped["label"].value_counts().head(8).items())
        lines.append(f"{unmapped['row'].nunique()} row(s) carry raw labels cxrfm cannot map, unknown for those rows: "
                     f"{names}")
    if "label_note" in df.columns:
        notes = df["label_note"].dropna().astype(str)
        notes = notes[notes.str.strip() != ""].map(lambda n: "over max_chars" if "max_chars" in n else n)
        if len(notes):
            lines.append("rows the report labeler could not read: "
                         + ", ".join(f"{k} {v}" for k, v in notes.value_counts().items()))
    return "\n".join(lines)
