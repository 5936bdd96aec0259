"""Agreement of cxrfm's CheXpert-14 labeler with the MeSH major terms of the IU X-ray reports.

Data: the 3,955 IU X-ray / Open-i reports (Demner-Fushman et al., JAMIA 2016) in
``shared/data/text/iu_xray_reports.csv``. Their ``mesh_major`` terms were assigned by human indexers;
:func:`cxrfm.data.findings.mesh_to_findings` maps them to CheXpert findings and MeSH ``normal`` to
"No Finding". The labeler reads findings + impression. A report counts as labeler-positive for a
finding when the labeler says 1 *or* -1 (``--positive any``, the default): the indexers tagged what a
report mentions as present, hedged or not ("probable scarring" is tagged Cicatrix). ``--positive
strict`` counts 1 only. "No Finding" is positive when the labeler says 1. Reports indexed "No
Indexing" and reports with no findings/impression text are left out.

    python benchmarks/labeler_vs_mesh.py                 # the full table (about 15 s)
    python benchmarks/labeler_vs_mesh.py --errors "Lung Opacity" --show 20
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrfm.data.findings import CHEXPERT_14, mesh_to_findings  # noqa: E402
from cxrfm import label_reports, shared_data_dir  # noqa: E402

MIN_SUPPORT = 30  # findings with fewer MeSH positives are shown but left out of the macro F1


def mesh_terms(cell: object) -> list[str]:
    return [t.strip() for t in str(cell).split(";") if t.strip()] if isinstance(cell, str) else []


def load_iu(path: Path, limit: int | None = None) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df[~df["mesh_major"].str.lower().str.contains("no indexing")]
    df = df[(df["findings"].str.strip() != "") | (df["impression"].str.strip() != "")]
    df = df.reset_index(drop=True)
    return df.head(limit) if limit else df


def report_text(row) -> str:
    parts = []
    if row["findings"].strip():
        parts.append(f"FINDINGS: {row['findings'].strip()}")
    if row["impression"].strip():
        parts.append(f"IMPRESSION: {row['impression'].strip()}")
    return "\n\n".join(parts)


def mesh_targets(df: pd.DataFrame) -> np.ndarray:
    """(N, 14) bool: which findings each report's MeSH major terms assert."""
    y = np.zeros((len(df), len(CHEXPERT_14)), dtype=bool)
    for i, cell in enumerate(df["mesh_major"]):
        for term in mesh_terms(cell):
            for f in mesh_to_findings(term):
                y[i, CHEXPERT_14.index(f)] = True
    return y


def predicted_positive(labels: np.ndarray, positive: str) -> np.ndarray:
    pos = labels == 1
    if positive == "any":
        pos |= labels == -1
    pos[:, 0] = labels[:, 0] == 1  # No Finding: 1 only
    return pos


def agreement_table(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    rows = []
    for j, f in enumerate(CHEXPERT_14):
        t, p = y_true[:, j], y_pred[:, j]
        tp = int((t & p).sum())
        prec = tp / p.sum() if p.sum() else float("nan")
        rec = tp / t.sum() if t.sum() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if (prec + rec) > 0 else 0.0
        rows.append({"finding": f, "mesh_pos": int(t.sum()), "labeler_pos": int(p.sum()), "tp": tp,
                     "precision": prec, "recall": rec, "f1": f1 if t.sum() else float("nan")})
    return pd.DataFrame(rows)


def macro_f1(table: pd.DataFrame, min_support: int = MIN_SUPPORT) -> float:
    return float(table.loc[table["mesh_pos"] >= min_support, "f1"].mean())


def unmapped_terms(df: pd.DataFrame, top: int = 25) -> list[tuple[str, int]]:
    """Frequent MeSH heads (reports per head) that map to no finding."""
    c: collections.Counter = collections.Counter()
    for cell in df["mesh_major"]:
        heads = {"/".join(t.lower().split("/")[:2]) if not mesh_to_findings(t) else None for t in mesh_terms(cell)}
        c.update(h for h in heads if h)
    return c.most_common(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = (shared_data_dir() or Path("../shared/data")) / "text" / "iu_xray_reports.csv"
    ap.add_argument("--csv", type=Path, default=default)
    ap.add_argument("--limit", type=int, default=None, help="first N usable reports only")
    ap.add_argument("--positive", choices=["any", "strict"], default="any")
    ap.add_argument("--errors", default=None, help="print false positives/negatives for this finding")
    ap.add_argument("--show", type=int, default=10)
    args = ap.parse_args(argv)

    df = load_iu(args.csv, args.limit)
    texts = [report_text(r) for _, r in df.iterrows()]
    t0 = time.perf_counter()
    labels = label_reports(texts)
    secs = time.perf_counter() - t0
    y_true = mesh_targets(df)
    table = agreement_table(y_true, predicted_positive(labels, args.positive))
    strict = agreement_table(y_true, predicted_positive(labels, "strict" if args.positive == "any" else "any"))

    print(f"IU X-ray reports: {len(df)} usable (of {args.csv}); labeled in {secs:.1f} s "
          f"({len(df) / secs:.0f} reports/s); labeler positive = {'1 or -1' if args.positive == 'any' else '1'}")
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    m = macro_f1(table)
    big = ", ".join(table.loc[table["mesh_pos"] >= MIN_SUPPORT, "finding"])
    print(f"\nmacro F1 over findings with >= {MIN_SUPPORT} MeSH positives ({big}): {m:.3f}")
    print(f"(with labeler positive = {'1 only' if args.positive == 'any' else '1 or -1'}: {macro_f1(strict):.3f})")
    print("\nmost frequent MeSH terms (head/first qualifier, reports) mapped to no finding:")
    print("  " + "; ".join(f"{t} {n}" for t, n in unmapped_terms(df)))

    if args.errors:
        j = CHEXPERT_14.index(args.errors)
        pred = predicted_positive(labels, args.positive)[:, j]
        for name, mask in (("false positives", pred & ~y_true[:, j]), ("false negatives", ~pred & y_true[:, j])):
            idx = np.flatnonzero(mask)[: args.show]
            print(f"\n--- {args.errors}: {int(mask.sum())} {name}")
            for i in idx:
                print(f"[{df['uid'][i]}] value={labels[i, j]} mesh={df['mesh_major'][i]}\n    {texts[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
