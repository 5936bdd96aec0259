"""Why the CheXficient port (`prototype`) learns the opposite of the labels: what its bands keep.

Reads the `prototype` runs of `benchmarks/compute_frontier.py` (same ``--out``): their kept ids
(``curation.json``) and the curator's per-row record of nearest prototype and band at the first visit
(``state/curator-*.safetensors``: ``row_cluster``, ``row_band``). For each prototype arm, over its seeds:

* **composition**: kept share of each group / the budget (1.00 = as a random subset): the pediatric source
  (kermany-pediatric-cxr, the reliable mean's cells) by label set, and each adult source;
* **bands**: the share of rows in the core / periphery / tail / outlier band and the chance each is kept;
  per pediatric label set, the share of its rows in the tail or outlier bands;
* **clusters**: normalised mutual information of the epoch-0 clusters with the source, and (pediatric rows)
  with the label set: do the clusters sort by source rather than content?
* **inversions**: per pediatric cell, the mean test AUROC and in how many seeds it is below 0.5, for every
  arm of the frontier: is the inversion the port's, or any small subset's?
* **replay** (``--replay``): the port's final kept set trained as a fixed subset from epoch 0 (as ``random``
  trains its subset), same seeds: separates *which* pairs the port keeps from *how* it trains in its
  curation epoch (per-batch selection: about a fifth of each batch gets a loss).
* **source mix of the pneumonia texts**: among the kept pairs whose labels name Pneumonia, the share from
  adult sources (COVID-19 and NIH films), per run, against the run's pediatric Pneumonia AUROC (Spearman over
  every 10-epoch run of 20 % of the pairs): whether a subset that teaches "pneumonia" on adult films
  learns the pediatric contrast the wrong way round.
* **typicality**: the mean percentile of the kept rows' 16x16-thumbnail distance to their group's mean
  thumbnail (0.50 = as random; above = the kept images are the group's odd ones, as in the
  ``pixel-atypical`` probe of benchmarks/subset_probes.py, which inverts the same cells).

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/prototype_diagnosis.py --out runs/frontier
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compute_frontier as cf  # noqa: E402
import data_efficiency as de  # noqa: E402

BANDS = ("core", "periphery", "tail", "outlier")
CELLS = ("Pneumonia", "No Finding", "Viral pneumonia")
REPLAY = {}  # set in main(): the frontier's runs folder and the train part's id -> row


def replay_curator():
    """A fixed subset read from another run of the same seed (``arm`` = its folder under OUT/runs)."""
    from subset_probes import _Fixed

    from cxrfm.train import curation

    class Replay(_Fixed):
        name = "replay"

        def __init__(self, context, arm: str = "prototype@0.2_epochs10", **options):
            super().__init__(context, **options)
            self.kept = kept_mask(REPLAY["root"] / arm / f"seed{context.seed}", REPLAY["row_of"], self.n)

    if "replay" not in curation.CURATORS:
        curation.register_curator(Replay)
    return Replay


def inversions(rows: list[dict]) -> str:
    """Per arm: mean test AUROC of each pediatric reliable cell and the seeds where it is below 0.5."""
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r["arm"], []).append(r)
    lines = [f"{'arm (test part)':<50} {'seeds':>5} " + " ".join(f"{c[:15]:>22}" for c in CELLS)]
    for arm, rs in sorted(arms.items()):
        vals = []
        for c in CELLS:
            v = [r["test"]["cells"].get(f"{c}|{de.PEDIATRIC}") for r in rs]
            v = [x for x in v if x is not None]
            vals.append(f"{np.mean(v):.3f} ({sum(x < 0.5 for x in v)} below 0.5)" if v else "-")
        lines.append(f"{arm:<50} {len(rs):>5} " + " ".join(f"{x:>22}" for x in vals))
    return "\n".join(lines)


def groups_of(table) -> np.ndarray:
    """Per row: 'ped:<label set>' for the pediatric source, else the source name."""
    ped = (table["source"] == de.PEDIATRIC).to_numpy()
    labels = table["labels"].fillna("").astype(str).to_numpy()
    src = table["source"].astype(str).to_numpy()
    return np.where(ped, np.char.add("ped:", labels.astype(str)), src)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(a, b))


def typicality_percentile(thumbs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per row: the percentile (0..1) of its thumbnail's distance to its group's mean thumbnail."""
    out = np.zeros(len(groups))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        centre = thumbs[idx].mean(axis=0)
        d = np.linalg.norm(thumbs[idx] - centre, axis=1)
        out[idx] = (np.argsort(np.argsort(d)) + 0.5) / len(idx)
    return out


def kept_mask(run: Path, row_of: dict[str, int], n: int) -> np.ndarray:
    """(n,) bool: the rows of the train part a finished run kept (its curation.json's kept ids)."""
    cur = json.loads((run / "curation.json").read_text(encoding="utf-8"))
    kept = np.zeros(n, dtype=bool)
    kept[[row_of[i] for i in cur["kept_ids"]]] = True
    return kept


def read_run(run: Path, row_of: dict[str, int], n: int) -> dict | None:
    from cxrfm import RunDir

    if not (run / "curation.json").exists():
        return None
    rd = RunDir(run)
    out = {"kept": kept_mask(run, row_of, n), "budget": rd.read_curation()["budget"]}
    if rd.trainer_state.exists():  # the checkpoint's committed curator file (save_checkpoint names it there)
        from safetensors.numpy import load_file

        files = json.loads(rd.trainer_state.read_text(encoding="utf-8"))["files"]
        st = load_file(str(rd.state_dir / files["curator"]))
        if "curator.row_band" in st and len(st["curator.row_band"]) == n:
            out["band"] = st["curator.row_band"].astype(int)
            out["cluster"] = st["curator.row_cluster"].astype(int)
    return out


def diagnose(runs: list[dict], groups: np.ndarray, sources: np.ndarray, typ: np.ndarray) -> dict:
    ped = np.char.startswith(groups.astype(str), "ped:")
    res = {"seeds": len(runs), "composition": {}, "typicality_kept": float(np.mean([typ[r["kept"]].mean()
                                                                                    for r in runs]))}
    for g in np.unique(groups):
        res["composition"][str(g)] = float(np.mean([r["kept"][groups == g].mean() / r["budget"] for r in runs]))
    banded = [r for r in runs if "band" in r]
    res["seeds_with_bands"] = len(banded)
    if banded:
        res["band_share"] = {b: float(np.mean([(r["band"] == i).mean() for r in banded])) for i, b in enumerate(BANDS)}
        res["kept_given_band"] = {b: float(np.nanmean([r["kept"][r["band"] == i].mean() if (r["band"] == i).any()
                                                       else np.nan for r in banded])) for i, b in enumerate(BANDS)}
        res["tail_or_outlier_share"] = {str(g): float(np.mean([(r["band"][groups == g] >= 2).mean() for r in banded]))
                                        for g in np.unique(groups[ped])}
        res["nmi_cluster_source"] = float(np.mean([nmi(r["cluster"], sources) for r in banded]))
        res["nmi_cluster_label_pediatric"] = float(np.mean([nmi(r["cluster"][ped], groups[ped]) for r in banded]))
    return res


def adult_pneumonia_share(kept: np.ndarray, table) -> float:
    """Among kept rows whose labels name Pneumonia, the share not from the pediatric source."""
    pneu = table["labels"].fillna("").astype(str).str.contains("Pneumonia").to_numpy()
    adult = (table["source"] != de.PEDIATRIC).to_numpy()
    m = kept & pneu
    return float(adult[m].mean()) if m.any() else float("nan")


def normal_share(kept: np.ndarray, table) -> float:
    """Among kept pediatric rows, the share labelled No Finding / Normal."""
    ped = (table["source"] == de.PEDIATRIC).to_numpy()
    lab = table["labels"].fillna("").astype(str)
    normal = (~lab.str.contains("Pneumonia")).to_numpy()
    m = kept & ped
    return float(normal[m].mean()) if m.any() else float("nan")


def mix_against_inversion(rows: list[dict], runs_root: Path, row_of: dict, table) -> str:
    """Spearman of two kept-set mixes (the adult share of the pneumonia pairs, the normal share of the
    pediatric pairs) against the pediatric Pneumonia AUROC, over runs."""
    from scipy.stats import spearmanr

    pts, per_arm = [], {}
    for r in rows:
        if r.get("epochs") != 10 or abs(r.get("budget", 0) - 0.2) > 1e-9:
            continue
        folder = runs_root / de.run_name(r["family"], r["epochs"], {}) / f"seed{r['seed']}"
        run = read_run(folder, row_of, len(table))
        auc = r["test"]["cells"].get(f"Pneumonia|{de.PEDIATRIC}")
        if run is None or auc is None:
            continue
        point = (adult_pneumonia_share(run["kept"], table), normal_share(run["kept"], table), auc)
        pts.append(point)
        per_arm.setdefault(r["arm"], []).append(point)
    if len(pts) < 3:
        return "source mix: too few runs"
    a = np.array(pts)
    everything = np.ones(len(table), bool)
    lines = [f"kept-set mix vs pediatric Pneumonia AUROC (test), {len(pts)} runs of 20 % for 10 epochs (Spearman):"]
    for j, name, pool in ((0, "adult share of the Pneumonia pairs", adult_pneumonia_share(everything, table)),
                          (1, "normal share of the pediatric pairs", normal_share(everything, table))):
        rho, pval = spearmanr(a[:, j], a[:, 2])
        lines.append(f"  {name}: rho {rho:+.3f} (p = {pval:.2g}); whole train part {pool:.3f}")
    for arm, v in sorted(per_arm.items()):
        b = np.array(v)
        lines.append(f"  {arm:<50} adult {b[:, 0].mean():.3f}  normal {b[:, 1].mean():.3f}  Pneumonia AUROC "
                     f"{b[:, 2].mean():.3f}  ({len(b)} runs)")
    return "\n".join(lines)


def format_report(name: str, d: dict, scores: dict | None) -> str:
    lines = [f"{name}: {d['seeds']} seeds" + (f"; test reliable mean {scores['test']:.3f}, validation "
                                               f"{scores['val']:.3f}" if scores else "")]
    lines.append("  kept share / budget: " + ", ".join(f"{g} {v:.2f}" for g, v in sorted(d["composition"].items())))
    lines.append(f"  kept rows' thumbnail atypicality percentile within their group: {d['typicality_kept']:.3f} "
                 f"(0.500 = random)")
    if d.get("seeds_with_bands"):
        lines.append("  band share of rows: " + ", ".join(f"{b} {v:.3f}" for b, v in d["band_share"].items()))
        lines.append("  P(kept | band): " + ", ".join(f"{b} {v:.3f}" for b, v in d["kept_given_band"].items()))
        lines.append("  pediatric rows in the tail or outlier bands: " + ", ".join(
            f"{g[4:] or '(none)'} {v:.3f}" for g, v in sorted(d["tail_or_outlier_share"].items())))
        lines.append(f"  NMI(cluster, source) {d['nmi_cluster_source']:.3f}; NMI(cluster, pediatric label set) "
                     f"{d['nmi_cluster_label_pediatric']:.3f} ({d['seeds_with_bands']} seeds with the band record)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/frontier"), help="the compute_frontier.py output folder")
    p.add_argument("--replay", nargs="*", default=[], metavar="FOLDER",
                   help="train these runs' kept sets (folders under OUT/runs, e.g. prototype@0.2_epochs10) as fixed "
                        "subsets for 10 epochs, for every seed they have; results in OUT/diagnosis_results.jsonl")
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)
    data = cf.parts()
    if data is None:
        print("prototype_diagnosis: shared data not found; set CXRFM_DATA", file=sys.stderr)
        return 2
    train = data["train"]
    table = train.table.reset_index(drop=True)
    row_of = {i: k for k, i in enumerate(train.ids)}
    groups = groups_of(table)
    sources = table["source"].astype(str).to_numpy()
    from subset_probes import thumbnails

    typ = typicality_percentile(thumbnails(train), groups)
    REPLAY.update(root=args.out / "runs", row_of=row_of)
    log = args.out / "diagnosis_results.jsonl"
    done = {(r["arm"], r["seed"]) for r in de.read_done(log)}
    for folder in args.replay:
        replay_curator()
        arm = cf.parse_point(f"replay@0.2:arm={folder}/10")
        for seed_dir in sorted((args.out / "runs" / folder).glob("seed*"), key=lambda q: int(q.name[4:])):
            seed = int(seed_dir.name[4:])
            if (arm["tag"], seed) in done or not (seed_dir / "curation.json").exists():
                continue
            run_args = argparse.Namespace(out=args.out, config="tiny-cpu", progress=False, cache_dir=args.cache_dir,
                                          n_boot=10)
            r = cf.run_point(arm, seed, data, run_args)
            with log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"  {arm['tag']} seed {seed}: test {r['test']['reliable_mean']:.3f}", flush=True)
    rows = de.read_done(args.out / "results.jsonl") + de.read_done(log)
    print(inversions(rows))
    print()
    print(mix_against_inversion(rows, args.out / "runs", row_of, table))
    print()
    out = {}
    for folder in sorted((args.out / "runs").glob("prototype*")):
        runs = [r for r in (read_run(s, row_of, len(table)) for s in sorted(folder.glob("seed*"))) if r]
        if not runs:
            continue
        d = diagnose(runs, groups, sources, typ)
        arm = next((r["arm"] for r in rows if de.run_name(r["family"], r["epochs"], {}) == folder.name), folder.name)
        sc = [r for r in rows if r["arm"] == arm]
        scores = ({"test": float(np.mean([r["test"]["reliable_mean"] for r in sc])),
                   "val": float(np.mean([r["val"]["reliable_mean"] for r in sc]))} if sc else None)
        out[arm] = {**d, "scores": scores}
        print(format_report(arm, d, scores))
    for g in ("random@0.2/10", "balanced@0.2/10"):
        folder = args.out / "runs" / de.run_name(g.split("/")[0], int(g.split("/")[1]), {})
        runs = [r for r in (read_run(s, row_of, len(table)) for s in sorted(folder.glob("seed*"))) if r]
        if runs:
            d = diagnose(runs, groups, sources, typ)
            out[g] = d
            print(format_report(g + " (for comparison)", d, None))
    (args.out / "prototype_diagnosis.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
