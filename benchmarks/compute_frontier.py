"""Compute frontier of curated pretraining: reliable mean against compute spent, on a test part no one tuned on.

Every arm is a (selection, pairs fraction, epochs) point: ``none/E`` trains on every pair for E epochs,
``random@B/E`` on a random B of them, ``balanced@B/E`` / ``prototype@B/E`` on a curated B. Compute is the
run's forward-equivalent units (``curation.json``: training forwards and backwards, the curator's
selection passes and the frozen-text caching pass), divided by the units of the *reference*: the
full-data run at its best schedule. The reference is chosen on the **validation** part (the ``none``
schedule with the highest mean validation score; among schedules within ``--tie`` of it, the cheapest),
and every figure below it is reported on the **test** part.

Parts (patient-disjoint, fixed here, stratified by source; ``split_seed`` 0):

* **validation** = the eval part of ``dev_eval_split`` (25 % of ``$CXRFM_DATA/cxr``, 512 images): the part
  every earlier curation table scored, so the part on which ``balanced``'s defaults (``within="central"``,
  ``alpha``) and the 20 % budget were chosen. Here it only chooses the reference schedule and the default
  schedule of ``cxrfm pretrain --budget``.
* **test** = a third of the earlier dev part, by patient (518 images): never scored before this benchmark.
* **train** = the other two thirds of the dev part (1,037 pairs), the pool every arm selects from.

Score: the *reliable mean* of ``data_efficiency.py`` (within-source zero-shot AUROC over the pediatric
source's Pneumonia, Viral pneumonia and No Finding; adult cells are printed, never decisive). Seed s gives
every arm the same initial weights and order, so differences are paired (t-interval over seeds).

Resumable: each finished (arm, seed) is appended to ``OUT/results.jsonl``; a re-run skips it.
``--table-only`` reprints the tables and redraws ``OUT/frontier.png`` and ``OUT/report.html``.

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/compute_frontier.py --seeds 10 --out runs/frontier
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_efficiency as de  # noqa: E402

DEFAULT_ARMS = (
    "none/1", "none/2", "none/3", "none/6", "none/10", "none/20",
    "random@0.2/5", "random@0.2/10", "random@0.2/15", "random@0.2/30",
    "balanced@0.2/5", "balanced@0.2/10", "balanced@0.2/15", "balanced@0.2/30",
    "balanced@0.3/10", "prototype@0.2/10",
    # 14 epochs of a fifth: the longest schedule of a fifth within 30 % of none/10's compute (the frozen-text
    # caching pass is a fixed cost, so 15 epochs are 31 %)
    "random@0.2/14", "balanced@0.2/14",
    # 29 epochs of a fifth: the same within 30 % of none/20's compute; a third for 19 epochs costs as much
    "random@0.2/29", "balanced@0.2/29", "balanced@0.3/19",
    # the port's diagnosis (docs/curation.md): CheXficient's warm-up training, and FPS against random picks
    "prototype@0.2:warmup_epochs=2/10", "prototype@0.2:sampling=random/10",
    "prototype@0.2:warmup_epochs=2,sampling=random/10",
)
GOAL_GAP = 0.01  # within this of the reference's test reliable mean
GOAL_COMPUTE = 0.30  # at most this fraction of the reference's compute


def parse_point(spec: str) -> dict:
    """``name[@B][:opts]/E`` -> data_efficiency's arm dict plus ``epochs``, ``family`` and ``level`` (B x E:
    the epochs' worth of full-data passes it trains, before selection and caching costs)."""
    head, slash, e = spec.rpartition("/")
    if not slash or not e.isdigit() or int(e) < 1:
        raise SystemExit(f"--arms {spec!r}: give name[@budget][:options]/EPOCHS, e.g. balanced@0.2/15 or none/10")
    arm = de.parse_arm(head, 0.2)
    arm.update(epochs=int(e), family=arm["tag"], tag=f"{arm['tag']}/{e}", level=round(arm["budget"] * int(e), 3))
    return arm


def parts(split_seed: int = 0) -> dict | None:
    """{"train", "val", "test"} manifests (see the module docstring); None without the shared data."""
    from cxrfm.data.splits import split_patients

    split = de.dev_eval_split(0.25, split_seed)
    if split is None:
        return None
    dev, val = split
    names = split_patients(dev, (2 / 3, 1 / 3), seed=split_seed, names=("train", "test"))
    return {"train": dev.subset(np.flatnonzero(names == "train")),
            "val": val, "test": dev.subset(np.flatnonzero(names == "test"))}


def run_point(arm: dict, seed: int, data: dict, args) -> dict:
    from cxrfm import RunDir, evaluate, pretrain

    run_dir = args.out / "runs" / de.run_name(arm["family"], arm["epochs"], {}) / f"seed{seed}"
    t0 = time.perf_counter()
    pretrain(data["train"], run_dir, config=args.config, curate=arm["curate"], budget=arm["budget"],
             epochs=arm["epochs"], seed=seed, resume=True, curator_kwargs=arm["kwargs"], progress=args.progress,
             cache_dir=args.cache_dir)
    t_train = time.perf_counter() - t0
    scores = {}
    for part in ("val", "test"):
        res = evaluate(run_dir, data[part], tasks=("zeroshot",), seed=0, n_boot=args.n_boot, progress=False,
                       cache_dir=args.cache_dir)
        cell = de.cells(res["tasks"]["zeroshot"])
        scores[part] = {"reliable_mean": de.reliable_mean(cell), "adult_mean": de.adult_mean(cell), "cells": cell}
    cur = RunDir(run_dir).read_curation()
    return {"arm": arm["tag"], "family": arm["family"], "epochs": arm["epochs"], "budget": arm["budget"],
            "level": arm["level"], "seed": seed, "config": args.config,
            "data_fraction": cur["data_fraction"], "compute_units": cur.get("compute_units"),
            "val": scores["val"], "test": scores["test"],
            "train_s": round(t_train, 1), "wall_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- analysis (pure: tests/test_frontier.py)
def by_arm(rows: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        out.setdefault(r["arm"], {})[r["seed"]] = r
    return out


def score(r: dict, part: str) -> float | None:
    return r[part]["reliable_mean"]


def choose_reference(rows: list[dict], tie: float = 0.005) -> tuple[str, dict[str, float]] | None:
    """The full-data schedule to count compute against, chosen on the validation part: the highest mean
    validation reliable mean over seeds, or the cheapest ``none`` schedule within ``tie`` of it.
    Returns (arm tag, {tag: validation mean}) or None without ``none`` rows."""
    arms = by_arm(rows)
    val = {}
    for tag, seeds in arms.items():
        if not tag.startswith("none/"):
            continue
        v = [score(r, "val") for r in seeds.values() if score(r, "val") is not None]
        if v:
            val[tag] = float(np.mean(v))
    if not val:
        return None
    best = max(val.values())
    cheapest = min((t for t, v in val.items() if v >= best - tie), key=lambda t: int(t.split("/")[1]))
    return cheapest, val


def paired(a: dict[int, dict], b: dict[int, dict], part: str = "test") -> tuple[float, tuple | None, int] | None:
    """Mean paired difference a - b over the seeds both have, its 95 % t-interval, and the seed count."""
    seeds = sorted(set(a) & set(b))
    d = np.array([score(a[s], part) - score(b[s], part) for s in seeds
                  if score(a[s], part) is not None and score(b[s], part) is not None])
    if not len(d):
        return None
    return float(d.mean()), de.t_interval(d), len(d)


def compute_of(seeds: dict[int, dict], ref: dict[int, dict]) -> float | None:
    """Mean over seeds of this arm's compute units / the reference's (same seed)."""
    f = [seeds[s]["compute_units"] / ref[s]["compute_units"] for s in seeds
         if s in ref and seeds[s].get("compute_units") and ref[s].get("compute_units")]
    return float(np.mean(f)) if f else None


def _at_or_above(arms: dict[str, dict[int, dict]], prefix: str, level: float) -> str | None:
    """The arm of this family (``none/`` or ``random@``) at the smallest level (pairs fraction x epochs)
    at or above ``level``: the comparator spends at least as much training compute as the point."""
    cands = [(next(iter(s.values()))["level"], t) for t, s in arms.items() if t.startswith(prefix)]
    cands = sorted((lv, t) for lv, t in cands if lv >= level - 1e-9)
    return cands[0][1] if cands else None


def frontier(rows: list[dict], tie: float = 0.005) -> dict | None:
    """Everything the tables, the plot and the goal check need: per arm its compute fraction of the
    reference, test mean/sd, paired Δ to the reference, and at its level (B x E) the paired Δ to random
    at the same budget's level and to all pairs for fewer epochs (``none/level``)."""
    chosen = choose_reference(rows, tie)
    if chosen is None:
        return None
    ref_tag, val_means = chosen
    arms = by_arm(rows)
    ref = arms[ref_tag]
    out = {"reference": ref_tag, "val_means": val_means, "arms": {}}
    for tag, seeds in arms.items():
        t = [score(r, "test") for r in seeds.values() if score(r, "test") is not None]
        v = [score(r, "val") for r in seeds.values() if score(r, "val") is not None]
        any_row = next(iter(seeds.values()))
        level = any_row["level"]
        same_none = _at_or_above(arms, "none/", level)
        same_random = _at_or_above(arms, "random@", level)
        out["arms"][tag] = {
            "family": any_row["family"], "epochs": any_row["epochs"], "budget": any_row["budget"], "level": level,
            "seeds": len(seeds), "data_fraction": float(np.mean([r["data_fraction"] for r in seeds.values()])),
            "compute": compute_of(seeds, ref),
            "val_mean": float(np.mean(v)) if v else None,
            "test_mean": float(np.mean(t)) if t else None, "test_sd": float(np.std(t, ddof=1)) if len(t) > 1 else None,
            "adult_mean": float(np.mean([r["test"]["adult_mean"] for r in seeds.values()
                                         if r["test"]["adult_mean"] is not None] or [np.nan])),
            "vs_reference": paired(seeds, ref),
            "vs_none_same_compute": (paired(seeds, arms[same_none]) if same_none and not tag.startswith("none/")
                                     else None),
            "vs_random_same_compute": (paired(seeds, arms[same_random]) if same_random
                                       and not tag.startswith(("random@", "none/")) else None),
            "same_compute_as": {"none": same_none, "random": same_random},
            "wall_s": float(np.mean([r["wall_s"] for r in seeds.values()])),
        }
    return out


def goal_check(f: dict, family: str) -> dict:
    """CheXficient's goal for one curator family (e.g. ``balanced@0.2``): some point within GOAL_GAP of the
    reference at <= GOAL_COMPUTE of its compute, and at every level above random and above all pairs for
    fewer epochs with the paired CI excluding 0."""
    pts = {t: a for t, a in f["arms"].items() if a["family"] == family}
    within = [t for t, a in pts.items() if a["compute"] is not None and a["compute"] <= GOAL_COMPUTE
              and a["vs_reference"] and a["vs_reference"][0] >= -GOAL_GAP]

    def beats(a, key):
        d = a[key]
        return bool(d and d[1] and d[1][0] > 0)

    return {"family": family, "points": sorted(pts), "within_gap_at_compute": within,
            "above_random_everywhere": all(beats(a, "vs_random_same_compute") for a in pts.values()),
            "above_none_everywhere": all(beats(a, "vs_none_same_compute") for a in pts.values()
                                         if a["vs_none_same_compute"] is not None)}


def versus(rows: list[dict], other: str) -> list[tuple[str, float | None, tuple | None]]:
    """Each arm against another full-data arm (e.g. the preset's ``none/10``, what ``cxrfm pretrain --curate
    none`` trains): (arm, compute / that arm's, paired test Δ)."""
    arms = by_arm(rows)
    if other not in arms:
        return []
    return [(tag, compute_of(seeds, arms[other]), paired(seeds, arms[other])) for tag, seeds in sorted(arms.items())
            if tag != other]


def _delta(d) -> str:
    if not d:
        return "-"
    mean, ci, n = d
    return f"{mean:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " [n<2]")


def format_tables(f: dict, rows: list[dict] | None = None, preset: str | None = None) -> str:
    ref = f["reference"]
    lines = ["validation part (chooses the reference): mean reliable mean of the full-data schedules",
             "  " + "  ".join(f"{t} {v:.3f}" for t, v in sorted(f["val_means"].items(),
                                                                key=lambda kv: int(kv[0].split("/")[1]))),
             f"reference = {ref} (highest validation mean, or the cheapest schedule within the tie of it)", "",
             "test part; compute = units / the reference's (same seed); Δ paired over seeds, 95 % t-interval",
             f"{'arm':<24} {'seeds':>5} {'data':>5} {'compute':>8} {'val':>6} {'test ± sd':>14} "
             f"{'Δ vs reference':>24} {'Δ vs random, same':>24} {'Δ vs all pairs, same':>24} {'adult':>6} {'s':>5}"]
    order = sorted(f["arms"].items(), key=lambda kv: (kv[1]["family"] != "none", kv[1]["family"], kv[1]["level"]))
    for tag, a in order:
        sd = f" ± {a['test_sd']:.3f}" if a["test_sd"] is not None else ""
        lines.append(
            f"{tag:<24} {a['seeds']:>5} {a['data_fraction']:>5.2f} "
            f"{(a['compute'] if a['compute'] is not None else float('nan')):>8.3f} "
            f"{(a['val_mean'] if a['val_mean'] is not None else float('nan')):>6.3f} "
            f"{(a['test_mean'] if a['test_mean'] is not None else float('nan')):>6.3f}{sd:<8} "
            f"{('(reference)' if tag == ref else _delta(a['vs_reference'])):>24} "
            f"{_delta(a['vs_random_same_compute']):>24} {_delta(a['vs_none_same_compute']):>24} "
            f"{a['adult_mean']:>6.3f} {a['wall_s']:>5.0f}")
    lines.append("")
    for fam in sorted({a["family"] for a in f["arms"].values()} - {"none"}):
        if fam.startswith("random@"):
            continue
        g = goal_check(f, fam)
        lines.append(f"goal, {fam}: within {GOAL_GAP} of {ref} at <= {GOAL_COMPUTE:.0%} of its compute: "
                     f"{', '.join(g['within_gap_at_compute']) or 'no point'}; above random at every level: "
                     f"{'yes' if g['above_random_everywhere'] else 'no'}; above all pairs for fewer epochs at "
                     f"every level: {'yes' if g['above_none_everywhere'] else 'no'}")
    vs = versus(rows or [], preset) if preset and preset != ref else []
    if vs:
        lines += ["", f"against {preset} (the preset's schedule: what `cxrfm pretrain --curate none` trains), test part:",
                  f"{'arm':<50} {'compute':>8} {'Δ [95% CI]':>26}"]
        lines += [f"{tag:<50} {c if c is not None else float('nan'):>8.3f} {_delta(d):>26}" for tag, c, d in vs
                  if not tag.startswith("none/")]
    return "\n".join(lines)


def plot(f: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ref = f["arms"][f["reference"]]
    ax.axhspan(ref["test_mean"] - GOAL_GAP, ref["test_mean"] + GOAL_GAP, color="0.85", zorder=0,
               label=f"reference {f['reference']} ± {GOAL_GAP}")
    ax.axvline(GOAL_COMPUTE, color="0.5", ls=":", lw=1)
    for fam in sorted({a["family"] for a in f["arms"].values()}):
        pts = sorted((a for a in f["arms"].values() if a["family"] == fam and a["compute"] is not None),
                     key=lambda a: a["compute"])
        x = [a["compute"] for a in pts]
        y = [a["test_mean"] for a in pts]
        err = [1.96 * (a["test_sd"] or 0) / np.sqrt(a["seeds"]) for a in pts]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, lw=1.2, label=fam)
        for a in pts:
            ax.annotate(str(a["epochs"]), (a["compute"], a["test_mean"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compute / reference run's compute (log; labels = epochs)")
    ax.set_ylabel("test reliable mean (within-source AUROC)")
    ax.set_title("Compute frontier, test part (mean ± 95 % CI over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(f: dict, png: Path, out: Path, command: str, rows: list[dict] | None = None,
                 preset: str | None = None) -> Path:
    from cxrfm.reporting.markup import CSS, esc, img_bytes

    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>cxrfm compute frontier</title>"
            f"<style>{CSS}</style></head><body><main><h1>Curation: compute frontier</h1>"
            f"<p class='note'>{esc(command)}</p>{img_bytes(png.read_bytes(), 'compute frontier')}"
            f"<pre>{esc(format_tables(f, rows, preset))}</pre></main></body></html>\n")
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Parts, reference and score: see the module docstring (python -m pydoc).")
    p.add_argument("--seeds", type=int, default=10, help="paired seeds first..first+N-1 (default 10)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS),
                   help="points name[@budget][:options]/EPOCHS (default: the grid in DEFAULT_ARMS)")
    p.add_argument("--out", type=Path, default=Path("runs/frontier"))
    p.add_argument("--config", default="tiny-cpu")
    p.add_argument("--tie", type=float, default=0.005,
                   help="full-data schedules within this of the best validation mean count as tied; the cheapest wins")
    p.add_argument("--preset-arm", default="none/10",
                   help="the full-data arm of the preset's own schedule, for the second table (default none/10)")
    p.add_argument("--n-boot", type=int, default=10, help="bootstrap resamples in evaluate (its CIs are not used)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--table-only", action="store_true", help="print the tables from results.jsonl, redraw, exit")
    args = p.parse_args(argv)

    points = [parse_point(a) for a in args.arms]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    done = {(r["arm"], r["seed"], r["config"]): r for r in de.read_done(log)}
    if not args.table_only:
        data = parts()
        if data is None:
            print("compute_frontier: shared data not found; set CXRFM_DATA to the folder holding cxr/manifest.csv",
                  file=sys.stderr)
            return 2
        print(f"train {len(data['train'])} pairs, validation {len(data['val'])}, test {len(data['test'])} images "
              f"(patient-disjoint); {len(points)} points x {len(seeds)} seeds", flush=True)
        for seed in seeds:
            for arm in points:
                k = (arm["tag"], seed, args.config)
                if k in done:
                    continue
                r = run_point(arm, seed, data, args)
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(r) + "\n")
                done[k] = r
                print(f"  {arm['tag']:<22} seed {seed:>2}: val {r['val']['reliable_mean']:.3f} test "
                      f"{r['test']['reliable_mean']:.3f} data {r['data_fraction']:.3f} units "
                      f"{r['compute_units']:.0f} {r['wall_s']:.0f} s", flush=True)
    tags = {a["tag"] for a in points}
    rows = [r for k, r in done.items() if k[0] in tags and k[1] in seeds and k[2] == args.config]
    f = frontier(rows, args.tie)
    if f is None:
        print("no full-data (none/E) rows yet: nothing to count compute against")
        return 1
    print()
    print(format_tables(f, rows, args.preset_arm))
    png = plot(f, args.out / "frontier.png")
    (args.out / "frontier.json").write_text(json.dumps(f, indent=1), encoding="utf-8")
    rep = write_report(f, png, args.out / "report.html", "python benchmarks/compute_frontier.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), rows, args.preset_arm)
    print(f"\nwrote {png}, {rep}, {args.out / 'frontier.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
