"""Compare zero-shot prompt schemes on one tiny-cpu model (the bundled scheme against 'X' vs 'no X').

Trains ``tiny-cpu`` (curate none) on a patient-disjoint 75 % of the real data, then scores the other
25 % with each scheme and prints the within-Kermany AUROC of the three reliable cells (Pneumonia,
Viral pneumonia, No Finding) and their mean. Usage:

    CXRFM_DATA=../shared/data python benchmarks/prompt_schemes.py --seed 0 --out runs/prompt_schemes
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cxrfm import FINDINGS, RunDir, evaluate, load_prompts, pretrain
from data_efficiency import dev_eval_split  # benchmarks/ is the script's folder, first on sys.path

RELIABLE = ("Pneumonia", "Viral pneumonia", "No Finding")
SOURCE = "kermany-pediatric-cxr"


def negation_scheme() -> dict:
    """'chest x-ray showing X.' against 'no X.': the scheme the bundled prompts replaced."""
    out = {f: {"positive": [f"chest x-ray showing {f.lower()}.", f"findings consistent with {f.lower()}."],
               "negative": [f"no {f.lower()}.", f"no evidence of {f.lower()}."]} for f in FINDINGS}
    out["No Finding"] = {"positive": ["normal chest radiograph.", "chest x-ray with no acute cardiopulmonary abnormality."],
                         "negative": ["abnormal chest radiograph.", "chest x-ray showing an abnormality."]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/prompt_schemes"))
    args = ap.parse_args()
    split = dev_eval_split(eval_fraction=0.25, split_seed=0)
    if split is None:
        raise SystemExit("real data not found: set CXRFM_DATA")
    train, held = split
    run = args.out / f"seed{args.seed}"
    if not RunDir(run).is_finished():  # a killed run has weights too: resume it rather than evaluate it
        pretrain(train, run, config="tiny-cpu", curate="none", seed=args.seed, resume=run.exists(), progress=True)
    for name, prompts in (("bundled", load_prompts()), ("x-vs-no-x", negation_scheme())):
        z = evaluate(run, held, tasks=("zeroshot",), prompts=prompts, n_boot=50, progress=False, html=False)
        cells = {f: z["tasks"]["zeroshot"]["findings"].get(f, {}).get("per_source", {}).get(SOURCE) for f in RELIABLE}
        vals = [v for v in cells.values() if v is not None]
        print(f"{name:10s} seed {args.seed}: " + "  ".join(f"{f} {v:.3f}" for f, v in cells.items() if v is not None)
              + f"  reliable mean {sum(vals) / len(vals):.3f}")


if __name__ == "__main__":
    main()
