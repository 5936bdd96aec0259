"""An existing manifest table (CSV or Parquet) in the cxrfm schema, e.g. ``shared/data/cxr/manifest.csv``.

The layout is the schema itself (:mod:`cxrfm.data.schema`): ``image`` (and ``mask``) relative to
the table's folder, ``patient_id``, ``source`` and any optional columns. Ingesting one checks every
row, re-bases the paths onto the output folder and drops the rows whose image is missing or
unreadable; it is how a user's own hospital export enters cxrfm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from ..schema import read_table
from .registry import ORIGIN, copy_image, register_layout

TABLE_NAMES = ("manifest.csv", "manifest.parquet")


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """A hospital-style export: ``root/export.csv`` + ``root/images/``, one label spelling per row."""
    labels = ["Pneumonia", "No Finding", "Cardiomegaly;Effusion", "Edema", ""]
    reports = ["Right lower lobe consolidation.", "No acute cardiopulmonary abnormality.",
               "Enlarged heart. Small bilateral effusions.", "", "   "]
    rows = []
    for i, png in enumerate(images):
        copy_image(png, root / "images" / f"img{i}.png")
        rows.append({"image": f"images/img{i}.png", "patient_id": f"p{i // 2}", "source": "my-hospital",
                     "labels": labels[i % len(labels)], "report": reports[i % len(reports)]})
    pd.DataFrame(rows).to_csv(root / "export.csv", index=False)
    return root / "export.csv"


@register_layout("manifest", example=write_example)
def read_rows(src: Path) -> pd.DataFrame:
    """Rows of the table at ``src`` (a .csv/.parquet file, or a folder holding manifest.csv/.parquet)."""
    path = Path(src)
    if path.is_dir():
        found = [path / n for n in TABLE_NAMES if (path / n).is_file()]
        if not found:
            raise ManifestError(f"{path}: folder has no {' or '.join(TABLE_NAMES)}; give the table's path "
                                f"(cxrfm ingest path/to/table.csv --format manifest ...)")
        path = found[0]
    df = read_table(path)
    if df.empty and len(df.columns) == 0:
        raise ManifestError(f"{path}: empty table; expected a header with image, patient_id, source")
    df.columns = [str(c).strip() for c in df.columns]
    for col in ("image", "mask"):
        if col in df.columns:
            # Windows exports write backslashes; the manifest stores POSIX-style relative paths.
            df[col] = [v.strip().replace("\\", "/") if isinstance(v, str) else v for v in df[col]]
    for col in ("patient_id", "source"):
        if col in df.columns:
            df[col] = [v.strip() if isinstance(v, str) else v for v in df[col]]
    parquet = path.suffix.lower() in {".parquet", ".pq"}
    # CSV rows are named by their line in the file (header = line 1), as an editor shows them.
    df[ORIGIN] = [f"{path} row {i + 1}" if parquet else f"{path} line {i + 2}" for i in range(len(df))]
    df.attrs["inputs"] = [path]
    return df
