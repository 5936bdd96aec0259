"""Decoding files every epoch vs reading the decoded-image cache (``cxrfm prepare``).

Baseline: ``read_image`` + ``letterbox`` per image in one process (what a loader without a cache does
every epoch). Compared: ``ImageCache.batch`` over random batches of 64 from the memory-mapped cache
built from the same images. Both are measured in this run on the same machine; the ratio is what
to quote. Data: the real CXR set (``$CXRFM_DATA`` or ``../shared/data``), a seeded random sample of
``--limit`` rows so that all four sources (and their image sizes) are represented.

    python benchmarks/bench_decode.py --limit 400 --size 128
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from cxrfm import ImageCache, Manifest, letterbox, read_image, shared_data_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=400, help="images to decode (default 400)")
    ap.add_argument("--size", type=int, default=128, help="letterbox side (default 128)")
    ap.add_argument("--batch", type=int, default=64, help="cache batch size (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = shared_data_dir()
    if data is None:
        print("real data not found: set CXRFM_DATA", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # both sides single-threaded: the comparison is per core
    rng = np.random.default_rng(args.seed)
    full = Manifest.load(data / "cxr" / "manifest.csv")
    rows = np.sort(rng.choice(len(full), size=min(args.limit, len(full)), replace=False))
    manifest = full.subset(rows)
    paths = manifest.image_paths()
    n = len(paths)

    read_image(paths[0])  # warm imports outside the timed loop
    t = time.perf_counter()
    for p in paths:
        letterbox(read_image(p), args.size)
    decode_s = time.perf_counter() - t
    decode_rate = n / decode_s

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        cache = ImageCache.build(manifest, args.size, cache_dir=d, workers=1)
        build_s = time.perf_counter() - t
        order = rng.permutation(n)
        batches = [order[i:i + args.batch] for i in range(0, n, args.batch)]
        reps = 0
        t = time.perf_counter()
        while time.perf_counter() - t < 1.0 or reps < 3:  # >= 1 s of reads for a stable rate
            for b in batches:
                cache.batch(b)
            reps += 1
        cache_s = time.perf_counter() - t
        cache_rate = reps * n / cache_s

    rg1 = data / "dicom" / "RG1_J2KI.dcm"
    dicom_line = ""
    if rg1.exists():
        read_image(rg1)
        t = time.perf_counter()
        for _ in range(3):
            letterbox(read_image(rg1), args.size)
        dicom_line = (f"DICOM RG1_J2KI (1955x1841 JPEG 2000): {3 / (time.perf_counter() - t):.1f} images/s "
                      f"(read_image + letterbox)\n")

    print(f"images: {n} real PNGs (seed {args.seed}), letterbox {args.size}x{args.size}, 1 thread")
    print(f"decode files  (read_image + letterbox): {decode_rate:9.1f} images/s  ({decode_s:.2f} s)")
    print(f"build cache   (workers=1, once)        : {n / build_s:9.1f} images/s  ({build_s:.2f} s)")
    print(f"read cache    (batches of {args.batch}, random): {cache_rate:9.1f} images/s  ({reps} passes)")
    print(f"{dicom_line}ratio cache / decode: {cache_rate / decode_rate:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
