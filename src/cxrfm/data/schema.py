"""The manifest: one row per image, the one input every later step reads.

Columns follow ``shared/data/cxr/manifest.csv``. Required: ``image`` (path relative to the
manifest's folder), ``patient_id``, ``source``. Known optional columns are listed in
:data:`OPTIONAL_COLUMNS`; any other column is kept as it is. Labels come from either

* per-finding columns named exactly as :data:`~cxrfm.data.findings.FINDINGS` (values 1 / 0 / -1 /
  blank, as CheXpert and MIMIC-CXR ship them, or as ``cxrfm label`` writes them), or
* the ``labels`` column (``;``-separated names as the source gives them), harmonised per source by
  :mod:`cxrfm.data.findings`.

Per-finding columns win where both are present. The row id used everywhere downstream (curation
kept ids, results) is the ``image`` path string: stable across re-orderings of the table.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import ManifestError
from .findings import FINDINGS, apply_uncertain_policy, harmonise_row, split_labels, unknown_labels

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "patient_id", "source")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "view", "sex", "age", "labels", "report", "mask", "license",
    "source_image", "source_ref", "finding_raw", "mask_source", "width", "height",
)
STRING_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + (
    "view", "sex", "labels", "report", "mask", "license", "source_image", "source_ref", "finding_raw")


def read_table(path: str | Path, keep_blank_lines: bool = False) -> pd.DataFrame:
    """Read a CSV or Parquet table, with errors that name the file.

    ``keep_blank_lines``: an empty or whitespace-only CSV line is a row (all blank) instead of
    being skipped: in a one-column table of reports that line *is* a row, and dropping it would
    shift every later row.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such file; give the path of a manifest .csv or .parquet")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8",
                           skip_blank_lines=not keep_blank_lines)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot be read as a table ({e}); expected CSV with a header or Parquet") from e


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in {".parquet", ".pq"}:
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def _is_blank(v: object) -> bool:
    """None, NaN (pandas' missing value) or an empty string."""
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def delimiter_hint(columns) -> str:
    """`` (the header looks ;-separated ...)`` when a one-column header is really another delimiter's."""
    cols = [str(c) for c in columns]
    if len(cols) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in cols[0]:
                return (f" (the header {cols[0][:60]!r} looks {name}-separated: save the table as "
                        f"comma-separated CSV, e.g. Excel's 'CSV UTF-8 (Comma delimited)')")
    return ""


def finding_columns(df: pd.DataFrame) -> list[str]:
    """The canonical per-finding columns present in ``df``."""
    return [f for f in FINDINGS if f in df.columns]


def validate_table(df: pd.DataFrame, where: str = "manifest", strict: bool = False) -> pd.DataFrame:
    """Check and normalise a manifest table; raise :class:`ManifestError` naming the row and the fix.

    A raw label cxrfm cannot map is not an error (the row keeps it as unmapped, see
    :func:`unmapped_labels`) unless ``strict``.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{where}: missing required column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(REQUIRED_COLUMNS)} (paths relative to the manifest's folder){delimiter_hint(df.columns)}")
    df = df.copy().reset_index(drop=True)
    for c in STRING_COLUMNS:
        if c in df.columns:
            df[c] = pd.Series([None if _is_blank(v) else str(v) for v in df[c]], index=df.index, dtype=object)
    for c in REQUIRED_COLUMNS:
        bad = [i for i, v in enumerate(df[c]) if _is_blank(v)]
        if bad:
            raise ManifestError(
                f"{where}: row {bad[0] + 2} (and {len(bad) - 1} more) has an empty {c!r}; "
                f"fill it in or drop the row")
    dup = df["image"].duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ManifestError(
            f"{where}: duplicate row for image {df['image'][i]!r} (row {i + 2}); each image must appear once. "
            f"Drop the duplicates (e.g. pandas drop_duplicates('image'))")
    for c in finding_columns(df):
        vals = pd.to_numeric(df[c], errors="coerce")
        bad = df[c].notna() & (vals.isna() | ~vals.isin([1, 0, -1]))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(
                f"{where}: column {c!r} row {i + 2} has {df[c][i]!r}; finding columns hold 1, 0, -1 or blank")
        df[c] = vals.astype("float32")
    if "age" in df.columns:
        df["age"] = pd.to_numeric(df["age"], errors="coerce")
    if strict and "labels" in df.columns and not finding_columns(df):
        for i, (raw, src) in enumerate(zip(df["labels"], df["source"])):
            try:
                harmonise_row(split_labels(raw), src, strict=True)
            except ManifestError as e:
                raise ManifestError(f"{where}: row {i + 2}: {e}") from None
    return df


def unmapped_labels(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (table row, raw label) that cxrfm cannot map: columns ``row`` (0-based), ``source``, ``label``.

    Those rows are kept with that label unmapped (:func:`~cxrfm.data.findings.harmonise_row`); this
    is the list a user reads to extend the mapping or fix a typo. Empty when finding columns decide.
    """
    found = []
    if "labels" in df.columns and not finding_columns(df):
        for i, (raw, src) in enumerate(zip(df["labels"], df["source"])):
            found.extend((i, src, name) for name in unknown_labels(split_labels(raw), str(src)))
    return pd.DataFrame(found, columns=["row", "source", "label"])


@dataclass
class Manifest:
    """A validated manifest table and the folder its relative paths start from."""

    table: pd.DataFrame
    root: Path
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        return cls(validate_table(read_table(path), where=str(path)), path.resolve().parent, path)

    @classmethod
    def from_table(cls, df: pd.DataFrame, root: str | Path) -> "Manifest":
        return cls(validate_table(df), Path(root).resolve(), None)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        """Stable row ids (the ``image`` column)."""
        return list(self.table["image"])

    def image_paths(self) -> list[Path]:
        return [self.root / p for p in self.table["image"]]

    def mask_paths(self) -> list[Path | None]:
        if "mask" not in self.table.columns:
            return [None] * len(self)
        return [None if _is_blank(m) else self.root / m for m in self.table["mask"]]

    def reports(self) -> list[str | None]:
        if "report" not in self.table.columns:
            return [None] * len(self)
        return [None if _is_blank(r) else str(r) for r in self.table["report"]]

    def labels(self, uncertain: str = "ignore") -> np.ndarray:
        """(N, len(FINDINGS)) float32 of 1 / 0 / NaN, row-aligned with the table."""
        df = self.table
        cols = finding_columns(df)
        out = np.full((len(df), len(FINDINGS)), np.nan, dtype=np.float32)
        if cols:
            for c in cols:
                out[:, FINDINGS.index(c)] = df[c].to_numpy(dtype=np.float32)
            return apply_uncertain_policy(out, uncertain)
        if "labels" not in df.columns:
            return out
        for i, (raw, src) in enumerate(zip(df["labels"], df["source"])):
            out[i] = harmonise_row(split_labels(raw), src)
        return out

    def subset(self, rows: np.ndarray | list[int]) -> "Manifest":
        return Manifest(self.table.iloc[list(rows)].reset_index(drop=True), self.root, self.path)

    def content_hash(self) -> str:
        """Hash of the table's content and root: keys caches and detects changed data on resume."""
        h = hashlib.sha256(str(self.root).encode())
        h.update(pd.util.hash_pandas_object(self.table.astype(str), index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write the table; relative paths are re-based if ``path`` is in another folder."""
        path = Path(path)
        df = self.table.copy()
        new_root = path.resolve().parent
        if new_root != self.root:
            for c in df.columns:  # image, mask and every mask_<structure> column hold relative paths
                if c in ("image", "mask") or str(c).startswith("mask_"):
                    df[c] = [None if _is_blank(v) else os.path.relpath(self.root / v, new_root) for v in df[c]]
        return write_table(df, path)
