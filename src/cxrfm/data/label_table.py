"""``cxrfm label``: label a table's report column and merge with the labels its source already gives.

The merge is explicit (issue 9, "Nothing is lost"): a cell the source decides (a finding column, or
what :func:`cxrfm.data.findings.harmonise_row` reads from ``labels`` for that source, exhaustive
negatives included) keeps the source's value; the rule-based labeler
(:mod:`cxrfm.data.labeler`) fills only the cells the source leaves unknown. Replacing the source
would trade expert or dataset labels for text-mined ones: on shared/data/cxr the known cells fell
from 17,216 to 662 that way. Every row of the input stays, in order; a row the labeler could not read
(empty, no findings/impression, over ``max_chars``) says why in ``label_note``. Where both sides
know a cell and differ, the cell is listed in ``<OUT stem>.disagreements.csv`` beside the output.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReportError
from .findings import CHEXPERT_14, FINDINGS, harmonise_row, split_labels
from .labeler import DEFAULT_MAX_CHARS, label_reports_with_notes

NOTE_COLUMN = "label_note"
_LAB_IDX = [FINDINGS.index(f) for f in CHEXPERT_14]


@dataclass
class MergeCounts:
    """How many cells each side decided, over the canonical finding columns."""

    source: int  # cells the source knows (kept as they are)
    labeler: int  # cells only the labeler knows (filled)
    both: int  # cells both know (the source's value kept)
    disagree_pos: int  # labeler 1 where the source says 0
    disagree_neg: int  # labeler 0 where the source says 1
    uncertain: int  # labeler -1 where the source knows the cell

    @property
    def disagree(self) -> int:
        return self.disagree_pos + self.disagree_neg


def source_labels(df: pd.DataFrame) -> np.ndarray:
    """(N, len(FINDINGS)) of what the table's own labels say: 1 / 0 / -1 / NaN, as a manifest reads them.

    Finding columns when there are any (they win over ``labels``, as in :class:`~cxrfm.data.schema.Manifest`),
    else ``labels`` harmonised per ``source``; a table with neither knows nothing.
    """
    out = np.full((len(df), len(FINDINGS)), np.nan, dtype=np.float32)
    cols = [f for f in FINDINGS if f in df.columns]
    if cols:
        for c in cols:
            vals = pd.to_numeric(df[c], errors="coerce")
            bad = ~df[c].map(_blank) & ~vals.isin([1, 0, -1])
            if bad.any():  # filling it would silently drop what the source wrote there
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise ReportError(f"row {i + 2}: column {c!r} holds {df[c].iat[i]!r}; finding columns hold 1, 0, "
                                  f"-1 or blank. Fix the value (or rename the column) and label again")
            out[:, FINDINGS.index(c)] = vals.to_numpy(dtype=np.float32)
    elif "labels" in df.columns:
        sources = df["source"] if "source" in df.columns else pd.Series([""] * len(df))
        for i, (raw, src) in enumerate(zip(df["labels"], sources)):
            out[i] = harmonise_row(split_labels(raw), "" if _blank(src) else str(src))
    return out


def merge_labels(source: np.ndarray, labeler: np.ndarray) -> tuple[np.ndarray, MergeCounts]:
    """Source values where known, labeler values (CheXpert-14 order) in the unknown cells."""
    lab = np.full_like(source, np.nan)
    lab[:, _LAB_IDX] = labeler
    s_known, l_known = ~np.isnan(source), ~np.isnan(lab)
    merged = np.where(s_known, source, lab)
    both = s_known & l_known
    counts = MergeCounts(
        source=int(s_known.sum()), labeler=int((l_known & ~s_known).sum()), both=int(both.sum()),
        disagree_pos=int((both & (lab == 1) & (source == 0)).sum()),
        disagree_neg=int((both & (lab == 0) & (source == 1)).sum()),
        uncertain=int((both & (lab == -1)).sum()))
    return merged, counts


def label_table_file(path_in: str | Path, path_out: str | Path, column: str = "report", progress: bool = False,
                     max_chars: int | None = DEFAULT_MAX_CHARS) -> str:
    """Label the ``column`` of a CSV/Parquet table, merge with the source's labels, write ``path_out``.

    Returns a one-paragraph summary: rows, rows left unlabeled and why, cells decided by each side,
    disagreements, reports/s and positives.
    """
    from .schema import read_table, write_table

    path_in, path_out = Path(path_in), Path(path_out)
    if path_out.exists() and path_in.exists() and path_out.resolve() == path_in.resolve():
        raise ReportError(f"{path_out}: is the input table and would be overwritten; give another --out")
    df = read_table(path_in, keep_blank_lines=True)
    df = _drop_trailing_empty_lines(df)
    if column not in df.columns:
        raise ReportError(
            f"{path_in}: no column {column!r} with report text; columns found: {', '.join(map(str, df.columns))}. "
            f"Name the report column with --column (column= in Python)")
    try:
        src = source_labels(df)
    except ReportError as e:
        raise ReportError(f"{path_in}: {e}") from None
    texts = [None if _blank(v) else str(v) for v in df[column]]
    t0 = time.perf_counter()
    labels, notes = label_reports_with_notes(texts, progress=progress, max_chars=max_chars)
    seconds = time.perf_counter() - t0
    merged, counts = merge_labels(src, labels)

    out = df.copy()
    for j, f in enumerate(FINDINGS):
        if f in CHEXPERT_14 or f in out.columns or not np.isnan(src[:, j]).all():
            out[f] = pd.Series(merged[:, j], index=out.index).astype("Int8")
    out[NOTE_COLUMN] = notes
    _rebase_paths(out, path_in, path_out)
    write_table(out, path_out)
    dis_path = _write_disagreements(df, src, labels, path_out)

    n = len(df)
    n_labeled = sum(note is None for note in notes)
    kinds = {"empty report": sum(nt == "empty report" for nt in notes),
             "no findings/impression text": sum(nt == "no findings/impression text" for nt in notes),
             "over max_chars": sum(bool(nt) and "max_chars" in nt for nt in notes)}
    rate = (n - kinds["empty report"]) / seconds if seconds > 0 else float("inf")
    pos = ", ".join(f"{f} {int((merged[:, j] == 1).sum())}" for j, f in enumerate(FINDINGS)
                    if (merged[:, j] == 1).any())
    parts = [f"labeled {n_labeled} of {n} rows of {path_in} -> {path_out}"]
    if n_labeled < n:
        parts.append(f"{n - n_labeled} rows kept with labeler cells blank ("
                     + ", ".join(f"{k} {v}" for k, v in kinds.items() if v) + f"; reason per row in {NOTE_COLUMN})")
    parts.append(f"cells: source decided {counts.source} (kept), labeler filled {counts.labeler} unknown cells, "
                 f"both known {counts.both}")
    if counts.both:
        parts.append(f"disagreed on {counts.disagree} of them (labeler 1 vs source 0: {counts.disagree_pos}, "
                     f"labeler 0 vs source 1: {counts.disagree_neg}; labeler uncertain on {counts.uncertain} more)"
                     + (f", listed in {dis_path}" if dis_path else ""))
    parts.append(f"{rate:.0f} reports/s")
    parts.append(f"positives after the merge: {pos or 'none'}")
    return "; ".join(parts) + "."


def _write_disagreements(df: pd.DataFrame, src: np.ndarray, labeler: np.ndarray, path_out: Path) -> Path | None:
    """Cells where the labeler (-1 included) and the source both say something different: for review."""
    from .schema import write_table

    path = path_out.with_name(f"{path_out.stem}.disagreements.csv")
    lab = np.full_like(src, np.nan)
    lab[:, _LAB_IDX] = labeler
    rows, cols = np.nonzero(~np.isnan(src) & ~np.isnan(lab) & (src != lab))
    if len(rows) == 0:
        if path.exists():
            path.unlink()  # a stale list from an earlier run would mislead
        return None
    table = pd.DataFrame({"row": rows + 2 if path_out.suffix.lower() == ".csv" else rows + 1,
                          "finding": [FINDINGS[c] for c in cols],
                          "source_value": src[rows, cols].astype(int), "labeler_value": lab[rows, cols].astype(int)})
    for key in ("image", "source"):
        if key in df.columns:
            table.insert(1, key, df[key].to_numpy()[rows])
    return write_table(table, path)


def _rebase_paths(df: pd.DataFrame, path_in: Path, path_out: Path) -> None:
    """A manifest written to another folder keeps pointing at its images (paths are relative to the table)."""
    from .schema import REQUIRED_COLUMNS

    src_dir, out_dir = path_in.resolve().parent, path_out.resolve().parent
    if src_dir == out_dir or not set(REQUIRED_COLUMNS) <= set(df.columns):
        return
    for col in ("image", "mask"):
        if col in df.columns:
            df[col] = [v if _blank(v) or os.path.isabs(str(v)) else
                       Path(os.path.relpath(src_dir / str(v), out_dir)).as_posix() for v in df[col]]


def _drop_trailing_empty_lines(df: pd.DataFrame) -> pd.DataFrame:
    """Blank lines at the very end of a CSV are the editor's, not rows; blank lines inside are rows."""
    empty = df.isna().all(axis=1).to_numpy()
    n = len(df)
    while n and empty[n - 1]:
        n -= 1
    return df.iloc[:n].reset_index(drop=True)


def _blank(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())
