"""Plain helpers shared by the test modules (fixtures live in conftest.py).

Test modules import from here, never from each other: a test module is free to change its own
helpers without breaking another file's collection.

- :class:`StandInModel`: the dual-encoder contract with fixed random projections (no training), so
  eval tests check a task's arithmetic, not a trained model.
- :func:`subset_manifest`: the first rows of each source of the real manifest.
- :func:`tiny_run` / :func:`tiny_index`: a tiny-cpu run trained once per session on ~100 real CXRs
  (``HELD_OUT`` images excluded), and a retrieval index over its training images.
- :func:`make_tiny_run`: a 1-epoch 32 px tiny-cpu run on 40 rows per source (probe/segmentation/shortcut).
- :func:`tiny_anatomy`: a 32 px U-Net anatomy folder trained ~6 s on 12 real anatomy rows (once per session).
- :func:`png_bytes`, :func:`natural_png`, :func:`bomb_png`, :func:`dicom_without_pixels`: upload bodies.
- :func:`free_port`, :func:`rss_mb`: for the uvicorn subprocess fixture.
"""
from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfm.data.schema import Manifest

TRAIN_ROWS = 100
# real CXRs kept out of tiny_run's training data; the tiny run's gate accepts them
HELD_OUT = ("hmh_0578e08b.png", "hmh_3b46de94.png", "hmh_7b68340a.png", "ccx_16724_1_1.png",
            "ccx_covid-19-pneumonia-40.png")


class StandInModel:
    """Dual-encoder contract with no training: 8x8 average-pooled pixels and hashed bag-of-words,
    each through a fixed random projection to D dimensions."""

    def __init__(self, image_size: int = 32, dim: int = 32, seed: int = 0, vocab: int = 512):
        g = torch.Generator().manual_seed(seed)
        self.image_size = image_size
        self.vocab = vocab
        self.w_img = torch.randn(64, dim, generator=g)
        self.w_txt = torch.randn(vocab, dim, generator=g)
        self.text_calls = 0

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1:] == (1, self.image_size, self.image_size)
        x = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)  # (B, 64)
        x = (x - x.mean(dim=1, keepdim=True)) @ self.w_img  # (B, D)
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        self.text_calls += 1
        bags = torch.zeros(len(texts), self.vocab)
        for i, t in enumerate(texts):
            for tok in t.lower().replace(".", " ").split():
                bags[i, zlib.crc32(tok.encode()) % self.vocab] += 1
        x = bags @ self.w_txt  # (B, D)
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def subset_manifest(path, per_source: int = 50) -> Manifest:
    """First ``per_source`` rows of each source of the real manifest (covid rows carry report text)."""
    m = Manifest.load(path)
    rows = np.concatenate([np.flatnonzero(m.table["source"].to_numpy() == s)[:per_source]
                           for s in sorted(m.table["source"].unique())])
    return m.subset(np.sort(rows))


def with_anatomy_rows(manifest: Manifest, anatomy_manifest_path, n: int = 12) -> Manifest:
    """``manifest`` plus the first ``n`` rows of the anatomy manifest (heart / lung ``mask_<structure>``
    columns, ``ctr_reference``), their paths made absolute, so one table has every kind of data."""
    import pandas as pd

    extra = Manifest.load(anatomy_manifest_path)
    t = extra.table.iloc[:n].copy()
    for c in t.columns:
        if c == "image" or c == "mask" or str(c).startswith("mask_") and c != "mask_source":
            t[c] = [None if not isinstance(v, str) or not v.strip() else str(extra.root / v) for v in t[c]]
    return Manifest.from_table(pd.concat([manifest.table, t], ignore_index=True), manifest.root)


def make_tiny_run(root, manifest_path, cache_dir):
    """Pretrain tiny-cpu for one epoch on 40 rows per source at 32 px; returns the run dir."""
    from cxrfm.train.loop import pretrain

    m = subset_manifest(manifest_path, per_source=40)
    return pretrain(m, root / "run", config="tiny-cpu", curate="none", epochs=1, seed=0,
                    overrides={"image_size": 32}, progress=False, cache_dir=cache_dir)


def tiny_run(tmp_path_factory, shared_data: Path) -> Path:
    """A tiny-cpu run trained 1 epoch on ~100 real CXRs (once per session; ~30 s on 2 cores)."""
    from filelock import FileLock

    root = Path(tmp_path_factory.getbasetemp()) / "serve_tiny"
    root.mkdir(parents=True, exist_ok=True)
    run = root / "run"
    with FileLock(str(root / ".lock")):
        if not (run / "model.safetensors").exists():
            try:
                from cxrfm.train.loop import pretrain
            except ImportError as e:  # pragma: no cover - only while the training layer is missing
                pytest.skip(f"cxrfm.train.loop.pretrain not importable ({e})")
            import pandas as pd

            m = Manifest.load(shared_data / "cxr" / "manifest.csv")
            held = set(HELD_OUT)
            ok = [i for i, p in enumerate(m.table["image"]) if Path(p).name not in held]
            rows = sorted(np.random.default_rng(0).permutation(ok)[:TRAIN_ROWS])
            df = m.table.iloc[rows].copy()
            df["image"] = [str(m.root / p) for p in df["image"]]
            df["mask"] = [str(m.root / p) if isinstance(p, str) and p else "" for p in df["mask"]]
            pd.DataFrame(df).to_csv(root / "train_manifest.csv", index=False)
            pretrain(root / "train_manifest.csv", run, config="tiny-cpu", curate="none", budget=1.0, epochs=1,
                     seed=0, progress=False, cache_dir=root / "cache")
    return run


ANATOMY_STRUCTURES = ("heart", "left_lung", "right_lung")


def tiny_anatomy(tmp_path_factory, shared_data: Path) -> Path:
    """An anatomy folder (``save_anatomy``) with a tiny U-Net (32 px, widths 4/8) trained 60 steps on 12
    training-split rows of the real anatomy data (~6 s on one core); built once per session, then reused.
    Point ``CXRFM_ANATOMY`` (or ``model_dir=``) at it: the shipped weights come later."""
    from filelock import FileLock

    root = Path(tmp_path_factory.getbasetemp()) / "anatomy_tiny"
    root.mkdir(parents=True, exist_ok=True)
    out = root / "tiny-anatomy"
    with FileLock(str(root / ".lock")):
        if not (out / "anatomy.json").exists():
            from cxrfm.data.anatomy import anatomy_split, load_structures
            from cxrfm.models.anatomy_store import save_anatomy
            from cxrfm.train.anatomy import SupervisedSettings, fit_supervised

            n = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                m = Manifest.load(shared_data / "anatomy" / "manifest.csv")
                rows = np.flatnonzero(anatomy_split(m) == "train")[:12]
                imgs, masks = load_structures(m, rows, list(ANATOMY_STRUCTURES))
                net = fit_supervised(imgs, masks, settings=SupervisedSettings(size=32, steps=60, batch_size=4,
                                                                              lr=1e-2), seed=0)
            finally:
                torch.set_num_threads(n)
            save_anatomy(out, unet=net, training={"unet": {"rows": [str(m.table["image"].iloc[r]) for r in rows]}})
    return out


def tiny_index(run: Path) -> Path:
    """A retrieval index over the tiny run's training images (built with the retrieval module)."""
    out = run.parent / "index"
    if (out / "index.json").exists():
        return out
    import pandas as pd

    from cxrfm.models.dual import load_model
    from cxrfm.inference.embed import embed_image_list
    from cxrfm.tasks.retrieval import build_index, save_index

    df = pd.read_csv(run.parent / "train_manifest.csv")
    emb = embed_image_list(load_model(run), list(df["image"])).numpy()
    reports = [r if isinstance(r, str) and r.strip() else f"Labels: {lab}"
               for r, lab in zip(df["report"], df["labels"])]
    save_index(build_index(emb, [Path(p).name for p in df["image"]], reports, {"model": run.name}), out)
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] or uint8 -> PNG bytes."""
    from PIL import Image

    a = arr if arr.dtype == np.uint8 else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def natural_png(name: str = "astronaut") -> bytes:
    from cxrfm.tasks.ood import skimage_image

    return png_bytes(skimage_image(name)[0].numpy())


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header declares side x side pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4)  # a few rows; the rest would inflate to 3.6 GB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_without_pixels() -> bytes:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.Modality, ds.PatientID, ds.SOPInstanceUID = "CR", "x", meta.MediaStorageSOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def spawn_and_join(worker, nprocs: int, args: tuple, limit_s: int = 120) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait at most ``limit_s`` seconds:
    a hung collective fails the test instead of the suite. Spawn, not fork: forking a process whose
    OpenMP pool has run (earlier tests) can deadlock."""
    import torch.multiprocessing as mp

    procs = mp.start_processes(worker, args=args, nprocs=nprocs, start_method="spawn", join=False)
    try:
        for _ in range(limit_s):
            if procs.join(timeout=1):
                break
        else:
            pytest.fail(f"worker processes did not finish within {limit_s} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()


def start_server(cmd: list[str], env: dict, probe_url: str, limit_s: int = 120):
    """Start ``cmd`` (a `cxrfm serve` command line) and wait until ``probe_url`` answers 200; returns the
    process. Raises, with the server's output, when it exits or does not answer within ``limit_s``."""
    import subprocess
    import time

    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(probe_url, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"server did not start within {limit_s} s")
        time.sleep(0.5)


def stop_server(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sampled_shards(shared_data: Path, base: Path, n: int, seed: int, size: int, per_shard: int = 6) -> Path:
    """``n`` real rows that have a training text (drawn with ``seed``), written as BASE/manifest.csv and
    packed by `cxrfm shard` at ``size`` px, ``per_shard`` samples a shard; returns BASE/shards."""
    from cxrfm.cli import main
    from cxrfm.data.pseudo_reports import training_texts

    full = Manifest.load(shared_data / "cxr" / "manifest.csv")
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    rows = np.sort(np.random.default_rng(seed).choice(usable, size=n, replace=False))
    full.subset(rows).save(base / "manifest.csv")
    assert main(["shard", str(base / "manifest.csv"), "--out", str(base / "shards"), "--size", str(size),
                 "--per-shard", str(per_shard), "--no-progress"]) == 0
    return base / "shards"
