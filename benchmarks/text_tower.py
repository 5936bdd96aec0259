"""Text tower variants for tiny-cpu: frozen MiniLM, frozen + trainable adapter, top layer unfrozen.

The issue's hint: the frozen MiniLM puts "...viral pneumonia." and "...bacterial pneumonia." at
cosine 0.88, which caps zero-shot separation of the two. For each variant and seed this trains
``tiny-cpu`` (curate none) on the patient-disjoint 75 % of the real data, scores the other 25 %, and
prints the within-Kermany AUROC of Pneumonia, Viral pneumonia, Bacterial pneumonia and No Finding,
the reliable mean (Pneumonia, Viral pneumonia, No Finding), the cosine of the two pneumonia prompts
in the trained text space, and wall time. Resumable: finished runs are only re-scored.

    CXRFM_DATA=../shared/data python benchmarks/text_tower.py --seeds 3 --out runs/text_tower
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cxrfm import RunDir, evaluate, load_model, pretrain
from data_efficiency import dev_eval_split  # benchmarks/ is the script's folder, first on sys.path

VARIANTS = {
    "frozen": {"text_adapter": False, "text_trainable_layers": 0},
    "frozen+adapter": {"text_adapter": True, "text_trainable_layers": 0},
    "top1-unfrozen": {"text_adapter": False, "text_trainable_layers": 1},
}
CELLS = ("Pneumonia", "Viral pneumonia", "Bacterial pneumonia", "No Finding")
RELIABLE = ("Pneumonia", "Viral pneumonia", "No Finding")
SOURCE = "kermany-pediatric-cxr"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/text_tower"))
    args = ap.parse_args()
    split = dev_eval_split(eval_fraction=0.25, split_seed=0)
    if split is None:
        raise SystemExit("real data not found: set CXRFM_DATA")
    train, held = split
    rows = []
    for variant in args.variants:
        for seed in range(args.seeds):
            run = args.out / variant / f"seed{seed}"
            t0 = time.perf_counter()
            if not RunDir(run).is_finished():  # a killed run has weights too: resume it
                pretrain(train, run, config="tiny-cpu", curate="none", seed=seed, epochs=args.epochs,
                         overrides=VARIANTS[variant], resume=run.exists(), progress=True)
            wall = time.perf_counter() - t0
            z = evaluate(run, held, tasks=("zeroshot",), n_boot=50, progress=False, html=False)
            f = z["tasks"]["zeroshot"]["findings"]
            cells = {c: f.get(c, {}).get("per_source", {}).get(SOURCE) for c in CELLS}
            with torch.no_grad():
                e = load_model(run).encode_text(["Findings of viral pneumonia.", "Findings of bacterial pneumonia."])
            cos = float(e[0] @ e[1])
            rel = float(np.mean([cells[c] for c in RELIABLE]))
            rows.append({"variant": variant, "seed": seed, "cells": cells, "reliable": rel, "cos": cos, "wall": wall})
            print(f"{variant:15s} seed {seed}: " + "  ".join(f"{c} {v:.3f}" for c, v in cells.items() if v is not None)
                  + f"  reliable {rel:.3f}  cos(viral, bacterial) {cos:.3f}  train {wall:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\nvariant          seeds  reliable mean ± sd   bacterial (Kermany)   cos(viral, bacterial)")
    for variant in args.variants:
        r = [x for x in rows if x["variant"] == variant]
        rel = np.array([x["reliable"] for x in r])
        bac = np.array([x["cells"]["Bacterial pneumonia"] for x in r], dtype=float)
        print(f"{variant:15s}  {len(r):5d}  {rel.mean():.3f} ± {rel.std(ddof=1) if len(r) > 1 else 0:.3f}"
              f"        {np.nanmean(bac):.3f}                {np.mean([x['cos'] for x in r]):.3f}")


if __name__ == "__main__":
    main()
