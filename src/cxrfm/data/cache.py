"""Decode every image once: a memory-mapped uint8 cache of letterboxed images (and lung masks).

Training reads the same few thousand radiographs for many epochs; decoding a PNG or a JPEG 2000
DICOM each time costs far more than the model's forward pass on a laptop CPU. As in the
preprocessing step of CheXzero (Tiu et al., Nat. Biomed. Eng. 2022, which writes all MIMIC-CXR
images once into one HDF5 array), ``cxrfm prepare`` decodes each image once with
:func:`~cxrfm.data.images.read_image`, letterboxes it to ``size x size`` and stores
``round(x * 255)`` as uint8 in one ``.npy`` file (N, size, size), opened later with ``mmap_mode="r"``
so that a batch is a slice of the page cache.

A cache is keyed by :meth:`Manifest.content_hash` and ``size`` (both are in the file name), so a
changed manifest never reads a stale cache, and by the size, modification time and inode change
time of every image file it was built from (``files_key`` in the sidecar), so an image replaced in
place is decoded again rather than served stale; building it again with nothing changed is a no-op.
(A stat per file costs milliseconds for thousands of files, where hashing content would re-read
them all.) Files are written to a temporary name and renamed, the JSON sidecar last: a cache whose
sidecar exists is complete; a temp file left by a killed ``prepare`` is removed by the next one
(:mod:`cxrfm.atomic`).

The ``mask`` column is cached the same way (``column="mask"``): the source mask is binarised
(any non-zero pixel is lung), letterboxed with the same geometry as its image and thresholded at
0.5; stored values are 0 / 255. Rows without a mask are all zero and flagged ``has[i] == False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..errors import CxrfmError, ImageReadError
from ..paths import cache_dir as default_cache_dir
from .images import check_image, letterbox, letterbox_geometry, read_image
from .schema import Manifest

# Bump when decoding or letterboxing changes, so old caches are rebuilt instead of silently reused.
CACHE_FORMAT = 1
COLUMNS = ("image", "mask")
_CHUNK = 32  # rows per worker task: large enough to amortise pickling, small enough for a smooth bar


class ImageCache:
    """A read-only (N, S, S) uint8 array of letterboxed images (or masks), row-aligned with a manifest."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.size: int = int(meta["size"])
        self.column: str = meta.get("column", "image")
        self.ids: list[str] = list(meta["ids"])
        self.array: np.ndarray = np.load(self.path, mmap_mode="r")  # np.memmap (N, S, S) uint8, read-only
        self.has: np.ndarray = np.asarray(meta.get("has", [True] * len(self.ids)), dtype=bool)  # (N,)

    # ------------------------------------------------------------ build / open
    @staticmethod
    def file_path(manifest: Manifest, size: int, cache_dir: str | Path | None = None,
                  column: str = "image") -> Path:
        """Where the cache for (manifest content, size, column) lives: ``<dir>/<column>s-<hash>-<size>.npy``."""
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return root / f"{column}s-{manifest.content_hash()}-{int(size)}.npy"

    @classmethod
    def build(cls, manifest: Manifest, size: int, cache_dir: str | Path | None = None,
              workers: int | None = None, progress: bool = False, column: str = "image") -> "ImageCache":
        """Decode every row's ``column`` once (parallel, ``workers`` processes) and return the cache.

        A no-op when a complete cache for this manifest content and size exists. A row that cannot
        be decoded raises :class:`ImageReadError` naming the file and the row; nothing is written.
        """
        if column not in COLUMNS:
            raise CxrfmError(f"cache column must be one of {', '.join(COLUMNS)}, got {column!r}")
        if size < 8:
            raise CxrfmError(f"cache size must be at least 8 pixels, got {size}; use e.g. --size 128")
        path = cls.file_path(manifest, size, cache_dir, column)
        jobs = _jobs(manifest, column)
        files_key = _files_key(jobs)
        existing = _read_sidecar(path)
        if existing is not None and existing.get("format") == CACHE_FORMAT and path.exists() \
                and existing.get("files_key") == files_key:
            return cls(path, existing)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(jobs)
        where = str(manifest.path) if manifest.path else "manifest"

        with atomic_path(path, suffix=".tmp") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
            has = np.zeros(n, dtype=bool)
            with tqdm(total=n, desc=f"decode {column}s", unit="img", disable=not progress) as bar:
                for start, block, block_has in _decode_all(jobs, size, column, where, workers):
                    out[start:start + len(block)] = block
                    has[start:start + len(block)] = block_has
                    bar.update(len(block))
            out.flush()
            del out
        meta = {"format": CACHE_FORMAT, "column": column, "size": int(size), "n": n, "files_key": files_key,
                "manifest_hash": manifest.content_hash(), "manifest": str(manifest.path) if manifest.path else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ids": manifest.ids}
        if column == "mask":
            meta["has"] = [bool(h) for h in has]
        _write_json_atomic(_sidecar(path), meta)
        return cls(path, meta)

    @classmethod
    def open(cls, manifest: Manifest, size: int, cache_dir: str | Path | None = None,
             column: str = "image") -> "ImageCache":
        """Open the cache built for this manifest and size, or raise telling how to build it."""
        path = cls.file_path(manifest, size, cache_dir, column)
        meta = _read_sidecar(path)
        src = manifest.path or "MANIFEST"
        hint = f"run `cxrfm prepare {src} --size {size}" + (f" --cache-dir {cache_dir}`" if cache_dir else "`")
        if meta is None or not path.exists():
            raise CxrfmError(f"{path}: no {column} cache for this manifest (content {manifest.content_hash()}) at "
                             f"size {size}; {hint} first")
        if meta.get("format") != CACHE_FORMAT:
            raise CxrfmError(f"{path}: cache written by another cxrfm version (format {meta.get('format')}, "
                             f"this one reads {CACHE_FORMAT}); delete it and {hint}")
        cache = cls(path, meta)
        if cache.array.shape != (len(manifest), size, size) or cache.ids != manifest.ids:
            raise CxrfmError(f"{path}: cache does not match the manifest ({cache.array.shape[0]} rows vs "
                             f"{len(manifest)}); delete it and {hint}")
        if meta.get("files_key") != _files_key(_jobs(manifest, column)):
            raise CxrfmError(f"{path}: image files of this manifest changed (size or modification time) since the "
                             f"cache was built, so its pixels are stale; {hint} again")
        return cache

    # ------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        """Row ``i`` as a uint8 (S, S) copy (writable, detached from the memory map)."""
        return np.array(self.array[i])

    def batch(self, indices) -> torch.Tensor:
        """Rows ``indices`` as float32 (B, 1, S, S) in [0, 1] (masks: 0 / 1)."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.array[idx])  # (B, S, S) uint8, a copy out of the memory map
        return x.unsqueeze(1).to(torch.float32).div_(255.0)  # (B, 1, S, S)

    def __repr__(self) -> str:
        return f"ImageCache({self.column}s, n={len(self)}, size={self.size}, path={str(self.path)!r})"


# ---------------------------------------------------------------- decoding (runs in worker processes)
def _decode_row(i: int, path: str | None, image_path: str | None, size: int, column: str,
                where: str) -> tuple[np.ndarray, bool]:
    if path is None:
        return np.zeros((size, size), dtype=np.uint8), False
    try:
        x = read_image(path)  # (1, H, W) float32 in [0, 1]
        if column == "mask":
            w, h = check_image(image_path)
            mh, mw = x.shape[1:]
            if letterbox_geometry(mh, mw, size)[:2] != letterbox_geometry(h, w, size)[:2]:
                raise ImageReadError(f"{path}: mask is {mw}x{mh} but its image {image_path} is {w}x{h} (another "
                                     f"aspect ratio), so they cannot be aligned; give a mask drawn on this image")
            x = (letterbox((x > 0).to(torch.float32), size) > 0.5).to(torch.uint8).mul_(255)
            return x[0].numpy(), True
        x = letterbox(x, size)  # (1, S, S)
        return x[0].mul_(255.0).round_().to(torch.uint8).numpy(), True
    except ImageReadError as e:
        raise ImageReadError(f"{e} [{where} row {i + 2}, {column} column]; fix or remove the row, then run "
                             f"`cxrfm prepare` again") from None


def _decode_chunk(jobs: list, size: int, column: str, where: str) -> tuple[int, np.ndarray, np.ndarray]:
    rows = [_decode_row(i, p, ip, size, column, where) for i, p, ip in jobs]
    return jobs[0][0], np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=bool)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already; more threads would oversubscribe


def _decode_all(jobs: list, size: int, column: str, where: str, workers: int | None):
    """Yield (start, uint8 (k, S, S), has (k,)) blocks, in any order."""
    chunks = [jobs[s:s + _CHUNK] for s in range(0, len(jobs), _CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    if workers <= 1:
        for c in chunks:
            yield _decode_chunk(c, size, column, where)
        return
    # fork (Linux) needs no `if __name__ == "__main__"` guard in user scripts; children run torch with one
    # thread (as DataLoader workers do), so they never touch the parent's OpenMP pool.
    ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending = {pool.submit(_decode_chunk, c, size, column, where) for c in chunks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    yield f.result()  # re-raises a worker's ImageReadError here
        finally:
            for f in pending:
                f.cancel()


def _jobs(manifest: Manifest, column: str) -> list[tuple[int, str | None, str | None]]:
    """(row, file to decode, its image for a mask's geometry) for every row."""
    images = [str(p) for p in manifest.image_paths()]
    if column != "mask":
        return [(i, p, None) for i, p in enumerate(images)]
    masks = _mask_paths(manifest)
    if all(m is None for m in masks):
        raise CxrfmError(f"{manifest.path or 'manifest'}: no row has a 'mask'; a mask cache needs a "
                         f"'mask' column with mask paths")
    return [(i, m, images[i]) for i, m in enumerate(masks)]


def _files_key(jobs: list) -> str:
    """Hash of (path, size, mtime, ctime) of every file the cache reads: changes when one is replaced.

    ctime is in because a copy that keeps the old modification time (``cp -p``, ``rsync -a``) still
    gets a new inode change time.
    """
    h = hashlib.sha256()
    for _, p, image in jobs:
        for f in (p, image):
            if f is None:
                h.update(b"-\0")
                continue
            try:
                st = os.stat(f)
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
            except OSError:
                h.update(f"{f}\0missing\0".encode())  # decoding will name the file
    return h.hexdigest()[:16]


def _mask_paths(manifest: Manifest) -> list[str | None]:
    # Read the column directly: pandas' string dtype turns the manifest's None back into NaN.
    col = manifest.table["mask"] if "mask" in manifest.table.columns else [None] * len(manifest)
    return [str(manifest.root / m) if isinstance(m, str) and m.strip() else None for m in col]


# ---------------------------------------------------------------- sidecar
def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json_atomic(path: Path, obj: dict) -> None:
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
