"""The latent cache: every image's autoencoder latents, 8-bit, in one memory-mapped array.

The counterpart of :mod:`.cache` (the decoded-pixel cache) for training on latents: one ``.npy`` of
shape (N, C, h, w) uint8 plus a JSON sidecar, opened with ``mmap_mode="r"`` so a batch is a slice of the
page cache. It is keyed by content like the pixel cache: the manifest's content hash, the autoencoder's
hash (the first 16 hex digits of its weights' sha256) and the pixel side are in the file name
(``latents-<manifest>-<ae>-<size>.npy``), and the sidecar repeats them with the image files' stat key, so
a cache from another autoencoder, another manifest or replaced images is refused with the fix.

Latents are normalised per channel by the autoencoder (about unit variance), so one fixed range serves
every channel: values are clamped to [-4, 4] and stored as ``round((z + 4) / 8 * 255)`` (a step of 0.031
standard deviations); the fraction of clamped values is recorded. The storage ratio is the pixel cache's
bytes (``size * size`` per image) over the latent bytes (``C * h * w``): ``factor ** 2 / channels``.

This module stores and reads; encoding images needs the autoencoder (models layer):
:func:`cxrfm.models.latent_tower.encode_manifest` writes caches through :class:`LatentCacheWriter`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CxrfmError
from ..paths import cache_dir as default_cache_dir
from .cache import _files_key, _jobs
from .schema import Manifest

LATENT_FORMAT = 1
RANGE = 4.0  # latents are stored clamped to [-RANGE, RANGE] standard deviations


class LatentCacheError(CxrfmError):
    """A latent cache is missing, stale, damaged or from another autoencoder."""


def latent_cache_path(manifest: Manifest, ae_hash: str, size: int, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"latents-{manifest.content_hash()}-{ae_hash}-{int(size)}.npy"


def quantise(z: torch.Tensor) -> np.ndarray:
    """(B, C, h, w) float latents -> uint8 codes."""
    q = ((z.float().clamp(-RANGE, RANGE) + RANGE) * (255.0 / (2 * RANGE))).round_()
    return q.to(torch.uint8).cpu().numpy()


def dequantise(q: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(q)
    return t.to(torch.float32).mul_(2 * RANGE / 255.0).sub_(RANGE)


def round_trip(ae, pixels: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, S, S) pixels in [0, 1] -> ``ae``'s reconstruction from the 8-bit codes this cache stores (encode,
    quantise, dequantise, decode), clamped to [0, 1]: what a latent run's images look like decoded.
    ``latents``: ``ae.encode(pixels)`` when the caller has it already (the encoder then does not run again)."""
    z = ae.encode(pixels) if latents is None else latents
    return ae.decode(dequantise(quantise(z)).to(pixels.device)).clamp(0, 1)


def _sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def _hint(manifest: Manifest | None, ae: str | None) -> str:
    return f"run `cxrfm compress encode --ae {ae or 'AE'} --data {(manifest.path if manifest else None) or 'MANIFEST'}`"


class LatentCache:
    """A read-only (N, C, h, w) uint8 latent array, row-aligned with a manifest."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.ae_hash: str = meta["ae_hash"]
        self.size, self.factor, self.channels = int(meta["size"]), int(meta["factor"]), int(meta["channels"])
        self.ids: list[str] = list(meta["ids"])
        try:
            self.array: np.ndarray = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise LatentCacheError(f"{self.path}: unreadable ({e}); delete it and {_hint(None, meta.get('ae'))} "
                                   f"again") from None
        side = self.size // self.factor
        if self.array.shape != (len(self.ids), self.channels, side, side) or self.array.dtype != np.uint8:
            raise LatentCacheError(f"{self.path}: holds {self.array.shape} {self.array.dtype}, but its sidecar says "
                                   f"{len(self.ids)} x {self.channels} x {side} x {side} uint8 (a damaged or "
                                   f"unfinished file); delete it and {_hint(None, meta.get('ae'))} again")

    @classmethod
    def open(cls, path: str | Path, ae_hash: str, manifest: Manifest | None = None) -> "LatentCache":
        """Open the cache at ``path``, refusing one written by another autoencoder or for another manifest."""
        path = Path(path)
        try:
            meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            meta = None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatentCacheError(f"{_sidecar(path)}: damaged ({e}); delete {path} and {_hint(manifest, None)} "
                                   f"again") from None
        if meta is None or not path.exists():
            raise LatentCacheError(f"{path}: no latent cache there; {_hint(manifest, None)} first")
        if meta.get("format") != LATENT_FORMAT:
            raise LatentCacheError(f"{path}: written by another cxrfm version (format {meta.get('format')}); delete "
                                   f"it and {_hint(manifest, meta.get('ae'))} again")
        if meta.get("ae_hash") != ae_hash:
            raise LatentCacheError(f"{path}: latents of another autoencoder (hash {meta.get('ae_hash')}, "
                                   f"{meta.get('ae')}), not of this one (hash {ae_hash}); their codes mean nothing "
                                   f"to it. Encode the data with this autoencoder: {_hint(manifest, None)}")
        cache = cls(path, meta)
        if manifest is not None:
            if cache.ids != manifest.ids:
                raise LatentCacheError(f"{path}: written for another manifest ({len(cache.ids)} rows, content "
                                       f"{meta.get('manifest_hash')}; this one has {len(manifest)}, content "
                                       f"{manifest.content_hash()}); {_hint(manifest, meta.get('ae'))}")
            if meta.get("files_key") != _files_key(_jobs(manifest, "image")):
                raise LatentCacheError(f"{path}: image files of this manifest changed since the latents were "
                                       f"written, so they are stale; {_hint(manifest, meta.get('ae'))} again")
        return cache

    def __len__(self) -> int:
        return self.array.shape[0]

    def batch(self, indices) -> torch.Tensor:
        """Rows ``indices`` as float32 (B, C, h, w) latents (dequantised)."""
        return dequantise(self.array[np.asarray(indices, dtype=np.int64)])

    @property
    def storage_ratio(self) -> float:
        return float(self.meta["storage"]["ratio"])

    def __repr__(self) -> str:
        return (f"LatentCache(n={len(self)}, factor={self.factor}, channels={self.channels}, size={self.size}, "
                f"ae={self.ae_hash}, ratio={self.storage_ratio:.1f}x)")


class LatentCacheWriter:
    """Write a latent cache block by block; :meth:`close` writes the sidecar (the commit point)."""

    def __init__(self, path: Path, manifest: Manifest, ae_hash: str, ae_path: str, size: int, factor: int,
                 channels: int):
        self.path, self.manifest = Path(path), manifest
        side = int(size) // int(factor)
        self.meta = {"format": LATENT_FORMAT, "ae_hash": ae_hash, "ae": ae_path, "size": int(size),
                     "factor": int(factor), "channels": int(channels), "n": len(manifest),
                     "manifest_hash": manifest.content_hash(),
                     "manifest": str(manifest.path) if manifest.path else None,
                     "files_key": _files_key(_jobs(manifest, "image")), "ids": manifest.ids}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ctx = atomic_path(self.path, suffix=".tmp")
        tmp = self._ctx.__enter__()
        self.out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                             shape=(len(manifest), int(channels), side, side))
        self.clipped = 0
        self.values = 0

    def write(self, start: int, z: torch.Tensor) -> None:
        """Rows ``start:start+len(z)`` from float latents (B, C, h, w)."""
        self.clipped += int((z.abs() > RANGE).sum())
        self.values += z.numel()
        self.out[start:start + len(z)] = quantise(z)

    def close(self) -> LatentCache:
        self.out.flush()
        del self.out
        self._ctx.__exit__(None, None, None)  # renames the finished array into place
        pixel = self.meta["size"] ** 2
        latent = self.meta["channels"] * (self.meta["size"] // self.meta["factor"]) ** 2
        self.meta.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         clipped_fraction=self.clipped / max(self.values, 1),
                         storage={"pixel_bytes_per_image": pixel, "latent_bytes_per_image": latent,
                                  "ratio": pixel / latent})
        with atomic_path(_sidecar(self.path), suffix=".tmp") as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.meta, f)
        return LatentCache(self.path, self.meta)

    def abort(self) -> None:
        del self.out
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
