"""An exact cosine-similarity index over image embeddings, with each row's id and report.

Search is exact inner product on L2-normalised embeddings (cosine similarity) with FAISS
``IndexFlatIP`` (Johnson et al., "Billion-scale similarity search with GPUs", 2017). ``cxrfm index``
writes one; ``serve`` and the report task read the nearest training studies from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..data.schema import read_table, write_table
from ..errors import CxrfmError, RunDirError

if TYPE_CHECKING:
    import faiss

INDEX_FILE, ITEMS_FILE, META_FILE = "index.faiss", "items.csv", "index.json"


def _normalized(x: np.ndarray) -> np.ndarray:
    import faiss

    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).copy()
    if x.ndim != 2:
        raise CxrfmError(f"embeddings must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise CxrfmError("embeddings contain NaN/inf; the model output is not usable — check the checkpoint")
    faiss.normalize_L2(x)
    return x


@dataclass
class EmbeddingIndex:
    """Normalised embeddings in a FAISS inner-product index, with each row's id and report."""

    index: "faiss.Index"
    ids: list[str]
    reports: list[str | None]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarities and row numbers, each (Q, min(k, len)), best first."""
        q = _normalized(queries)
        if q.shape[1] != self.dim:
            raise CxrfmError(f"query dimension {q.shape[1]} != index dimension {self.dim}; "
                             f"use the model the index was built with ({self.meta.get('model', 'see index.json')})")
        return self.index.search(q, min(int(k), len(self)))

    def save(self, path: str | Path) -> Path:
        return save_index(self, path)


def build_index(embeddings: np.ndarray, ids: Sequence[str], reports: Sequence[str | None] | None = None,
                meta: dict | None = None) -> EmbeddingIndex:
    """An exact cosine-similarity index over ``embeddings`` (N, D) (normalised here), rows named by ``ids``."""
    import faiss

    x = _normalized(embeddings)
    ids = [str(i) for i in ids]
    if len(ids) != len(x):
        raise CxrfmError(f"build_index: {len(ids)} ids for {len(x)} embeddings")
    reports = list(reports) if reports is not None else [None] * len(ids)
    if len(reports) != len(ids):
        raise CxrfmError(f"build_index: {len(reports)} reports for {len(ids)} embeddings")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return EmbeddingIndex(index, ids, reports, dict(meta or {}))


def save_index(index: EmbeddingIndex, path: str | Path) -> Path:
    """Write ``DIR/index.faiss`` + ``items.csv`` (id, report) + ``index.json`` (meta); each file atomically."""
    import faiss

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / INDEX_FILE) as tmp:
        faiss.write_index(index.index, tmp)
    write_table(pd.DataFrame({"id": index.ids, "report": index.reports}), path / ITEMS_FILE)
    meta = {**index.meta, "n": len(index), "dim": index.dim, "metric": "cosine (inner product of L2-normalised)"}
    with atomic_path(path / META_FILE) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def load_index(path: str | Path) -> EmbeddingIndex:
    """Read an index written by :func:`save_index` (``cxrfm index``)."""
    import faiss

    path = Path(path)
    missing = [f for f in (INDEX_FILE, ITEMS_FILE, META_FILE) if not (path / f).exists()]
    if missing:
        raise RunDirError(f"{path}: not an index folder (missing {', '.join(missing)}); build one with "
                          f"`cxrfm index --model RUN --data MANIFEST --out {path}`")
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
        items = read_table(path / ITEMS_FILE)
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if "id" not in items.columns:
            raise ValueError(f"{ITEMS_FILE} has no `id` column")
    except (RuntimeError, ValueError, OSError, CxrfmError) as e:  # faiss raises RuntimeError on a bad file
        raise RunDirError(f"{path}: unreadable index ({type(e).__name__}: {str(e).splitlines()[0][:160]}); rebuild "
                          f"it with `cxrfm index --model RUN --data MANIFEST --out {path}`") from e
    if index.ntotal != len(items):
        raise RunDirError(f"{path}: {INDEX_FILE} holds {index.ntotal} vectors but {ITEMS_FILE} {len(items)} rows; "
                          f"rebuild the index")
    reports = [r if isinstance(r, str) and r else None for r in items["report"]] if "report" in items else None
    return EmbeddingIndex(index, [str(i) for i in items["id"]], reports or [None] * len(items), meta)
