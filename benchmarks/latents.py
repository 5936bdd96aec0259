"""Latent compression (issue 15): one row per (factor, channels) setting beside the pixel baseline, one run.

For each setting an autoencoder is trained on the dev part (``cxrfm compress train``), its reconstructions
of the eval part are scored (PSNR, MS-SSIM, after the 8-bit latent cache's quantisation), a dual encoder is
pretrained on its latents (``cxrfm pretrain --latents``) with the same config, seed, data and curator as the
pixel baseline, and both are evaluated on the eval part by the same ``evaluate`` (zero-shot and probe).
The pixel model is also scored zero-shot on the decoded eval images (the "findings kept" goal).

Columns: storage ratio (pixel-cache bytes / latent-cache bytes), PSNR / MS-SSIM on eval images, throughput
ratio (median training pairs/s of the latent run over the pixel run's, same machine, same process),
reliable-mean ratio (zero-shot within-source reliable mean, benchmarks/data_efficiency.py, latent / pixel),
probe ratio (probe mean AUROC at the largest fraction, latent / pixel), decoded Δ (pixel model's reliable
mean on decoded minus original eval images), Dice Δ (the shipped anatomy U-Net's lung Dice against the
manifest's lung masks on decoded minus original eval images). ``OUT/curve.png`` plots the two downstream
ratios against the storage ratio. Where the data has no reliable cells (the bundled sample
in --quick) the mean over all within-source cells is used and the column is marked ``*``.

Each setting also writes ``OUT/reconstructions_f<F>c<C>.png``: the best, median and worst eval image by
PSNR, each as original | decoded | 4 x |difference|. Every invocation appends its rows to
``OUT/results.jsonl``; autoencoders and runs resume (a re-run reuses the finished ones).

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/latents.py --out runs/latents
    .venv/bin/python benchmarks/latents.py --quick --out /tmp/latents-quick     # smoke test, ~1 min on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_efficiency import cells, dev_eval_split, reliable_mean  # noqa: E402

SETTINGS = ((4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 4))


class DecodedImages:
    """Row-aligned eval images after encode -> 8-bit latents -> decode (the ImageBatches shape)."""

    def __init__(self, pixels, ae, size: int):
        self.pixels, self.ae, self.size = pixels, ae, size

    def __len__(self) -> int:
        return len(self.pixels)

    @torch.no_grad()
    def batch(self, indices) -> torch.Tensor:
        from cxrfm.data.latent_cache import round_trip
        from cxrfm.models.image import resize_to

        x = resize_to(self.pixels.batch(indices), self.ae.config.image_size)
        rec = round_trip(self.ae, x)
        return resize_to(rec, self.size)


def headline(zeroshot: dict) -> tuple[float | None, bool]:
    """(reliable mean, True) or, without the reliable cells, (mean of all within-source cells, False)."""
    c = cells(zeroshot)
    r = reliable_mean(c)
    if r is not None:
        return r, True
    return (float(np.mean(list(c.values()))) if c else None), False


def probe_auroc(probe: dict) -> float | None:
    m = probe.get("mean_auroc")
    if isinstance(m, dict):
        vals = {float(k): v for k, v in m.items() if v is not None}
        return float(vals[max(vals)]) if vals else None
    return None if m is None else float(m)


def pairs_per_s(run: Path) -> float | None:
    rates = [json.loads(line).get("pairs_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()
             if line.strip() and json.loads(line).get("type") == "step"]
    rates = [r for r in rates[1:] or rates if r]  # the first window holds the epoch's set-up
    return float(np.median(rates)) if rates else None


def evaluate_run(run: Path, evalm, args, images=None) -> dict:
    from cxrfm import evaluate

    tasks = ("zeroshot",) if images is not None else args.tasks
    res = evaluate(run, evalm, tasks=tasks, seed=0, n_boot=args.n_boot, progress=False, cache_dir=args.cache_dir,
                   images=images, html=False)
    out = {"zeroshot": headline(res["tasks"]["zeroshot"])}
    if "probe" in res["tasks"]:
        out["probe"] = probe_auroc(res["tasks"]["probe"])
    return out


@torch.no_grad()
def lung_dice(evalm, pixels, ae=None, limit: int = 128) -> dict | None:
    """Mean Dice of the shipped anatomy U-Net's lungs (left | right) against the manifest's lung masks, on the
    eval images with a mask (the first ``limit``), at the benchmark's pixel size; with ``ae``, on the images
    after encode -> 8-bit latents -> decode. None when the data has no masks or no anatomy model is found."""
    import torch.nn.functional as F

    from cxrfm.data.anatomy import read_mask
    from cxrfm.data.latent_cache import round_trip
    from cxrfm.inference.anatomy import Anatomy

    rows = [i for i, m in enumerate(evalm.mask_paths()) if m is not None and m.is_file()][:limit]
    if not rows:
        return None
    try:
        anatomy = Anatomy()
    except Exception as e:  # noqa: BLE001 - no anatomy model: the column stays empty, said so
        print(f"lung Dice skipped: {e}", file=sys.stderr)
        return None
    x = pixels.batch(np.asarray(rows))
    if ae is not None:
        x = round_trip(ae, x)
    paths = evalm.mask_paths()
    scores = []
    for j, i in enumerate(rows):
        ref = torch.from_numpy(read_mask(paths[i]).astype(np.float32))[None, None]
        ref = F.interpolate(ref, size=x.shape[-2:], mode="nearest")[0, 0].bool().numpy()
        m = anatomy.structures(x[j])
        pred = m["left_lung"] | m["right_lung"]
        scores.append(2 * (pred & ref).sum() / max(1, pred.sum() + ref.sum()))
    return {"dice": float(np.mean(scores)), "n": len(rows)}


def save_curve(pixel: dict, rows: list[dict], path: Path) -> None:
    """Downstream zero-shot reliable mean and probe AUROC (latent / pixel) against the storage ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, mark in (("reliable_mean_ratio", "zero-shot reliable mean", "o"), ("probe_ratio", "probe AUROC", "s")):
        pts = sorted((r["storage_ratio"], r[key], f"{r['factor']}x/{r['channels']}ch") for r in rows
                     if r.get(key) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mark, label=label)
            for xv, yv, name in pts:
                ax.annotate(name, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.98, color="grey", ls="--", lw=0.8, label="goal: 98 % of pixel")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("storage ratio (pixel cache / latent cache)")
    ax.set_ylabel("latent / pixel")
    ax.set_title("Downstream quality against compression (eval part)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def throughput_only(dev, args, overrides) -> int:
    """Median training pairs/s of fresh pixel and latent runs, alternated so that load drifts hit both arms."""
    import shutil

    from cxrfm import pretrain
    from cxrfm.train.compress import pretrain_on_latents

    common = dict(config=args.config, curate="none", budget=1.0, epochs=args.throughput_epochs, seed=args.seed,
                  resume=False, overrides=overrides, progress=False, cache_dir=args.cache_dir)
    arms = {"pixel": None}
    for spec in args.settings:
        f, c = (int(v) for v in spec.lower().split("x"))
        arms[f"{f}x{c}"] = args.out / "ae" / f"f{f}c{c}"
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.throughput_repeats):
        for name, ae_dir in arms.items():
            run = args.out / "throughput" / f"{name}-{rep}"
            shutil.rmtree(run, ignore_errors=True)
            if ae_dir is None:
                pretrain(dev, run, **common)
            else:
                pretrain_on_latents(dev, run, ae_dir, **common)
            rates[name].append(pairs_per_s(run))
            print(f"{name:<6} repeat {rep}: {rates[name][-1]:.0f} pairs/s", flush=True)
    base = float(np.median(rates["pixel"]))
    out = {k: {"pairs_per_s": v, "median": float(np.median(v)), "ratio": float(np.median(v)) / base}
           for k, v in rates.items()}
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"throughput_only": out, "load_avg": os.getloadavg(),
                             "args": {k: str(v) for k, v in vars(args).items()}}) + "\n")
    for k, v in out.items():
        print(f"{k:<6} median {v['median']:.0f} pairs/s  ratio {v['ratio']:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for AEs, runs and results.jsonl")
    p.add_argument("--settings", nargs="+", default=[f"{f}x{c}" for f, c in SETTINGS],
                   help="FACTORxCHANNELS settings (default: all of 4,8 x 1,2,4)")
    p.add_argument("--config", default="tiny-cpu", help="pretraining preset for both arms (default tiny-cpu)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ae-steps", type=int, default=2000)
    p.add_argument("--ae-width", type=int, default=32)
    p.add_argument("--ae-batch", type=int, default=16)
    p.add_argument("--ae-lr", type=float, default=1e-3,
                   help="AE learning rate (default 1e-3: the command's 2e-4 leaves a few-hundred-step AE blurry)")
    p.add_argument("--size", type=int, default=128, help="pixel side of AEs and both arms (default 128)")
    p.add_argument("--align", action="store_true", help="stage 2: align each AE to the pixel run's image encoder")
    p.add_argument("--tasks", nargs="+", default=["zeroshot", "probe"])
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--n-recon", type=int, default=256, help="eval images scored for PSNR / MS-SSIM")
    p.add_argument("--n-dice", type=int, default=128, help="eval images with a lung mask scored for lung Dice")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke test on the bundled sample: 64 px, 8-wide AEs of 10 steps, a 2-stage tower, 1 epoch, "
                        "settings 4x1 and 8x4 (numbers mean nothing)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--throughput-only", action="store_true",
                   help="only the training-throughput ratio, measured again on a quiet machine: fresh pixel and latent "
                        "runs of --throughput-epochs, alternated --throughput-repeats times (the settings' AEs must "
                        "exist); no evaluation")
    p.add_argument("--throughput-epochs", type=int, default=2)
    p.add_argument("--throughput-repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = {"train.log_every": 2}
    if args.quick:
        args.size, args.ae_steps, args.ae_width, args.ae_batch, args.epochs = 64, 10, 8, 8, 1
        args.settings, args.n_boot, args.n_recon, args.tasks = ["4x1", "8x4"], 10, 32, ["zeroshot"]
        overrides.update({"image_arch": {"depths": [1, 1], "hidden_sizes": [16, 32], "num_stages": 2},
                          "train.batch_size": 32, "train.log_every": 1})
    overrides["image_size"] = args.size
    from cxrfm import Manifest, pretrain
    from cxrfm.data.cache import ImageCache
    from cxrfm.data.splits import train_eval_split
    from cxrfm.models.autoencoder import load_autoencoder
    from cxrfm.paths import SAMPLE_DIR
    from cxrfm.tasks.reconstruction import save_examples  # the eval task's figure: the same layout
    from cxrfm.train.compress import pretrain_on_latents, reconstruction_scores, train_autoencoder

    if args.quick:
        dev, evalm = train_eval_split(Manifest.load(SAMPLE_DIR / "manifest.csv"), 0.25, seed=0)
    else:
        parts = dev_eval_split()
        if parts is None:
            raise SystemExit("shared data not found: set CXRFM_DATA (or use --quick)")
        dev, evalm = parts
    args.out.mkdir(parents=True, exist_ok=True)
    if args.throughput_only:
        return throughput_only(dev, args, overrides)
    common = dict(config=args.config, curate="none", budget=1.0, epochs=args.epochs, seed=args.seed, resume=True,
                  overrides=overrides, progress=args.progress, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    pixel_run = args.out / "runs" / "pixel"
    pretrain(dev, pixel_run, **common)
    pixel = evaluate_run(pixel_run, evalm, args)
    pixel_rate = pairs_per_s(pixel_run)
    eval_pixels = ImageCache.build(evalm, size=args.size, cache_dir=args.cache_dir)
    pixel_dice = lung_dice(evalm, eval_pixels, limit=args.n_dice)
    n_recon = min(args.n_recon, len(evalm))
    recon_rows = np.sort(np.random.default_rng(0).permutation(len(evalm))[:n_recon])
    rows = []
    for spec in args.settings:
        f, c = (int(v) for v in spec.lower().split("x"))
        ae_dir = args.out / "ae" / f"f{f}c{c}"
        train_autoencoder(dev, ae_dir, factor=f, channels=c, width=args.ae_width, size=args.size,
                          steps=args.ae_steps, batch_size=args.ae_batch, lr=args.ae_lr, seed=args.seed, resume=True,
                          progress=args.progress, cache_dir=args.cache_dir,
                          align_model=pixel_run if args.align else None)
        ae, _ = load_autoencoder(ae_dir)
        rec = reconstruction_scores(ae, eval_pixels.batch(recon_rows))
        examples = save_examples(ae, eval_pixels.batch(recon_rows), args.out / f"reconstructions_f{f}c{c}.png")
        run = args.out / "runs" / f"latent_f{f}c{c}"
        pretrain_on_latents(dev, run, ae_dir, **common)
        latent = evaluate_run(run, evalm, args)
        decoded = evaluate_run(pixel_run, evalm, args, images=DecodedImages(eval_pixels, ae, args.size))
        dice = lung_dice(evalm, eval_pixels, ae, limit=args.n_dice)
        from cxrfm.data.latent_cache import LatentCache, latent_cache_path
        from cxrfm.models.autoencoder import ae_hash

        h = ae_hash(ae_dir)
        cache = LatentCache.open(latent_cache_path(dev, h, args.size, args.cache_dir), h, dev)
        reliable = latent["zeroshot"][1] and pixel["zeroshot"][1]
        rows.append({"factor": f, "channels": c, "storage_ratio": cache.storage_ratio, "psnr": rec["psnr"],
                     "ms_ssim": rec["ms_ssim"], "n_recon": rec["n"],
                     "throughput_ratio": ratio(pairs_per_s(run), pixel_rate),
                     "reliable_mean_ratio": ratio(latent["zeroshot"][0], pixel["zeroshot"][0]), "reliable": reliable,
                     "probe_ratio": ratio(latent.get("probe"), pixel.get("probe")),
                     "decoded_delta": (None if decoded["zeroshot"][0] is None or pixel["zeroshot"][0] is None
                                       else decoded["zeroshot"][0] - pixel["zeroshot"][0]),
                     "lung_dice": None if dice is None else dice["dice"],
                     "lung_dice_delta": None if dice is None or pixel_dice is None else dice["dice"] - pixel_dice["dice"],
                     "latent": latent, "latent_pairs_per_s": pairs_per_s(run), "examples": examples})
    if rows:
        save_curve(pixel, rows, args.out / "curve.png")
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "pixel": pixel,
                             "pixel_lung_dice": pixel_dice,
                             "pixel_pairs_per_s": pixel_rate, "rows": rows,
                             "wall_s": round(time.perf_counter() - t0, 1)}) + "\n")
    star = lambda r: "" if r else "*"  # noqa: E731
    print(f"{'setting':<10} {'storage':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'thru':>7} {'rel.mean':>9} {'probe':>7} "
          f"{'decoded Δ':>10} {'Dice Δ':>7}")
    base = fmt(pixel['zeroshot'][0]) + star(pixel['zeroshot'][1])
    print(f"{'pixel':<10} {'1.0x':>8} {'-':>8} {'-':>8} {'1.00x':>7} {base:>9} "
          f"{fmt(pixel.get('probe')):>7} {'-':>10} {'-':>7}   (pairs/s {fmt(pixel_rate, '.0f')}; lung Dice "
          f"{fmt(pixel_dice and pixel_dice['dice'])} on {pixel_dice and pixel_dice['n']} eval images)")
    for r in rows:
        name = f"{r['factor']}x/{r['channels']}ch"
        print(f"{name:<10} {r['storage_ratio']:>7.1f}x {r['psnr']:>8.2f} {r['ms_ssim']:>8.4f} "
              f"{fmt(r['throughput_ratio'], '.2f') + 'x':>7} {fmt(r['reliable_mean_ratio']) + star(r['reliable']):>9} "
              f"{fmt(r['probe_ratio']):>7} {fmt(r['decoded_delta'], '+.3f'):>10} {fmt(r['lung_dice_delta'], '+.3f'):>7}")
    print(f"(ratios are latent / pixel; * = mean of all within-source cells, no reliable cells in this data; "
          f"{time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
