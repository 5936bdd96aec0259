"""Which properties of a 20 % subset matter? Probe subsets that no curator could pick, scored like curators.

`benchmarks/data_efficiency.py` compares curators; this asks *why* one subset trains better than another,
with probe "curators" that are allowed to look at things a curator must not (the source and the labels)
or that pick on purpose what a curator would avoid. Each is registered under a probe name for this
process only and run through `data_efficiency.main`, so the table, the paired seeds and the
resumability are the same (give the same ``--out`` to reuse finished ``none`` / ``random`` rows).

Probes (all at the same budget, fixed from epoch 0):

* ``oracle-pediatric``: only pediatric (kermany-pediatric-cxr) pairs, in equal shares of its three
  label sets (normal, bacterial, viral pneumonia): a *composition* aimed at the reliable mean, read off
  the labels and the source. ``oracle-pediatric:share=0.6`` gives the pediatric set 60 % of the budget
  and the adult sets the rest at random.
* ``pixel-typical`` / ``pixel-atypical``: `balanced`'s text clusters and quotas, then inside each cluster
  the images whose 16x16 thumbnail (per-image standardised) is nearest to / farthest from the cluster's
  mean thumbnail. Model-free image typicality: `atypical` is what keeping a cluster's tail does when the
  image tower cannot yet tell a rare finding from an odd exposure or crop (CheXficient's port at epoch 0).

    CXRFM_DATA=/work/shared/data .venv/bin/python benchmarks/subset_probes.py --seeds 15 \\
        --arms none random oracle-pediatric pixel-typical pixel-atypical --out runs/bench_de_central
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_efficiency  # noqa: E402

from cxrfm.train import curation  # noqa: E402

# the dev part the curators see (set in main() before any run; curator row i = dev row i, as every
# dev row has a label-derived text)
DEV: dict = {}


def _check_rows(n: int) -> None:
    if n != len(DEV["table"]):
        raise RuntimeError(f"probe curator got {n} rows, the dev part has {len(DEV['table'])}: "
                           f"the probes assume every dev row has a text")


class _Fixed(curation.Curator):
    """A subset fixed at construction (``self.kept``)."""

    def epoch_rows(self, epoch: int) -> np.ndarray:
        return np.flatnonzero(self.kept)

    def kept_rows(self) -> np.ndarray:
        return np.flatnonzero(self.kept)


class OraclePediatric(_Fixed):
    name = "oracle-pediatric"

    def __init__(self, context: curation.CurationContext, share: float = 1.0, **options):
        super().__init__(context, **options)
        n = self.n
        _check_rows(n)
        df = DEV["table"]
        target = context.target
        ped = (df["source"] == data_efficiency.PEDIATRIC).to_numpy()
        labels = df["labels"].fillna("").astype(str).to_numpy()
        groups = sorted(set(labels[ped]))
        quota = curation.water_fill(np.array([np.sum(ped & (labels == g)) for g in groups]),
                                    int(round(target * share)), alpha=0.0)
        self.kept = np.zeros(n, dtype=bool)
        for g, q in zip(groups, quota):
            self.kept[self.rng.choice(np.flatnonzero(ped & (labels == g)), int(q), replace=False)] = True
        rest = target - int(self.kept.sum())
        if rest > 0:
            self.kept[self.rng.choice(np.flatnonzero(~ped), rest, replace=False)] = True


def thumbnails(manifest, size: int = 128, side: int = 16) -> np.ndarray:
    """(N, side*side) per-image standardised, L2-normalised thumbnails from the image cache."""
    from cxrfm import ImageCache

    cache = ImageCache.build(manifest, size=size, progress=False)
    return np.concatenate([curation.thumbnail_features(cache.array[start:start + 256], side)
                           for start in range(0, len(cache), 256)])


class _PixelTypicality(curation.BalancedCurator):
    """`balanced`'s clusters and quotas; inside a cluster, ranked by thumbnail cosine to the cluster mean."""

    nearest = True

    def _select_subset(self, embed) -> None:
        _check_rows(self.n)
        space = curation.normalise(np.asarray(self.text_features(), dtype=np.float32))
        thumbs = DEV["thumbs"]
        self.cluster = curation.kmeans_plus_plus_labels(space, self.n_clusters, self.seed)
        k = int(self.cluster.max()) + 1
        quota = curation.water_fill(np.bincount(self.cluster, minlength=k),
                                    self.context.target, self.alpha)
        for c in range(k):
            pool = np.flatnonzero(self.cluster == c)
            centre = curation.normalise(thumbs[pool].mean(axis=0, keepdims=True))[0]
            score = thumbs[pool] @ centre  # (m,) cosine to the cluster's mean thumbnail
            order = np.lexsort((self.rng.permutation(len(pool)), -score if self.nearest else score))
            self.kept[pool[order[:int(quota[c])]]] = True
        self.active = self.kept.copy()
        self.selected = True


class PixelTypical(_PixelTypicality):
    name = "pixel-typical"


class PixelAtypical(_PixelTypicality):
    name = "pixel-atypical"
    nearest = False


PROBES = (OraclePediatric, PixelTypical, PixelAtypical)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--table-only" not in argv and "-h" not in argv and "--help" not in argv:
        import argparse

        split = argparse.ArgumentParser(add_help=False)  # the dev part data_efficiency will train on
        split.add_argument("--eval-fraction", type=float, default=0.25)
        split.add_argument("--split-seed", type=int, default=0)
        known, _ = split.parse_known_args(argv)
        split = data_efficiency.dev_eval_split(known.eval_fraction, known.split_seed)
        if split is None:
            raise SystemExit("subset_probes: shared data not found; set CXRFM_DATA to the folder holding "
                             "cxr/manifest.csv")
        train = split[0]
        DEV["table"] = train.table.reset_index(drop=True)
        DEV["thumbs"] = thumbnails(train)
    for cls in PROBES:
        curation.register_curator(cls)
    return data_efficiency.main(argv)


if __name__ == "__main__":
    sys.exit(main())
