"""Anatomy speed on this machine: few-shot inference per query (supports cached vs not), and training
images/s of the supervised U-Net vs the frozen-encoder decoder baseline, measured in the same run.

1. Few-shot: the in-context segmenter (``cxrfm.models.anatomy_nets.InContextSegmenter``: ``--model-dir``,
   else the shipped folder, else random weights at the default configuration; the time does not depend
   on the weights, only on the input side, ``--net-size`` for another), ``--k`` supports and
   ``--queries`` query images of ``--size`` px from the anatomy data. ``cached``:
   ``cxrfm.inference.anatomy.FewShot`` encodes the supports once and every query costs one
   ``segment_cached``; ``uncached``: ``cxrfm.inference.anatomy.segment`` per query (the supports are
   encoded again each time). Medians over the queries, after one warm-up each.
2. Training: ``fit_supervised`` (the U-Net, end to end at ``--unet-size`` px, batch 8) against the
   segmentation task's ``LightDecoder`` trained on a frozen scratch image tower's feature maps (the
   ``--config`` preset's architecture, random weights, ``build_scratch_image_tower``): the decoder's
   images/s with the features precomputed, and with the one encoder pass per image counted too
   (spread over ``--decoder-epochs`` epochs, as the task runs it).

Prints the ratios (cached / uncached, U-Net / decoder); no times are asserted. Under 3 min on 2 idle
cores with the defaults; ``--quick`` is a smoke run (seconds).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/anatomy.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from cxrfm import CxrfmError, Manifest, letterbox, load_config, shared_data_dir
from cxrfm.data.anatomy import load_structures, mask_to_input
from cxrfm.inference.anatomy import FewShot, segment
from cxrfm.models import build_scratch_image_tower
from cxrfm.models.anatomy_nets import InContextConfig, InContextSegmenter
from cxrfm.models.anatomy_store import default_anatomy_dir, load_incontext
from cxrfm.tasks.segmentation import DecoderSettings, extract_features, train_decoder
from cxrfm.train.anatomy import SupervisedSettings, fit_supervised


def images_and_masks(n: int, size: int, seed: int) -> tuple[list[torch.Tensor], list[np.ndarray], str]:
    """``n`` (1, size, size) images with a heart mask each: the anatomy data if present, else synthetic."""
    data = shared_data_dir()
    path = data / "anatomy" / "manifest.csv" if data is not None else None
    if path is not None and path.is_file():
        m = Manifest.load(path)
        rows = np.random.default_rng(seed).choice(len(m), size=min(n, len(m)), replace=False)
        imgs, masks = load_structures(m, rows, ["heart"])
        out_i = [letterbox(im, size) for im in imgs]
        out_m = [(mask_to_input(mk, size)[0] > 0.5).numpy() for mk in masks["heart"]]
        reps = -(-n // len(out_i))
        return (out_i * reps)[:n], (out_m * reps)[:n], f"{len(rows)} anatomy images ({path})"
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(1, size, size, generator=g) for _ in range(n)]
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size * 0.6) ** 2 + (xx - size * 0.55) ** 2 < (size * 0.2) ** 2
    return imgs, [mask] * n, "synthetic noise images (no anatomy data found: set CXRFM_DATA)"


def _median_ms(fn, items) -> float:
    fn(items[0])  # warm-up
    times = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def fewshot_net(a) -> tuple[InContextSegmenter, str]:
    """``--model-dir``, else a random net at ``--net-size``, else the shipped model, else a random default one."""
    if a.model_dir:
        return load_incontext(a.model_dir), f"weights {a.model_dir}"
    if a.net_size:
        return InContextSegmenter(InContextConfig(size=a.net_size)), "random weights"
    try:
        return load_incontext(default_anatomy_dir()), f"weights {default_anatomy_dir()}"
    except CxrfmError:
        return InContextSegmenter(InContextConfig()), "random weights, the default configuration"


def bench_fewshot(a) -> None:
    net, weights = fewshot_net(a)
    imgs, masks, what = images_and_masks(a.k + a.queries, a.size, a.seed)
    sup_i, sup_m, queries = imgs[:a.k], masks[:a.k], imgs[a.k:]
    print(f"few-shot: in-context segmenter with input side {net.config.size} px (widths {net.config.widths}, "
          f"{weights}), k = {a.k} supports and {len(queries)} queries of {a.size} px (letterboxed to the "
          f"input side inside FewShot); {what}")
    with torch.inference_mode():
        t0 = time.perf_counter()
        fs = FewShot(sup_i, sup_m, model=net)
        encode_ms = 1000 * (time.perf_counter() - t0)
        cached = _median_ms(fs, queries)
        uncached = _median_ms(lambda q: segment(q, sup_i, sup_m, model=net), queries)
    print(f"  support encoding once: {encode_ms:.0f} ms")
    print(f"  per query, median: cached {cached:.1f} ms, uncached {uncached:.1f} ms; "
          f"cached / uncached = {cached / uncached:.2f} (uncached is {uncached / cached:.1f}x slower)")


def bench_training(a) -> None:
    imgs, masks, what = images_and_masks(a.train_images, a.unet_size, a.seed + 1)
    batch = 8
    print(f"training: {len(imgs)} images; {what}")
    settings = SupervisedSettings(size=a.unet_size, steps=1, batch_size=batch)
    fit_supervised(imgs, {"heart": masks}, settings=settings, seed=a.seed)  # warm-up
    t0 = time.perf_counter()
    fit_supervised(imgs, {"heart": masks}, settings=SupervisedSettings(size=a.unet_size, steps=a.unet_steps,
                                                                       batch_size=batch), seed=a.seed)
    unet = a.unet_steps * batch / (time.perf_counter() - t0)
    print(f"  U-Net end to end at {a.unet_size} px: {unet:.1f} images/s ({a.unet_steps} steps of {batch})")

    cfg, _ = load_config(a.config)
    tower, _ = build_scratch_image_tower(cfg, a.seed, image_size=a.decoder_size)
    model = SimpleNamespace(image_size=a.decoder_size, image=tower.eval())
    x = torch.stack([letterbox(im, a.decoder_size) for im in imgs])
    y = torch.stack([mask_to_input(m, a.decoder_size) for m in masks]).gt(0.5).float()

    class Rows:
        def __len__(self):
            return len(x)

        def batch(self, rows):
            return x[torch.as_tensor(np.asarray(rows))]

    t0 = time.perf_counter()
    feats = extract_features(model, Rows(), np.arange(len(x)), batch_size=batch)
    enc_s = time.perf_counter() - t0
    dset = DecoderSettings(epochs=a.decoder_epochs, batch_size=batch)
    t0 = time.perf_counter()
    train_decoder(feats, y, dset, seed=a.seed)
    dec_s = time.perf_counter() - t0
    seen = a.decoder_epochs * len(x)
    dec = seen / dec_s
    dec_all = seen / (dec_s + enc_s)
    print(f"  frozen {a.config} tower ({cfg.image_tower}) at {a.decoder_size} px + LightDecoder: "
          f"{dec:.1f} images/s with the features precomputed, {dec_all:.1f} images/s counting the one encoder "
          f"pass per image ({1000 * enc_s:.0f} ms for {len(x)} images, {a.decoder_epochs} epochs)")
    print(f"  U-Net / decoder = {unet / dec:.3f} (features precomputed), {unet / dec_all:.3f} (encoder pass counted)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", type=int, default=256, help="query / support image side (256)")
    ap.add_argument("--net-size", type=int, default=None,
                    help="a random segmenter with this input side (default: the shipped model's, else 128)")
    ap.add_argument("--k", type=int, default=5, help="supports (5)")
    ap.add_argument("--queries", type=int, default=30, help="timed queries (30)")
    ap.add_argument("--model-dir", default=None, help="a trained anatomy folder (default: random weights)")
    ap.add_argument("--train-images", type=int, default=32)
    ap.add_argument("--unet-size", type=int, default=128, help="the U-Net's side (128, the task's and the shipped model's)")
    ap.add_argument("--unet-steps", type=int, default=4, help="timed U-Net steps of batch 8 (4)")
    ap.add_argument("--config", default="tiny-cpu", help="preset whose image tower is the frozen encoder")
    ap.add_argument("--decoder-size", type=int, default=128, help="the frozen encoder's input side (128)")
    ap.add_argument("--decoder-epochs", type=int, default=12, help="decoder epochs (12, the task's default)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 64 px, 3 queries, 2 U-Net steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.queries, a.train_images, a.unet_size, a.unet_steps = 64, 3, 8, 64, 2
        a.net_size = a.net_size or 64
        a.decoder_size, a.decoder_epochs = 64, 1
    torch.set_num_threads(max(1, a.threads))
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} (a shared machine)")
    bench_fewshot(a)
    bench_training(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
