"""Tar shards in the WebDataset layout, written and read with the standard library (``cxrfm shard``).

A manifest of millions of rows does not fit the one-memmap cache of :mod:`.cache` on every node, and
object stores serve large sequential files far better than millions of small ones. So, as WebDataset
(Aizman et al. 2020) and open_clip's training data do, samples are packed into tar files read
front to back: each sample is ``<key>.png`` (the image, letterboxed to ``size`` and stored as 8-bit
grey, lossless) followed by ``<key>.json`` (row, id, patient, source, report, labels). ``tarfile``
writes them, so no ``webdataset`` release can break the format (one has broken open_clip before); any
WebDataset reader reads them.

The folder::

    SHARDS/index.json         format, size, per shard: name, count, first_row, bytes, sha256 (the commit point)
    SHARDS/manifest.parquet   the manifest rows in shard order, without pixels (texts and labels for
                              curators that need every row's text before the first batch); its
                              ``image`` column keeps the source ids, the paths are not read again
    SHARDS/shard-000000.tar   samples first_row .. first_row + count - 1, in manifest order

Row ``p`` of ``manifest.parquet`` is sample key ``p`` (nine digits) in the shard whose range holds it.
Opening checks that every indexed shard is present with its size (a truncated copy is caught before
training) and that no ``.tar`` is in the folder without being indexed; :meth:`ShardSet.verify` also
checks the sha256. Reading a shard checks each sample has its image and its json.

How ranks and loader workers stream the shards is :mod:`cxrfm.train.shard_stream`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import ManifestError
from .schema import Manifest, write_table

FORMAT = "cxrfm-shards"
VERSION = 1
INDEX = "index.json"
TABLE = "manifest.parquet"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class ShardError(ManifestError):
    """A shard folder is incomplete, altered or inconsistent with its index."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int
    first_row: int
    bytes: int
    sha256: str


def sample_key(row: int) -> str:
    """WebDataset keys may not contain dots; the row number, zero-padded, sorts like the rows."""
    return f"{int(row):09d}"


def is_shard_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / INDEX).is_file()


# ------------------------------------------------------------------ writing
def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: same input, same bytes, same hash
    tar.addfile(info, io.BytesIO(data))


def _png_bytes(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _sample_json(manifest: Manifest, row: int, labels: np.ndarray) -> bytes:
    from .findings import FINDINGS

    t = manifest.table.iloc[row]
    rec = {"row": int(row), "id": str(t["image"]), "patient_id": str(t["patient_id"]), "source": str(t["source"]),
           "report": None if "report" not in t or not isinstance(t["report"], str) else t["report"],
           "labels": {f: float(v) for f, v in zip(FINDINGS, labels) if not np.isnan(v)}}
    if "split" in manifest.table.columns:
        rec["split"] = str(t["split"])
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shards(manifest: Manifest | str | Path, out: str | Path, size: int = 256, per_shard: int = 2000,
                 progress: bool = False) -> Path:
    """Write ``manifest``'s images and metadata as tar shards into the new folder ``out``; returns ``out``.

    Images are decoded with :func:`~cxrfm.data.images.read_image` and letterboxed to ``size`` (as the
    cache does). Each shard is written to a temp name and renamed; ``index.json`` comes last, so a
    folder with an index is complete.
    """
    from tqdm.auto import tqdm

    from .images import letterbox, read_image

    manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    out = Path(out)
    if int(size) < 8 or int(per_shard) < 1:
        raise ShardError(f"--size {size} / --per-shard {per_shard}: the side must be >= 8 px and a shard must "
                         f"hold at least 1 sample (e.g. --size 256 --per-shard 2000)")
    if (out / INDEX).exists():
        raise ShardError(f"{out}: already holds shards ({INDEX}); choose another --out or delete the folder")
    out.mkdir(parents=True, exist_ok=True)
    labels = manifest.labels()
    paths = manifest.image_paths()
    where = manifest.path or "manifest"
    shards: list[dict] = []
    bar = tqdm(total=len(manifest), unit="image", disable=not progress, desc="shard")
    for first in range(0, len(manifest), int(per_shard)):
        rows = range(first, min(first + int(per_shard), len(manifest)))
        name = f"shard-{len(shards):06d}.tar"
        with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows:
                try:
                    x = letterbox(read_image(paths[row]), int(size))  # (1, S, S) in [0, 1]
                except ManifestError:
                    raise
                except Exception as e:  # ImageReadError and friends: name the row
                    raise ShardError(f"{e} [{where} row {row + 2}]; fix or remove the row, then run "
                                     f"`cxrfm shard` again") from None
                gray = x[0].mul(255.0).round().to(torch.uint8).numpy()
                _tar_member(tar, sample_key(row) + ".png", _png_bytes(gray))
                _tar_member(tar, sample_key(row) + ".json", _sample_json(manifest, row, labels[row]))
                bar.update(1)
        path = out / name
        shards.append({"name": name, "count": len(rows), "first_row": first, "bytes": path.stat().st_size,
                       "sha256": _sha256(path)})
    bar.close()
    # The rows as they are: ``image`` stays the row id (curation.json's kept ids, training_data.json match
    # the source manifest's); the paths are not read again, the pixels are in the shards.
    write_table(manifest.table, out / TABLE)
    index = {"format": FORMAT, "version": VERSION, "size": int(size), "n_samples": len(manifest),
             "manifest_hash": manifest.content_hash(), "shards": shards}
    with atomic_path(out / INDEX) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------ reading
class ShardSet:
    """An opened, checked shard folder: its index, its manifest and sample access."""

    def __init__(self, folder: Path, index: dict):
        self.folder, self.index = folder, index
        self.size: int = int(index["size"])
        self.shards = [ShardInfo(**s) for s in index["shards"]]
        self.n_samples = int(index["n_samples"])
        self.first_rows = np.array([s.first_row for s in self.shards], dtype=np.int64)  # (n_shards,)
        self._members: dict[int, dict[str, tuple[int, int, int, int]]] = {}

    @classmethod
    def open(cls, folder: str | Path) -> "ShardSet":
        folder = Path(folder)
        path = folder / INDEX
        if not path.is_file():
            raise ShardError(f"{folder}: no {INDEX}; give a folder written by `cxrfm shard` (or finish writing it)")
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index.get("format") != FORMAT:
                raise ValueError(f"format {index.get('format')!r}, not {FORMAT!r}")
            shards = index["shards"]
            fields = [{k: s[k] for k in ("name", "count", "first_row", "bytes", "sha256")} for s in shards]
        except (ValueError, KeyError, TypeError) as e:
            raise ShardError(f"{path}: not a cxrfm shard index ({e}); write the shards again with `cxrfm shard`") from e
        index = {**index, "shards": fields}
        listed = {s["name"] for s in fields}
        for s in fields:
            p = folder / s["name"]
            if not p.is_file():
                raise ShardError(f"{p}: listed in {INDEX} but missing; copy the shard back or write the shards "
                                 f"again with `cxrfm shard`")
            if p.stat().st_size != s["bytes"]:
                raise ShardError(f"{p}: {p.stat().st_size} bytes, but {INDEX} says {s['bytes']} (truncated or "
                                 f"altered); copy the shard again or write the shards again with `cxrfm shard`")
        extra = sorted(p.name for p in folder.glob("*.tar") if p.name not in listed)
        if extra:
            raise ShardError(f"{folder / extra[0]}: a shard not listed in {INDEX} ({len(extra)} such); it would be "
                             f"silently ignored. Remove it, or write the folder again with `cxrfm shard`")
        expect = 0
        for s in fields:
            if s["first_row"] != expect:
                raise ShardError(f"{path}: shard {s['name']} starts at row {s['first_row']}, expected {expect}; "
                                 f"write the shards again with `cxrfm shard`")
            expect += s["count"]
        if expect != index.get("n_samples"):
            raise ShardError(f"{path}: shards hold {expect} samples but n_samples is {index.get('n_samples')}")
        return cls(folder, index)

    def digest(self) -> str:
        """Hash of the index: two ranks (or a run and its resume) agree on the data when it matches."""
        return hashlib.sha256(json.dumps(self.index, sort_keys=True).encode()).hexdigest()[:16]

    def verify(self) -> None:
        """Check every shard's sha256 against the index (reads all bytes)."""
        for s in self.shards:
            got = _sha256(self.folder / s.name)
            if got != s.sha256:
                raise ShardError(f"{self.folder / s.name}: sha256 {got[:12]}... differs from {INDEX} "
                                 f"({s.sha256[:12]}...); the file was altered: copy it again")

    def manifest(self) -> Manifest:
        m = Manifest.load(self.folder / TABLE)
        if len(m) != self.n_samples:
            raise ShardError(f"{self.folder / TABLE}: {len(m)} rows for {self.n_samples} samples in {INDEX}; "
                             f"write the shards again with `cxrfm shard`")
        return m

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """Shard number of each global row."""
        return np.searchsorted(self.first_rows, np.asarray(rows, dtype=np.int64), side="right") - 1

    # -------------------------------------------------------------- sequential
    def iter_raw(self, shard: int, wanted: np.ndarray | None = None) -> Iterator[tuple[int, bytes, str]]:
        """(row, image bytes, image ext) of one shard in order; rows with ``wanted[row] == False`` are read
        past without being returned (nothing is decoded here)."""
        info = self.shards[shard]
        path = self.folder / info.name
        seen = 0
        try:
            with tarfile.open(path, "r:") as tar:
                for key, parts in _group_members(tar, path):
                    row = int(key)
                    seen += 1
                    if wanted is not None and not wanted[row]:
                        continue
                    ext, data = parts
                    yield row, data, ext
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ShardError(f"{path}: cannot be read as a tar after {seen} samples ({e}); the file is truncated "
                             f"or damaged: copy it again or write the shards again with `cxrfm shard`") from None
        if seen != info.count:
            raise ShardError(f"{path}: holds {seen} samples, {INDEX} says {info.count}; write the shards again "
                             f"with `cxrfm shard`")

    # -------------------------------------------------------------- random access (curators' embed)
    def read_rows(self, rows) -> list[tuple[bytes, str]]:
        """Image bytes of arbitrary rows, by seeking to their tar members (for a curator's ``embed``)."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list = [None] * len(rows)
        where = self.shard_of(rows)
        for shard in np.unique(where):  # one open per shard, reads in file order
            members = self._member_table(int(shard))
            path = self.folder / self.shards[shard].name
            with open(path, "rb") as f:
                for i in sorted(np.flatnonzero(where == shard), key=lambda j: rows[j]):
                    key = sample_key(int(rows[i]))
                    if key not in members:
                        raise ShardError(f"{path}: no sample {key}; write the shards again with `cxrfm shard`")
                    offset, size, ext = members[key]
                    f.seek(offset)
                    out[i] = (f.read(size), ext)
        return out

    def _member_table(self, shard: int) -> dict:
        if shard not in self._members:
            path = self.folder / self.shards[shard].name
            table = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for m in tar.getmembers():  # headers only: tarfile seeks past the data
                        key, ext = os.path.splitext(m.name)
                        if ext.lower() in IMAGE_EXTS:
                            table[key] = (m.offset_data, m.size, ext.lower())
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ShardError(f"{path}: cannot be read as a tar ({e}); copy it again or write the shards "
                                 f"again with `cxrfm shard`") from None
            self._members[shard] = table
        return self._members[shard]


def _group_members(tar: tarfile.TarFile, path: Path) -> Iterator[tuple[str, tuple[str, bytes]]]:
    """(key, (image ext, image bytes)) per sample; a sample's files are adjacent (the WebDataset rule)."""
    key, image, has_json = None, None, False

    def finish():
        if image is None or not has_json:
            what = "image (.png/.jpg)" if image is None else ".json"
            raise ShardError(f"{path}: sample {key} has no {what}; every sample needs both: write the shards "
                             f"again with `cxrfm shard`")
        return key, image

    for m in tar:
        if not m.isfile():
            continue
        k, ext = os.path.splitext(m.name)
        ext = ext.lower()
        if k != key:
            if key is not None:
                yield finish()
            key, image, has_json = k, None, False
        if ext in IMAGE_EXTS:
            image = (ext, tar.extractfile(m).read())
        elif ext == ".json":
            tar.extractfile(m).read()  # read (checks the bytes are there) but not parsed: the table holds it
            has_json = True
    if key is not None:
        yield finish()


def decode_gray(data: bytes, ext: str, size: int, where: str = "shard") -> torch.Tensor:
    """(1, size, size) uint8 from a stored image; resized (letterboxed) only when the shards' size differs,
    so shards written at the training size cost a PNG decode and nothing else."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except Exception as e:  # a damaged member: name it
        raise ShardError(f"{where}: the stored {ext} does not decode ({e}); write the shards again") from None
    if arr.shape == (size, size):
        return torch.from_numpy(arr.copy())[None]
    from .images import letterbox

    x = letterbox(torch.from_numpy(arr.copy()).to(torch.float32).div_(255.0)[None], size)  # (1, S, S)
    return x.mul_(255.0).round_().to(torch.uint8)


def decode_sample(data: bytes, ext: str, size: int, where: str = "shard") -> torch.Tensor:
    """(1, size, size) float32 in [0, 1] from a stored image (see :func:`decode_gray`)."""
    return decode_gray(data, ext, size, where).to(torch.float32).div_(255.0)
