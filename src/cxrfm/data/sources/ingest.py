"""The shared part of ``cxrfm ingest``: a registered layout's rows -> ``DIR/manifest.csv``.

Done once for every layout: refuse to write over any input, duplicate handling, label-name checks
naming the row, re-basing paths onto the output folder (``os.path.relpath``, so images are never
copied), checking that every image exists and decodes (a full decode with
:func:`cxrfm.data.images.read_image` by default: a truncated PNG passes a header check and fails
in the middle of training), then :func:`~cxrfm.data.schema.validate_table` and
:func:`~cxrfm.data.schema.write_table`.

Nothing is lost: a row that cannot be used goes to ``DIR/skipped_rows.csv`` with *every* column
it had (paths re-based onto DIR, so the file is itself a manifest to re-ingest once the images
are fixed) plus ``skip_kind``, ``skip_reason`` and ``skip_origin``. A raw label cxrfm cannot map
keeps its row (unmapped, see :func:`cxrfm.data.findings.harmonise_row`) and is listed in
``DIR/unmapped_labels.csv``; ``strict=True`` makes it an error.

Duplicates: rows identical in every column are skipped and counted (exports often repeat rows);
two rows for the same image that disagree are an error naming both rows, since picking one would
silently choose a label.
"""
from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ...errors import CxrfmError, ManifestError
from .registry import ORIGIN, SKIP, get_layout

SKIPPED_FILE = "skipped_rows.csv"
MANIFEST_FILE = "manifest.csv"
UNMAPPED_FILE = "unmapped_labels.csv"
SKIP_COLUMNS = ("skip_kind", "skip_reason", "skip_origin")
MASK_MISSING = "mask_missing"  # a mask path that pointed at no file (cleared from `mask`, kept here)
CHECKS = ("decode", "header", "none")


@dataclass
class IngestResult:
    """What :func:`ingest` wrote and what it left out."""

    manifest_path: Path
    n_rows: int
    n_skipped: int
    skipped_path: Path | None
    per_source: dict[str, int]
    skipped_by_kind: dict[str, int] = field(default_factory=dict)
    n_empty_reports: int = 0
    n_masks_cleared: int = 0
    n_unmapped_rows: int = 0
    unmapped: dict[str, int] = field(default_factory=dict)  # raw label -> rows
    unmapped_path: Path | None = None
    image_check: str = "decode"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        src = ", ".join(f"{k} {v}" for k, v in sorted(self.per_source.items()))
        lines = [f"wrote {self.manifest_path}: {self.n_rows} rows ({src})"]
        if self.n_skipped:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_kind.items()))
            lines.append(f"skipped {self.n_skipped} rows ({kinds}); every column of each skipped row and "
                         f"the reason are in {self.skipped_path}")
        if self.n_unmapped_rows:
            names = ", ".join(f"{k!r} {v}" for k, v in sorted(self.unmapped.items(), key=lambda kv: -kv[1])[:5])
            lines.append(f"{self.n_unmapped_rows} rows kept with {len(self.unmapped)} raw label name(s) cxrfm "
                         f"cannot map ({names}{', ...' if len(self.unmapped) > 5 else ''}): those labels are "
                         f"unknown for the row; list in {self.unmapped_path} (--strict makes this an error)")
        if self.n_empty_reports:
            lines.append(f"{self.n_empty_reports} rows kept with an empty report")
        if self.n_masks_cleared:
            lines.append(f"{self.n_masks_cleared} mask paths pointed at missing files: cleared from `mask`, "
                         f"kept in `{MASK_MISSING}`")
        if self.image_check == "header":
            lines.append("images were checked by header only: truncated pixel data was not checked")
        elif self.image_check == "none":
            lines.append("images were checked for existence only: not whether they decode (--no-check-images)")
        lines.extend(self.notes)
        return "\n".join(lines)


def ingest(src: Path, fmt: str, out_dir: Path, check_images: bool | str = True, progress: bool = False,
           strict: bool = False, **options) -> IngestResult:
    """Read the layout ``fmt`` at ``src`` and write ``out_dir/manifest.csv`` (+ skipped / unmapped lists).

    ``check_images``: ``"decode"`` (or True, the default) decodes every image fully, ``"header"``
    reads headers only, ``"none"`` (or False) checks existence only. ``options`` go to the reader
    (``source=``, ``patient_pattern=`` for ``folder``); one the layout does not take is an error.
    """
    src, out_dir = Path(src), Path(out_dir)
    layout = get_layout(fmt)
    check = {True: "decode", False: "none"}.get(check_images, check_images)
    if check not in CHECKS:
        raise ManifestError(f"check_images={check_images!r}: use one of {', '.join(CHECKS)}")
    if not src.exists():
        what = "manifest file (.csv/.parquet)" if fmt == "manifest" else "dataset root folder"
        raise ManifestError(f"{src}: no such file or folder; give the {what} of the {fmt} layout")
    options = {k: v for k, v in options.items() if v is not None}
    for name in sorted(set(options) - set(layout.options)):
        from .registry import LAYOUTS
        takers = [f for f, lay in sorted(LAYOUTS.items()) if name in lay.options]
        raise ManifestError(f"--{name.replace('_', '-')} does not apply to --format {fmt}; drop it "
                            f"(it applies to --format {', '.join(takers) or 'none'})")
    if out_dir.exists() and not out_dir.is_dir():
        raise ManifestError(f"{out_dir}: --out is a file, not a folder; give a folder (manifest.csv is written in it)")
    table = layout.read_rows(src, **options)
    outputs = [out_dir / n for n in (MANIFEST_FILE, SKIPPED_FILE, UNMAPPED_FILE)]
    _refuse_overwriting_inputs(outputs, [src] + list(table.attrs.get("inputs", [])), fmt)
    root = Path(os.path.abspath(src if src.is_dir() else src.parent))
    notes = list(table.attrs.get("notes", []))
    if len(table) == 0:
        raise ManifestError(f"{src}: found no images for --format {fmt}; check that SRC is the dataset root "
                            f"laid out as {layout.module} documents")
    table = table.reset_index(drop=True)
    if ORIGIN not in table.columns:
        table[ORIGIN] = [f"{src.name} row {i + 1}" for i in range(len(table))]
    if SKIP not in table.columns:
        table[SKIP] = None
    # an earlier ingest's skipped_rows.csv, re-ingested once fixed: its skip_* notes are stale
    table = table.drop(columns=[c for c in SKIP_COLUMNS if c in table.columns])
    _check_columns(table, where=str(src))
    n_total = len(table)
    out_abs = Path(os.path.abspath(out_dir))
    for col in ("image", "mask"):
        if col in table.columns:
            table[col] = [None if _blank(v) else _rebase(root, v, out_abs) for v in table[col]]

    skipped: list[pd.DataFrame] = []
    # Rows the reader already rejected (a report that is not UTF-8) leave before any row check.
    pre = table[SKIP].map(lambda v: not _blank(v)).to_numpy(dtype=bool)
    skipped.append(_skipped(table[pre], "bad report", list(table[SKIP][pre])))
    table = _drop_exact_duplicates(table[~pre].reset_index(drop=True), skipped)
    _check_rows(table, strict)

    keep, sizes, kinds, reasons = _check_images(list(table["image"]), out_abs, check, progress)
    skipped.append(_skipped(table[~keep], kinds, reasons))
    n_masks_cleared = 0
    if "mask" in table.columns:
        gone = [keep[i] and not _blank(m) and not Path(os.path.normpath(out_abs / m)).is_file()
                for i, m in enumerate(table["mask"])]
        n_masks_cleared = int(sum(gone))
        if n_masks_cleared:
            # the path stays on record (a mask restored later is one rename away), the mask column is cleared
            table[MASK_MISSING] = [m if g else None for m, g in zip(table["mask"], gone)]
            table["mask"] = [None if g else m for m, g in zip(table["mask"], gone)]
    if check != "none" and not {"width", "height"} & set(table.columns):
        table["width"] = [s[0] if s else None for s in sizes]
        table["height"] = [s[1] if s else None for s in sizes]

    kept = table[keep].reset_index(drop=True)
    origins = list(kept[ORIGIN])
    kept = kept.drop(columns=[ORIGIN, SKIP])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ManifestError(f"{out_dir}: cannot create the output folder ({e.strerror}); choose a writable --out") from e
    skipped_df = pd.concat([s for s in skipped if len(s)], ignore_index=True) if any(len(s) for s in skipped) \
        else None
    skipped_path = _write_or_clear(skipped_df, out_dir / SKIPPED_FILE)
    if kept.empty:
        raise ManifestError(f"{src}: all {n_total} rows were skipped, nothing to write; the reasons are in "
                            f"{skipped_path}. Fix the first reason listed there and run ingest again")
    manifest_path = out_dir / MANIFEST_FILE
    kept = _validate(_order_columns(kept), where=str(manifest_path))
    from ..schema import unmapped_labels, write_table
    write_table(kept, manifest_path)

    unmapped = unmapped_labels(kept)
    if len(unmapped):
        unmapped = unmapped.assign(image=kept["image"].to_numpy()[unmapped["row"]],
                                   origin=[origins[r] for r in unmapped["row"]]).drop(columns="row")
    unmapped_path = _write_or_clear(unmapped if len(unmapped) else None, out_dir / UNMAPPED_FILE)
    n_empty = sum(1 for r in kept["report"] if _blank(r)) if "report" in kept.columns else 0
    return IngestResult(
        manifest_path=manifest_path, n_rows=len(kept), n_skipped=0 if skipped_df is None else len(skipped_df),
        skipped_path=skipped_path, per_source=dict(Counter(kept["source"])),
        skipped_by_kind={} if skipped_df is None else dict(Counter(skipped_df["skip_kind"])),
        n_empty_reports=n_empty, n_masks_cleared=n_masks_cleared,
        n_unmapped_rows=int(unmapped["origin"].nunique()) if len(unmapped) else 0,
        unmapped=dict(Counter(unmapped["label"])) if len(unmapped) else {}, unmapped_path=unmapped_path,
        image_check=check, notes=notes)


def _refuse_overwriting_inputs(outputs: list[Path], inputs: list[Path], fmt: str) -> None:
    """An output path that is one of the files ingest reads is an error, before anything is written."""
    for out in outputs:
        for inp in inputs:
            if Path(inp).is_file() and out.exists() and os.path.samefile(out, inp):
                raise ManifestError(
                    f"{out}: is an input of this ingest (--format {fmt} reads it) and would be overwritten; "
                    f"choose another --out folder (e.g. {out.parent / 'ingested'})")


def _write_or_clear(df: pd.DataFrame | None, path: Path) -> Path | None:
    from ..schema import write_table

    if df is not None:
        return write_table(df, path)
    if path.exists():
        path.unlink()  # a stale list from an earlier run would mislead
    return None


def _skipped(rows: pd.DataFrame, kind: str | list[str], reasons: list[str]) -> pd.DataFrame:
    """The skipped rows with every column they had, plus why (``skip_*`` columns)."""
    out = rows.drop(columns=[SKIP]).rename(columns={ORIGIN: "skip_origin"}).reset_index(drop=True)
    out.insert(0, "skip_reason", list(reasons))
    out.insert(0, "skip_kind", [kind] * len(out) if isinstance(kind, str) else list(kind))
    front = list(SKIP_COLUMNS)
    return out[[c for c in out.columns if c not in front] + front]


def _check_images(images: list[str], out_dir: Path, check: str, progress: bool
                  ) -> tuple[np.ndarray, list[tuple[int, int] | None], list[str], list[str]]:
    """Which rows have an existing (and per ``check``, readable) image; kind and reason for the others."""
    keep = np.ones(len(images), dtype=bool)
    sizes: list[tuple[int, int] | None] = [None] * len(images)
    kinds, reasons = [], []
    reader = _image_checker(check)
    rows = range(len(images))
    if progress:
        from tqdm import tqdm
        rows = tqdm(rows, desc="checking images" if check == "none" else f"checking images ({check})", unit="img")
    for i in rows:
        path, kind, reason = os.path.normpath(os.path.join(out_dir, images[i])), None, None
        if not os.path.isfile(path):
            kind, reason = "missing image", f"{path}: no such image file; put it there or drop the row"
        elif reader is not None:
            try:
                sizes[i] = reader(path)
            except CxrfmError as e:
                kind, reason = "unreadable image", str(e)
        if reason is not None:
            keep[i] = False
            kinds.append(kind)
            reasons.append(reason)
    return keep, sizes, kinds, reasons


def _image_checker(check: str) -> Callable[[str], tuple[int, int]] | None:
    from ..images import check_image, read_image

    def decode(path: str) -> tuple[int, int]:
        check_image(path)  # header errors (bombs, volumes) before any pixel is decoded
        _, h, w = read_image(path).shape
        return w, h

    return {"decode": decode, "header": check_image, "none": None}[check]


def _validate(df: pd.DataFrame, where: str) -> pd.DataFrame:
    from ..schema import finding_columns, validate_table

    out = validate_table(df, where=where)
    # validate_table parses numbers as float; write 1 / 0 / -1 and 46 (not 1.0, 46.0) where the
    # values are whole, as the sources ship them.
    for c in finding_columns(out) + [c for c in ("age", "width", "height") if c in out.columns]:
        vals = pd.to_numeric(out[c], errors="coerce")
        if vals.dropna().mod(1).eq(0).all():
            out[c] = vals.astype("Int64")
    return out


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Schema columns first, then the finding columns, then whatever else the source carries."""
    from ..findings import FINDINGS
    from ..schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    first = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *FINDINGS) if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def _rebase(root: Path, rel: str, out_dir: Path) -> str:
    """``root/rel`` relative to ``out_dir`` (POSIX separators); absolute ``rel`` stays where it points."""
    prefix = _relpath_cached(str(root), str(out_dir))
    if prefix is not None and not os.path.isabs(rel):
        return os.path.normpath(os.path.join(prefix, rel)).replace(os.sep, "/")
    try:
        return os.path.relpath(os.path.join(root, rel), out_dir).replace(os.sep, "/")
    except ValueError:  # another drive on Windows: no relative path exists
        return os.path.abspath(os.path.join(root, rel)).replace(os.sep, "/")


@functools.lru_cache(maxsize=8)
def _relpath_cached(root: str, out_dir: str) -> str | None:
    try:
        return os.path.relpath(root, out_dir)
    except ValueError:
        return None


def _drop_exact_duplicates(table: pd.DataFrame, skipped: list[pd.DataFrame]) -> pd.DataFrame:
    cols = [c for c in table.columns if c not in (ORIGIN, SKIP)]
    exact = table.duplicated(subset=cols, keep="first")
    if exact.any():
        first: dict[str, str] = {}
        for i, key in enumerate(table["image"]):
            first.setdefault(key, table[ORIGIN].iat[i])
        reasons = [f"identical to {first[img]}; dropped" for img in table["image"][exact]]
        skipped.append(_skipped(table[exact], "exact duplicate", reasons))
    return table[~exact].reset_index(drop=True)


def _check_columns(table: pd.DataFrame, where: str) -> None:
    from ..schema import REQUIRED_COLUMNS, delimiter_hint

    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        hint = delimiter_hint([c for c in table.columns if c not in (ORIGIN, SKIP)])
        raise ManifestError(f"{where}: missing required column(s) {', '.join(missing)}; a manifest needs "
                            f"{', '.join(REQUIRED_COLUMNS)} (image paths relative to the table's folder){hint}")


def _check_rows(table: pd.DataFrame, strict: bool) -> None:
    """Errors that name the source row (the manifest's own row numbers do not exist yet)."""
    from ..findings import harmonise_row, split_labels
    from ..schema import REQUIRED_COLUMNS, finding_columns

    for c in REQUIRED_COLUMNS:
        for i, v in enumerate(table[c]):
            if _blank(v):
                raise ManifestError(f"{table[ORIGIN].iat[i]}: empty {c!r}; fill it in or drop the row")
    dup = table["image"].duplicated(keep=False)
    if dup.any():
        img = table["image"][dup].iat[0]
        rows = np.flatnonzero((table["image"] == img).to_numpy())
        a, b = table.iloc[rows[0]], table.iloc[rows[1]]
        diff = next(c for c in table.columns if c not in (ORIGIN, SKIP) and not _same(a[c], b[c]))
        raise ManifestError(
            f"{b[ORIGIN]}: image {img!r} is also listed at {a[ORIGIN]} with a different {diff!r} "
            f"({_show(a[diff])} vs {_show(b[diff])}); keep one row per image (merge or delete the duplicates)")
    fcols = finding_columns(table)
    for c in fcols:
        vals = pd.to_numeric(table[c], errors="coerce")
        bad = table[c].notna() & ~table[c].map(_blank) & ~vals.isin([1, 0, -1])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(f"{table[ORIGIN].iat[i]}: column {c!r} holds {table[c].iat[i]!r}; "
                                f"finding columns hold 1, 0, -1 or blank")
    if strict and "labels" in table.columns and not fcols:
        for i, (raw, src) in enumerate(zip(table["labels"], table["source"])):
            try:
                harmonise_row(split_labels(raw), str(src), strict=True)
            except ManifestError as e:
                raise ManifestError(f"{table[ORIGIN].iat[i]}: {e}") from None


def _show(v: object) -> str:
    return "blank" if _blank(v) else repr(v)


def _same(a: object, b: object) -> bool:
    return (_blank(a) and _blank(b)) or a == b
