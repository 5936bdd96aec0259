"""Evaluation throughput: batched embedding from the image cache vs a per-image loop, the vectorised
patient bootstrap vs a per-resample loop, and batched lung segmentation (cxrfm.tasks.segmentation:
encoder feature maps + light decoder over cached batches) vs a per-image loop of the same model and
decoder. All baselines run in the same process.

    .venv/bin/python benchmarks/bench_eval.py [--n-images 256] [--size 128] [--n-boot 1000]

Embedding and segmentation use an untrained dual encoder built from the default ModelConfig at
``--size`` and, for segmentation, an untrained LightDecoder (the numbers measure compute, not
accuracy; embedding falls back to a pixel-projection stand-in if cxrfm.models is missing, which has
no feature maps, so segmentation is then skipped). Segmentation runs on ``--n-images`` rows that have
a lung mask. The bootstrap runs on the real manifest's Pneumonia labels and patient ids with random
scores; the vectorised and loop paths draw the same resamples and must return the same interval.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from cxrfm import FINDINGS, Manifest, auroc, bootstrap_ci, letterbox, read_image, shared_data_dir  # noqa: E402
from cxrfm.tasks.embed import embed_images, open_image_cache  # noqa: E402


def _model(size: int):
    try:
        from cxrfm.config import ModelConfig
        from cxrfm import build_model

        return build_model(ModelConfig(image_size=size), seed=0).eval(), "DualEncoder (default ModelConfig, untrained)"
    except ImportError:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers import StandInModel

        return StandInModel(image_size=size), "stand-in pixel projection"


def bench_embedding(manifest: Manifest, size: int, batch_size: int) -> None:
    model, what = _model(size)
    torch.manual_seed(0)
    n = len(manifest)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cache = open_image_cache(manifest, size, cache_dir=cache_dir)
        t_build = time.perf_counter() - t0
        embed_images(model, cache, np.arange(min(8, n)), batch_size=8)  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        batched = embed_images(model, cache, batch_size=batch_size)
        t_batched = time.perf_counter() - t0
    paths = manifest.image_paths()
    t0 = time.perf_counter()
    loop = []
    with torch.inference_mode():
        for p in paths:
            x = letterbox(read_image(p), size).unsqueeze(0)  # (1, 1, S, S)
            loop.append(model.encode_image(x, normalize=True).numpy()[0])
    t_loop = time.perf_counter() - t0
    max_diff = float(np.abs(np.stack(loop) - batched).max())
    print(f"embedding, {n} images at {size}px, model: {what}, torch threads: {torch.get_num_threads()}")
    print(f"  cache build (one-off decode): {t_build:6.2f} s  ({n / t_build:7.1f} img/s)")
    print(f"  batched from cache (bs={batch_size}): {t_batched:6.2f} s  ({n / t_batched:7.1f} img/s)")
    print(f"  per-image loop (read + letterbox + encode one at a time): {t_loop:6.2f} s  ({n / t_loop:7.1f} img/s)")
    print(f"  ratio batched/loop: {t_loop / t_batched:5.1f}x;  incl. cache build: {t_loop / (t_batched + t_build):5.1f}x"
          f"  (max |diff| of embeddings {max_diff:.1e}: cache stores uint8 pixels)")


def bench_segmentation(manifest: Manifest, size: int, batch_size: int) -> None:
    from cxrfm import CxrfmError
    from cxrfm.tasks.segmentation import LightDecoder, encoder_feature_maps, extract_features, predict_masks

    model, what = _model(size)
    n = len(manifest)
    try:
        with torch.inference_mode():
            channels = [m.shape[1] for m in encoder_feature_maps(model, torch.zeros((1, 1, size, size)))]
    except CxrfmError as e:
        print(f"segmentation: skipped ({e})")
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the decoder's random init, as train_decoder seeds it
        decoder = LightDecoder(channels).eval()
    rows = np.arange(n)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cache = open_image_cache(manifest, size, cache_dir=cache_dir)
        t_build = time.perf_counter() - t0
        predict_masks(decoder, extract_features(model, cache, rows[:8], batch_size=8), size)  # warm-up
        t0 = time.perf_counter()
        batched = predict_masks(decoder, extract_features(model, cache, rows, batch_size=batch_size), size)
        t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = []
    with torch.inference_mode():
        for p in manifest.image_paths():
            x = letterbox(read_image(p), size).unsqueeze(0)  # (1, 1, S, S)
            logits = decoder(encoder_feature_maps(model, x), size)  # (1, 1, S, S)
            loop.append((torch.sigmoid(logits)[0, 0] > 0.5).numpy())
    t_loop = time.perf_counter() - t0
    agree = float((np.stack(loop) == batched).mean())
    print(f"segmentation, {n} images with a lung mask at {size}px, model: {what} + untrained LightDecoder "
          f"{channels}, torch threads: {torch.get_num_threads()}")
    print(f"  cache build (one-off decode): {t_build:6.2f} s  ({n / t_build:7.1f} img/s)")
    print(f"  batched task path (features bs={batch_size} + decoder): {t_batched:6.2f} s  ({n / t_batched:7.1f} img/s)")
    print(f"  per-image loop (read + letterbox + features + decoder one at a time): {t_loop:6.2f} s  "
          f"({n / t_loop:7.1f} img/s)")
    print(f"  ratio batched/loop: {t_loop / t_batched:5.1f}x;  incl. cache build: {t_loop / (t_batched + t_build):5.1f}x"
          f"  (mask pixels agreeing: {agree:.4f}; the cache stores uint8 pixels, features are kept in float16)")


def bench_bootstrap(manifest: Manifest, n_boot: int) -> None:
    y_all = manifest.labels()[:, FINDINGS.index("Pneumonia")]
    known = ~np.isnan(y_all)
    y = y_all[known]
    groups = manifest.table["patient_id"].to_numpy()[known]
    rng = np.random.default_rng(0)
    s = rng.normal(size=len(y)) + 0.7 * y
    def best_of(repeats: int, metric) -> tuple[float, tuple[float, float]]:
        times, ci = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            ci = bootstrap_ci(y, s, groups, metric=metric, n_boot=n_boot, rng=np.random.default_rng(1))
            times.append(time.perf_counter() - t0)
        return min(times), ci

    bootstrap_ci(y, s, groups, n_boot=10, rng=np.random.default_rng(1))  # warm-up (imports, allocator)
    t_fast, fast = best_of(3, auroc)
    t_loop, loop = best_of(3, lambda a, b: auroc(a, b))
    t_skl, skl = best_of(1, roc_auc_score)
    assert np.allclose(fast, loop) and np.allclose(fast, skl), (fast, loop, skl)
    print(f"patient bootstrap (best of 3; sklearn 1 run), {n_boot} resamples of {len(y)} rows / {len(set(groups))} patients (Pneumonia):")
    print(f"  vectorised: {t_fast:6.3f} s   loop + cxrfm auroc: {t_loop:6.3f} s   loop + sklearn: {t_skl:6.3f} s")
    print(f"  ratio loop/vectorised: {t_loop / t_fast:5.1f}x;  sklearn-loop/vectorised: {t_skl / t_fast:5.1f}x;"
          f"  CI {fast[0]:.4f}-{fast[1]:.4f} identical in all three")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=None, help="default: shared data cxr/manifest.csv")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    path = args.manifest or (shared_data_dir() / "cxr" / "manifest.csv")
    manifest = Manifest.load(path)
    rows = np.random.default_rng(0).choice(len(manifest), size=min(args.n_images, len(manifest)), replace=False)
    bench_embedding(manifest.subset(np.sort(rows)), args.size, args.batch_size)
    bench_bootstrap(manifest, args.n_boot)
    masked = np.flatnonzero(manifest.table["mask"].notna().to_numpy()) if "mask" in manifest.table.columns else []
    if len(masked):
        seg_rows = np.random.default_rng(0).choice(masked, size=min(args.n_images, len(masked)), replace=False)
        bench_segmentation(manifest.subset(np.sort(seg_rows)), args.size, args.batch_size)
    else:
        print("segmentation: skipped (no row of the manifest has a lung mask)")


if __name__ == "__main__":
    main()
