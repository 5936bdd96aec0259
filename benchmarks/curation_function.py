"""Does each curator do its job? Plant redundancy and noise we know about, and count what it keeps.

Starting from the shared real pool (``$CXRFM_DATA/cxr/manifest.csv``) this adds

* known redundancy: 3 augmented near-copies of every pediatric image (kermany-pediatric-cxr, Kermany
  et al., Cell 2018), written as PNGs under a temporary folder with small Pillow augmentations
  (rotation <= 3 degrees, 2-5 % crop, brightness/contrast +-8 %), same patient, same labels;
* known noise: 10 % of the pairs get the labels (and report) of a pair of the same source with a
  *different* finding, so their training text describes another finding than their image.

Then each curator (``random``, ``prototype``, ``balanced`` and any given with ``--arms``) runs at the
same budget in a short real pretraining (``tiny-cpu``, few epochs, small images), and the benchmark
prints which fraction of the planted copies and of the mismatched pairs each one kept, next to
`random`'s fraction in the same run (the ratio: < 1 means the curator removes them more than chance).

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/curation_function.py --epochs 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PEDIATRIC = "kermany-pediatric-cxr"
LABEL_COLUMNS = ("labels", "report", "finding_raw")


def augment_copy(src: Path, dst: Path, rng: np.random.Generator) -> None:
    """A near-copy: small rotation, 2-5 % crop resized back, brightness/contrast jitter."""
    from PIL import Image, ImageEnhance

    with Image.open(src) as im:
        im = im.convert("L")
        w, h = im.size
        im = im.rotate(float(rng.uniform(-3, 3)), resample=Image.BILINEAR, fillcolor=0)
        c = rng.uniform(0.02, 0.05)
        dx, dy = int(round(w * c / 2)), int(round(h * c / 2))
        im = im.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.BILINEAR)
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.92, 1.08)))
        im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.92, 1.08)))
        im.save(dst)


def build_pool(manifest_path: Path, folder: Path, copies: int, noise: float, seed: int):
    """The planted pool: a Manifest rooted at ``folder`` with a ``planted`` column ('', 'copy', 'noise')."""
    from cxrfm import Manifest, read_table

    rng = np.random.default_rng(seed)
    df = read_table(manifest_path)
    root = manifest_path.resolve().parent
    df["image"] = [os.path.relpath(root / p, folder) for p in df["image"]]
    if "mask" in df.columns:
        df["mask"] = [None if not isinstance(m, str) else os.path.relpath(root / m, folder) for m in df["mask"]]
    df["planted"] = ""
    df["copy_of"] = ""
    (folder / "copies").mkdir(parents=True, exist_ok=True)
    new_rows = []
    ped = df.index[df["source"] == PEDIATRIC]
    for i in ped:
        src = folder / df.at[i, "image"]
        for c in range(copies):
            name = f"copies/{Path(df.at[i, 'image']).stem}_copy{c}.png"
            augment_copy(src, folder / name, rng)
            row = df.loc[i].copy()
            row["image"], row["planted"], row["copy_of"] = name, "copy", df.at[i, "image"]
            if "mask" in row:
                row["mask"] = None
            new_rows.append(row)
    df = pd.concat([df, pd.DataFrame(new_rows)], ignore_index=True)
    # noise: swap in the labels/report of a pair of the same source (whose label names it knows) with
    # a different finding
    n_noise = int(round(noise * len(df)))
    labels = df["labels"].fillna("").to_numpy()
    sources = df["source"].to_numpy()
    orig = df[[c for c in LABEL_COLUMNS if c in df.columns]].copy()
    victims = []
    for v in rng.permutation(len(df)):
        if len(victims) == n_noise:
            break
        donors = np.flatnonzero((labels != labels[v]) & (labels != "") & (sources == sources[v]))
        if labels[v] and len(donors):
            victims.append((v, int(rng.choice(donors))))
    for v, d in victims:
        for c in orig.columns:
            df.at[v, c] = orig.at[d, c]
        df.at[v, "planted"] = "noise" if df.at[v, "planted"] == "" else df.at[v, "planted"] + "+noise"
    return Manifest.from_table(df, folder)


def kept_fractions(kept_ids: set[str], table: pd.DataFrame) -> dict:
    planted = table["planted"].fillna("")
    ids = table["image"].to_numpy()
    kept = np.array([i in kept_ids for i in ids])
    copy = planted.str.contains("copy").to_numpy()
    noise = planted.str.contains("noise").to_numpy()
    ped_orig = ((table["source"] == PEDIATRIC).to_numpy()) & ~copy
    # a copy group = one original pediatric image and its copies; redundancy kept = extra members kept
    group = np.where(copy, table["copy_of"].fillna("").to_numpy(), ids)
    g = pd.Series(kept[ped_orig | copy]).groupby(group[ped_orig | copy]).sum()
    sources = table["source"].to_numpy()
    # mismatched vs every other pair of the same source (copies included): this removes how much of each
    # source a curator keeps; what is left is whether it treats a mismatched pair differently (tells it
    # apart, or favours the rarer text a mismatch can produce)
    per_source = {src: {"n_mismatched": int((noise & (sources == src)).sum()),
                        "mismatched_kept": float(kept[noise & (sources == src)].mean()),
                        "others_kept": float(kept[~noise & (sources == src)].mean())}
                  for src in sorted(set(sources[noise]))}
    return {"kept": int(kept.sum()), "data_fraction": float(kept.mean()),
            "copies_kept": float(kept[copy].mean()), "noise_kept": float(kept[noise].mean()),
            "clean_kept": float(kept[~copy & ~noise].mean()),
            "pediatric_groups_with_2plus": float((g >= 2).mean()), "per_source": per_source}


def dedup_probe(pool, config: str, overrides: dict, n: int, seed: int) -> None:
    """Can epoch-0 image embeddings tell a near-copy from a distinct image? Print cosine percentiles."""
    import torch

    from cxrfm import load_config, read_image
    from cxrfm.models.dual import resize_to
    from cxrfm import build_model

    t = pool.table
    copies = t.index[t["planted"].fillna("").str.contains("copy") & t["image"].str.endswith("_copy0.png")][:n]
    orig_paths = [pool.root / p for p in t.loc[copies, "copy_of"]]
    copy_paths = [pool.root / p for p in t.loc[copies, "image"]]
    model = build_model(load_config(config, overrides)[0], seed=seed).eval()  # as at epoch 0

    def untrained(paths):
        x = torch.stack([resize_to(read_image(p)[None], model.image_size)[0] for p in paths])
        with torch.no_grad():
            return model.encode_image(x).numpy()

    def thumbnails(paths):
        x = torch.stack([resize_to(read_image(p)[None], 16)[0] for p in paths]).reshape(len(paths), -1).numpy()
        return x - x.mean(axis=1, keepdims=True)

    print(f"\ndedup probe on {len(copies)} copy/original pairs (centred on the pool of both, cosine):")
    for name, fn in (("untrained image tower", untrained), ("16x16 pixel thumbnails", thumbnails)):
        a, b = fn(orig_paths), fn(copy_paths)
        mu = np.concatenate([a, b]).mean(axis=0)
        a, b = a - mu, b - mu
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        pair = (a * b).sum(axis=1)
        sim = a @ a.T
        np.fill_diagonal(sim, -1)
        nearest_other = sim.max(axis=1)
        print(f"  {name:<24} copy-original median {np.median(pair):.2f} (5th pct {np.percentile(pair, 5):.2f}); "
              f"original-nearest other median {np.median(nearest_other):.2f} (95th pct "
              f"{np.percentile(nearest_other, 95):.2f}); copies above that 95th pct: "
              f"{(pair > np.percentile(nearest_other, 95)).mean():.2f}")


def run_seed(args, seed: int, folder: Path, arms: list[dict], overrides: dict) -> dict:
    """Build seed's planted pool under ``folder`` and run every arm on it; {arm tag: kept fractions}."""
    from cxrfm import RunDir, pretrain, shared_data_dir

    t0 = time.perf_counter()
    pool = build_pool(shared_data_dir() / "cxr" / "manifest.csv", folder, args.copies, args.noise, seed)
    pl = pool.table["planted"].fillna("")
    print(f"seed {seed} pool: {len(pool)} pairs = {int((pl == '').sum())} clean + {int(pl.str.contains('copy').sum())} "
          f"near-copies of {PEDIATRIC} images + {int(pl.str.contains('noise').sum())} mismatched "
          f"(built in {time.perf_counter() - t0:.0f} s under {folder})", flush=True)
    if args.dedup_probe:
        dedup_probe(pool, args.config, overrides, args.dedup_probe, seed)
    results = {}
    for arm in arms:
        t0 = time.perf_counter()
        run = pretrain(pool, folder / "runs" / arm["tag"].replace(":", "_"), config=args.config,
                       curate=arm["curate"], budget=arm["budget"], epochs=args.epochs, seed=seed,
                       resume=True, overrides=overrides, curator_kwargs=arm["kwargs"], progress=args.progress,
                       cache_dir=folder / "cache")
        cur = RunDir(run).read_curation()
        results[arm["tag"]] = {**kept_fractions(set(cur["kept_ids"]), pool.table),
                               "compute_fraction": cur.get("compute_fraction"),
                               "wall_s": time.perf_counter() - t0}
        print(f"  {arm['tag']}: done in {results[arm['tag']]['wall_s']:.0f} s", flush=True)
    return results


def print_seed(results: dict, args, seed: int, overrides: dict) -> None:
    ref = results["random@" + f"{args.budget:g}"]
    print()
    print(f"fraction of planted pairs kept at budget {args.budget:g} ({args.config} {overrides}, "
          f"{args.epochs} epochs, seed {seed}); ratio = curator / random in this run")
    print("(mismatched/clean: how a curator treats a mismatched pair against a clean one, 1 = blind to it;"
          " the ratio to random alone is confounded by how many copies a curator thins)")
    print(f"{'curator':<26} {'data':>6} {'compute':>8} {'copies kept':>12} {'ratio':>6} {'mismatched kept':>16} "
          f"{'ratio':>6} {'clean kept':>11} {'mismatched/clean':>17} {'ped. groups >=2':>16}")
    for tag, r in results.items():
        print(f"{tag:<26} {r['data_fraction']:>6.3f} {r['compute_fraction'] or float('nan'):>8.3f} "
              f"{r['copies_kept']:>12.3f} {r['copies_kept'] / max(ref['copies_kept'], 1e-9):>6.2f} "
              f"{r['noise_kept']:>16.3f} {r['noise_kept'] / max(ref['noise_kept'], 1e-9):>6.2f} "
              f"{r['clean_kept']:>11.3f} {r['noise_kept'] / max(r['clean_kept'], 1e-9):>17.2f} "
              f"{r['pediatric_groups_with_2plus']:>16.3f}")
    print()
    print("within each source: mismatched kept / other pairs kept (1 = blind to the mismatch); n mismatched")
    for tag, r in results.items():
        print(f"{tag:<26} " + "  ".join(
            f"{src}: {v['mismatched_kept']:.3f}/{v['others_kept']:.3f} (n={v['n_mismatched']})"
            for src, v in r["per_source"].items()))


def print_seeds(per_seed: dict[int, dict], budget: float) -> None:
    """Over seeds: each arm's kept fractions and its ratios to random in the same seed, mean ± sd."""
    ref = f"random@{budget:g}"
    tags = list(next(iter(per_seed.values())))

    def ms(v):
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    print(f"\nover {len(per_seed)} seeds ({', '.join(map(str, sorted(per_seed)))}): mean ± sd; ratio = curator / "
          f"random of the same seed; goal (issue 11): ratios <= 0.5")
    print(f"{'curator':<44} {'copies kept':>14} {'ratio':>14} {'mismatched kept':>16} {'ratio':>14} "
          f"{'ped. mismatched/others':>23}")
    for tag in tags:
        rs = [per_seed[s][tag] for s in sorted(per_seed)]
        refs = [per_seed[s][ref] for s in sorted(per_seed)]
        ped = [r["per_source"].get(PEDIATRIC) for r in rs]
        ped = [p["mismatched_kept"] / max(p["others_kept"], 1e-9) for p in ped if p]
        print(f"{tag:<44} {ms([r['copies_kept'] for r in rs]):>14} "
              f"{ms([r['copies_kept'] / max(f['copies_kept'], 1e-9) for r, f in zip(rs, refs)]):>14} "
              f"{ms([r['noise_kept'] for r in rs]):>16} "
              f"{ms([r['noise_kept'] / max(f['noise_kept'], 1e-9) for r, f in zip(rs, refs)]):>14} "
              f"{ms(ped) if ped else '-':>23}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=["random", "prototype", "balanced"],
                   help="curators, name[:key=value,...] (random is always run as the reference)")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the first seed: it plants the pool and seeds the runs")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds --seed .. --seed+N-1, each with its own planted pool (default 1); with N > 1 a table "
                        "over seeds follows the per-seed tables")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--config", default="tiny-cpu")
    p.add_argument("--override", action="append", default=["image_size=64"],
                   help="config override key=value (default image_size=64)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the pools and runs here (OUT/seedS; re-running resumes; default: a temp folder)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--dedup-probe", type=int, default=300, metavar="N",
                   help="also compare copy-original cosines with nearest-other cosines on N copies (0: skip)")
    args = p.parse_args(argv)

    from cxrfm import shared_data_dir

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_efficiency import parse_arm, parse_overrides

    if shared_data_dir() is None:
        print("curation_function: shared data not found; set CXRFM_DATA", file=sys.stderr)
        return 2
    arms = [parse_arm(a, args.budget) for a in (["random"] + [a for a in args.arms if a != "random"])]
    overrides = parse_overrides(args.override)
    root = args.out or Path(tempfile.mkdtemp(prefix="cxrfm_curation_function_"))
    root.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    try:
        for seed in range(args.seed, args.seed + args.seeds):
            folder = root if args.seeds == 1 else root / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            per_seed[seed] = run_seed(args, seed, folder, arms, overrides)
            print_seed(per_seed[seed], args, seed, overrides)
        if len(per_seed) > 1:
            print_seeds(per_seed, args.budget)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
