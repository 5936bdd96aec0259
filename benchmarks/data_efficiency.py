"""Data efficiency of the curators: zero-shot AUROC at a 20 % budget against `random` at the same budget.

Every arm (``none`` = all pairs; ``random@B``; each curator at B) is pretrained with ``tiny-cpu`` on the
same patient-disjoint dev part of the shared real data and evaluated zero-shot on the eval part, over
paired seeds: seed s gives every arm the same initial weights and epoch order, so the per-seed
difference to ``random`` removes most of the seed-to-seed variance (a paired t-interval over seeds).

The headline is the *reliable mean*: the mean within-source AUROC over the cells that have enough of
both classes to rank anything -- the pediatric source's (kermany-pediatric-cxr, Kermany et al., Cell 2018)
Pneumonia, Viral pneumonia and No Finding, each with >= 100 positives and >= 100 negatives in the
shared dev pool. Adult cells (covid-chestxray-dataset, Hannover, NIH ChestX-ray14) are printed as
their mean, but they hold a few dozen positives each and move by several points between seeds.

Resumable: each finished (arm, seed) is appended to ``OUT/results.jsonl`` and skipped on re-run, and an
interrupted pretraining resumes from its checkpoint; run it in pieces with ``--seeds`` / ``--arms``.

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/data_efficiency.py --seeds 15 --out runs/data_eff
    # a quick smoke: --seeds 1 --epochs 1 --arms random prototype --override image_size=64
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

import numpy as np  # noqa: E402

PEDIATRIC = "kermany-pediatric-cxr"
RELIABLE_FINDINGS = ("Pneumonia", "Viral pneumonia", "No Finding")
DEFAULT_ARMS = ("none", "random", "prototype", "balanced")


def parse_arm(spec: str, budget: float) -> dict:
    """``name[@budget][:key=value,...]`` -> {tag, curate, budget, kwargs}; values parsed as JSON when they can be."""
    head, _, opts = spec.partition(":")
    name, _, b = head.partition("@")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--arms {spec!r}: option {item!r} is not key=value")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    arm_budget = 1.0 if name == "none" else float(b) if b else budget
    tag = name if name == "none" else f"{name}@{arm_budget:g}" + (f":{opts}" if opts else "")
    return {"tag": tag, "curate": name, "budget": arm_budget, "kwargs": kwargs}


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--override {item!r}: give key=value, e.g. image_size=64")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def cells(zeroshot: dict) -> dict[str, float]:
    """{"Finding|source": within-source AUROC} for every scored cell."""
    out = {}
    for finding, r in zeroshot.get("findings", {}).items():
        for source, auc in r.get("per_source", {}).items():
            if auc is not None and np.isfinite(auc):
                out[f"{finding}|{source}"] = float(auc)
    return out


def reliable_mean(cell: dict[str, float]) -> float | None:
    vals = [cell.get(f"{f}|{PEDIATRIC}") for f in RELIABLE_FINDINGS]
    return float(np.mean(vals)) if all(v is not None for v in vals) else None


def adult_mean(cell: dict[str, float]) -> float | None:
    vals = [v for k, v in cell.items() if not k.endswith("|" + PEDIATRIC)]
    return float(np.mean(vals)) if vals else None


def dev_eval_split(eval_fraction: float = 0.25, split_seed: int = 0):
    """(dev part, eval part) of the shared real data (``$CXRFM_DATA/cxr/manifest.csv``), patient-disjoint,
    as every benchmark on it trains and scores; None when the shared data is not there."""
    from cxrfm import Manifest, shared_data_dir, train_eval_split

    data = shared_data_dir()
    if data is None:
        return None
    return train_eval_split(Manifest.load(data / "cxr" / "manifest.csv"), eval_fraction, seed=split_seed)


def run_name(tag: str, epochs: int | None, overrides: dict) -> str:
    """Folder name of an arm's runs: the tag, plus the epochs and config overrides when they are not the
    defaults, so that runs of other settings never meet (and never refuse to resume) in one folder."""
    name = tag
    if epochs is not None:
        name += f"_epochs{epochs}"
    for key, value in sorted(overrides.items()):
        name += f"_{key}{value}"
    return name.replace(":", "_").replace(",", "_").replace("=", "-").replace(" ", "")


def run_one(arm: dict, seed: int, train, evalm, args, overrides: dict) -> dict:
    from cxrfm import RunDir, evaluate, pretrain

    run_dir = args.out / "runs" / run_name(arm["tag"], args.epochs, overrides) / f"seed{seed}"
    t0 = time.perf_counter()
    pretrain(train, run_dir, config=args.config, curate=arm["curate"], budget=arm["budget"], epochs=args.epochs,
             seed=seed, resume=True, overrides=overrides, curator_kwargs=arm["kwargs"], progress=args.progress,
             cache_dir=args.cache_dir)
    t_train = time.perf_counter() - t0
    res = evaluate(run_dir, evalm, tasks=("zeroshot",), seed=0, n_boot=args.n_boot, progress=False,
                   cache_dir=args.cache_dir)
    cur = RunDir(run_dir).read_curation()
    cell = cells(res["tasks"]["zeroshot"])
    return {"arm": arm["tag"], "seed": seed, "epochs": args.epochs, "config": args.config, "overrides": overrides,
            "data_fraction": cur["data_fraction"], "compute_fraction": cur.get("compute_fraction"),
            "reliable_mean": reliable_mean(cell), "adult_mean": adult_mean(cell), "cells": cell,
            "train_s": round(t_train, 1), "wall_s": round(time.perf_counter() - t0, 1)}


def t_interval(diffs: np.ndarray) -> tuple[float, float] | None:
    if len(diffs) < 2:
        return None
    from scipy import stats

    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def format_table(rows: list[dict], arms: list[str], reference: str | None) -> str:
    by = {(r["arm"], r["seed"]): r for r in rows}
    ref_seeds = {s for (a, s) in by if a == reference}
    lines = [f"{'arm':<28} {'seeds':>5} {'data':>6} {'compute':>8} {'reliable mean ± sd':>20} "
             f"{'Δ vs random [95% CI]':>28} {'adult mean ± sd':>17} {'wall s':>7}"]

    def ms(v):
        v = [x for x in v if x is not None]
        if not v:
            return "-"
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    for arm in arms:
        rs = [r for (a, s), r in sorted(by.items()) if a == arm]
        if not rs:
            continue
        paired = sorted(s for s in ref_seeds if (arm, s) in by)
        if reference and arm != reference and paired:
            pairs = [(by[(arm, s)]["reliable_mean"], by[(reference, s)]["reliable_mean"]) for s in paired]
            d = np.array([a - r for a, r in pairs if a is not None and r is not None])
            ci = t_interval(d)
            delta = f"{d.mean():+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " [n<2]") if len(d) else "-"
        else:
            delta = "(reference)" if arm == reference else "-"
        comp = [r["compute_fraction"] for r in rs if r["compute_fraction"] is not None]
        lines.append(
            f"{arm:<28} {len(rs):>5} {np.mean([r['data_fraction'] for r in rs]):>6.3f} "
            f"{(np.mean(comp) if comp else float('nan')):>8.3f} {ms([r['reliable_mean'] for r in rs]):>20} "
            f"{delta:>28} {ms([r['adult_mean'] for r in rs]):>17} {np.mean([r['wall_s'] for r in rs]):>7.0f}")
    cell_names = sorted({k for r in rows for k in r["cells"]})
    lines.append("")
    lines.append("per cell (mean within-source AUROC over seeds; * = in the reliable mean):")
    lines.append(f"  {'cell':<55}" + "".join(f" {a[:14]:>14}" for a in arms))
    for c in cell_names:
        star = "*" if c in {f"{f}|{PEDIATRIC}" for f in RELIABLE_FINDINGS} else " "
        vals = []
        for a in arms:
            v = [r["cells"][c] for (aa, s), r in by.items() if aa == a and c in r["cells"]]
            vals.append(f"{np.mean(v):>14.3f}" if v else f"{'-':>14}")
        lines.append(f"{star} {c:<55}" + "".join(" " + v for v in vals))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=15, help="paired seeds 0..N-1 (default 15)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the config's)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS),
                   help="arms: none, random, prototype, balanced; name@B for another budget, "
                        "name:key=value,... for curator options (e.g. balanced:alpha=0.75)")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--out", type=Path, default=Path("runs/bench_data_efficiency"))
    p.add_argument("--config", default="tiny-cpu")
    p.add_argument("--override", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--eval-fraction", type=float, default=0.25)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient-disjoint dev/eval split (fixed)")
    p.add_argument("--n-boot", type=int, default=10, help="bootstrap resamples in evaluate (CIs are not used here)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--table-only", action="store_true", help="print the table from results.jsonl and exit")
    args = p.parse_args(argv)

    arms = [parse_arm(a, args.budget) for a in args.arms]
    tags = [a["tag"] for a in arms]
    reference = next((t for t in tags if t.startswith("random@") and ":" not in t), None)
    overrides = parse_overrides(args.override)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    def key(r):
        return (r["arm"], r["seed"], r["epochs"], r["config"], json.dumps(r["overrides"], sort_keys=True))

    done = {key(r): r for r in read_done(log)}
    if not args.table_only:
        split = dev_eval_split(args.eval_fraction, args.split_seed)
        if split is None:
            print("data_efficiency: shared data not found; set CXRFM_DATA to the folder holding cxr/manifest.csv",
                  file=sys.stderr)
            return 2
        train, evalm = split
        print(f"dev part {len(train)} pairs, eval part {len(evalm)} images (patient-disjoint, split seed "
              f"{args.split_seed}); {len(arms)} arms x {len(seeds)} seeds", flush=True)
        for seed in seeds:
            for arm in arms:
                k = (arm["tag"], seed, args.epochs, args.config, json.dumps(overrides, sort_keys=True))
                if k in done:
                    continue
                r = run_one(arm, seed, train, evalm, args, overrides)
                with log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
                done[k] = r
                print(f"  {arm['tag']:<28} seed {seed:>2}: reliable {r['reliable_mean']}, data "
                      f"{r['data_fraction']:.3f}, compute {r['compute_fraction']}, {r['wall_s']:.0f} s", flush=True)
    rows = [r for k, r in done.items() if k[0] in tags and k[1] in seeds and k[2] == args.epochs
            and k[3] == args.config and k[4] == json.dumps(overrides, sort_keys=True)]
    print()
    print(f"zero-shot, {args.config}" + (f" {overrides}" if overrides else "") +
          f", epochs={args.epochs or 'config'}, budget {args.budget:g}; reliable mean = within-source AUROC over "
          f"{PEDIATRIC} {', '.join(RELIABLE_FINDINGS)}; " + (f"Δ = paired difference to {reference} (t-interval over "
          f"seeds)" if reference else "no random@B arm to pair with (Δ: -)"))
    print(format_table(rows, tags, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
