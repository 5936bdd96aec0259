"""Latent compression commands: ``cxrfm compress train | encode`` (docs/latents.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_compress(sub):
    p = sub.add_parser(
        "compress", help="train a CXR autoencoder and write latent caches (train and evaluate on latents)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MedVAE-style latent compression, trained here (nothing is downloaded): `compress train` fits a "
                    "2-D autoencoder (4x or 8x per side, 1-4 latent channels), `compress encode` writes a manifest's "
                    "8-bit latent cache, `cxrfm pretrain --latents AE` trains a dual encoder on it and `cxrfm eval "
                    "--model RUN` evaluates the latent run like any other (docs/latents.md).",
        epilog="examples:\n"
               "  cxrfm compress train --data data/manifest.csv --factor 8 --channels 4 --out ae/f8c4\n"
               "  cxrfm compress train --data data/manifest.csv --factor 8 --channels 4 --out ae/f8c4a "
               "--align-model runs/pixel\n"
               "  cxrfm compress encode --ae ae/f8c4 --data data/manifest.csv\n"
               "  cxrfm pretrain --data data/manifest.csv --latents ae/f8c4 --out runs/latent")
    s = p.add_subparsers(dest="compress_command", metavar="SUBCOMMAND")
    s.required = True

    t = s.add_parser(
        "train", help="train an autoencoder (stage 1: L1 + MS-SSIM [+ adversarial]; stage 2: alignment)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a 2-D convolutional autoencoder on the train rows of MANIFEST (its `split` column when it "
                    "has one) into OUT (autoencoder.json + autoencoder.safetensors; state/ holds the checkpoint). "
                    "Stage 1: (1 - 0.84) L1 + 0.84 (1 - MS-SSIM), plus a PatchGAN hinge term with --adv-weight. "
                    "Stage 2, with --align-model RUN: the same plus --align-weight x (1 - cosine) between RUN's image "
                    "embedding of the decoded image and of the original. Ctrl-C / SIGTERM writes a checkpoint; "
                    "--resume continues to the same result.")
    t.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) of the images")
    t.add_argument("--out", required=True, type=Path, help="new folder for the autoencoder (or one to --resume)")
    t.add_argument("--factor", type=int, default=8, choices=(4, 8), help="downsampling per side (default 8)")
    t.add_argument("--channels", type=int, default=4, choices=(1, 2, 4), help="latent channels (default 4)")
    t.add_argument("--size", type=int, default=128,
                   help="pixel side it trains at (a multiple of the factor giving latents of at least 4x4; default "
                        "128, the tiny-cpu image size)")
    t.add_argument("--width", type=int, default=32, help="channels of the first stage (default 32)")
    t.add_argument("--steps", type=int, default=2000, help="stage-1 steps (default 2000)")
    t.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    t.add_argument("--adv-weight", type=float, default=0.0,
                   help="weight of the adversarial term (default 0: off; MedVAE-like runs use ~0.05)")
    t.add_argument("--adv-start", type=float, default=0.5,
                   help="fraction of stage 1 after which the adversarial term starts (default 0.5)")
    t.add_argument("--align-model", type=Path, default=None,
                   help="a cxrfm run folder: adds stage 2, aligning decoded images to its image encoder")
    t.add_argument("--align-steps", type=int, default=0, help="stage-2 steps (default: steps / 4 with --align-model)")
    t.add_argument("--align-weight", type=float, default=1.0, help="weight of the alignment term (default 1)")
    t.add_argument("--seed", type=int, default=0, help="seeds the weights and the batches")
    t.add_argument("--resume", action="store_true", help="continue the training in --out from its checkpoint")
    t.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    t.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    t.set_defaults(func=_run_train)

    e = s.add_parser(
        "encode", help="write a manifest's latent cache with an autoencoder and print its storage ratio",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Encode every image of MANIFEST with the autoencoder AE into a memory-mapped uint8 latent cache "
                    "(latents-<manifest hash>-<AE hash>-<size>.npy + .json in --out), keyed by the manifest's "
                    "content, the AE's weights and the size: another AE's cache is never read. A fresh cache is "
                    "reused. Prints the storage ratio against the decoded-pixel cache (factor^2 / channels).")
    e.add_argument("--ae", required=True, type=Path, help="autoencoder folder (from `cxrfm compress train`)")
    e.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) of the images")
    e.add_argument("--out", type=Path, default=None,
                   help="cache folder (default $CXRFM_CACHE; give the same to `cxrfm pretrain --cache-dir`)")
    e.add_argument("--size", type=int, default=None, help="pixel side to encode at (default: the AE's training size)")
    e.add_argument("--factor", type=int, default=None, help="refuse an AE not trained for this factor")
    e.add_argument("--channels", type=int, default=None, help="refuse an AE not trained for this many channels")
    e.add_argument("--batch-size", type=int, default=64, help="images per encoder pass (default 64)")
    e.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    e.set_defaults(func=_run_encode)


def _run_train(args) -> int:
    from ..models.autoencoder import read_ae_meta
    from ..train.compress import train_autoencoder

    out = train_autoencoder(args.data, args.out, factor=args.factor, channels=args.channels, width=args.width,
                            size=args.size, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            adv_weight=args.adv_weight, adv_start=args.adv_start, align_model=args.align_model,
                            align_steps=args.align_steps, align_weight=args.align_weight, resume=args.resume,
                            progress=args.progress, cache_dir=args.cache_dir, device=args.device)
    if (out / "autoencoder.json").is_file():
        meta = read_ae_meta(out)
        s = meta["training"]["train_sample_scores"]
        print(f"{out}: factor {meta['config']['factor']}, {meta['config']['channels']} channel(s), hash "
              f"{meta['weights_sha256'][:16]}; on {s['n']} training images PSNR {s['psnr']:.2f} dB, "
              f"MS-SSIM {s['ms_ssim']:.4f}")
    return 0


def _run_encode(args) -> int:
    from ..data.schema import Manifest
    from ..models.latent_tower import encode_manifest

    cache = encode_manifest(args.ae, Manifest.load(args.data), size=args.size, cache_dir=args.out,
                            batch_size=args.batch_size, progress=args.progress, factor=args.factor,
                            channels=args.channels, device=args.device)
    st = cache.meta["storage"]
    print(f"{cache.path}: {len(cache)} images, latents {cache.channels}x{cache.size // cache.factor}x"
          f"{cache.size // cache.factor} uint8 ({st['latent_bytes_per_image']} B/image vs "
          f"{st['pixel_bytes_per_image']} B for {cache.size} px pixels): storage ratio {st['ratio']:.1f}x; "
          f"{100 * cache.meta['clipped_fraction']:.3f} % of values clamped to the 8-bit range")
    return 0


COMMANDS = (add_compress,)
