"""Dead features of the concepts SAE on a run's embeddings: the settings study behind docs/concepts.md.

Embeds a split manifest's images with the run (``cxrfm split`` writes the ``split`` column), trains the
SAE the ``concepts`` task would train (:func:`cxrfm.tasks.concepts.task_sae_config`, with ``--set``
overrides) on the ``train`` rows for each seed, and scores it on ``--part`` (``val`` to choose settings;
``test`` only once, for the figures reported):

- ``dead``: features that fire on none of the part's rows (the issue's measure, ``tasks.concepts.dead_fraction``);
- ``dead_train``: features that fire on none of the training rows;
- ``rare``: features firing on under 1 % of the part's rows (dead ones included);
- ``negligible``: features whose removal lowers the part's R² by under 1e-4 (dead ones included).

    OMP_NUM_THREADS=2 python benchmarks/sae_dead.py --model RUN --data SPLIT/manifest.csv --seeds 0,1,2 \\
        --set min_rate=0.0 --set min_rate=0.02

Each ``--set`` is one variant (comma-separated ``key=value`` pairs, values read as JSON); no ``--set``: the
defaults. One line per variant: the mean over seeds, then the per-seed dead fractions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cxrfm.data.schema import Manifest  # noqa: E402
from cxrfm.inference.sae import evaluate_sae, train_sae  # noqa: E402
from cxrfm.tasks.concepts import task_sae_config  # noqa: E402


def parse_variant(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key == "sizes":
            out[key] = tuple(int(v) for v in value.split("/"))
        else:
            out[key] = json.loads(value)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="run folder of `cxrfm pretrain`")
    p.add_argument("--data", required=True, type=Path, help="manifest with a `split` column (train/val/test)")
    p.add_argument("--part", default="val", choices=("val", "test"), help="rows the SAE is scored on")
    p.add_argument("--seeds", default="0,1,2", help="SAE seeds, comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="K=V[,K=V]",
                   help="one variant of the settings, e.g. min_rate=0.0 or sizes=8/32,k=8 (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=None)
    a = p.parse_args(argv)

    from cxrfm.models.dual import load_model
    from cxrfm.tasks.embed import embed_manifest

    manifest = Manifest.load(a.data)
    if "split" not in manifest.table.columns:
        raise SystemExit(f"{a.data}: no `split` column; write one with `cxrfm split {a.data} --out FOLDER`")
    parts = manifest.table["split"].astype(str).str.lower().to_numpy()
    emb = embed_manifest(load_model(a.model), manifest, cache_dir=a.cache_dir)
    tr, ev = emb[parts == "train"], emb[parts == a.part]
    seeds = [int(s) for s in a.seeds.split(",")]
    var = np.linalg.eigvalsh(np.cov(tr.T, dtype=np.float64))[::-1]
    share = np.cumsum(var) / var.sum()
    print(f"model {a.model}; train {len(tr)} rows, {a.part} {len(ev)} rows; seeds {seeds}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; principal components holding 95 % / 99 % of the "
          f"training embeddings' variance: {int(np.searchsorted(share, 0.95)) + 1} / {int(np.searchsorted(share, 0.99)) + 1}")
    for text in a.set or [""]:
        over = parse_variant(text)
        rows, t0 = [], time.time()
        for seed in seeds:
            cfg = dataclasses.replace(task_sae_config(len(tr), seed), **over)
            sae, _ = train_sae(tr, cfg)
            m, mt = evaluate_sae(sae, ev), evaluate_sae(sae, tr)
            rows.append((m["r2"], m["dead_fraction"], mt["dead_fraction"], m["rare_fraction"],
                         m["negligible_fraction"], m["mean_active"]))
        r = np.array(rows)
        cfg = dataclasses.replace(task_sae_config(len(tr), seeds[0]), **over)
        print(f"[{text or 'defaults'}] sizes {'/'.join(map(str, cfg.sizes))} k {cfg.k} epochs {cfg.epochs} "
              f"min_rate {cfg.min_rate}: {a.part} R2 {r[:, 0].mean():.4f}  dead {r[:, 1].mean():.3f}  "
              f"dead_train {r[:, 2].mean():.3f}  rare {r[:, 3].mean():.3f}  negligible {r[:, 4].mean():.3f}  "
              f"active {r[:, 5].mean():.1f}  | dead per seed {np.round(r[:, 1], 3).tolist()}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
