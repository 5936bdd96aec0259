"""Training commands: pretrain, shard."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import CxrfmError


# ---------------------------------------------------------------- pretrain
def _parse_key_values(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` strings -> dict; VALUE is read as JSON when it parses (numbers, lists, true), else text."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CxrfmError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} image_size=64")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _add_pretrain(sub):
    from ..config import list_presets
    from ..train.curation import list_curators
    from ..train.schedule import DEFAULT_COMPUTE_BUDGET

    p = sub.add_parser(
        "pretrain", help="pretrain a dual encoder while curating the data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Contrastive (CLIP/SigLIP) pretraining of an image tower against a text tower on the image-report "
                    "pairs of MANIFEST (its train split when it has a `split` column; rows without a report get a "
                    "pseudo-report from their labels), with a curator choosing which pairs to train on. Writes "
                    "OUT/config.json + model.safetensors (the model), status.json (step, finished, weights sha256), "
                    "training_data.json (manifest hash, patient ids), metrics.jsonl, curation.json (data_fraction, "
                    "compute_fraction, kept ids) and state/ (checkpoint). Ctrl-C or SIGTERM writes a checkpoint, as "
                    "does every train.checkpoint_every steps or train.checkpoint_every_s seconds; --resume continues "
                    "to the same result. A NaN/inf loss stops the run with exit status 2.",
        epilog="examples:\n"
               "  cxrfm pretrain --data data/manifest.csv --config tiny-cpu --curate prototype --budget 0.2 "
               "--epochs 10 --out runs/proto\n"
               "  cxrfm pretrain --data data/manifest.csv --curate none --out runs/full --set image_size=64\n"
               "  torchrun --nproc-per-node 2 -m cxrfm pretrain --data data/manifest.csv --out runs/ddp\n"
               "  torchrun --nproc-per-node 8 -m cxrfm pretrain --data data/shards --workers 8 --config base-gpu "
               "--out runs/big   (shards from `cxrfm shard`; docs/scale.md)")
    p.add_argument("--data", required=True, type=Path,
                   help="manifest (.csv/.parquet) of image-report pairs, or a folder written by `cxrfm shard` "
                        "(streamed: each rank and loader worker reads its own shards; docs/scale.md)")
    p.add_argument("--out", required=True, type=Path, help="run folder to write (or to continue with --resume)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --data SHARDS: loader processes per rank (default 0: decode in the training process)")
    p.add_argument("--shuffle-buffer", type=int, default=None,
                   help="with --data SHARDS: samples in each worker's shuffle buffer (default 1000)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters and optimiser state over the ranks with FSDP2 instead of "
                        "replicating them with DDP (for towers that do not fit one device; docs/scale.md)")
    p.add_argument("--config", default="tiny-cpu",
                   help=f"a preset ({', '.join(list_presets())}) or a config JSON / run folder (default tiny-cpu)")
    p.add_argument("--curate", default="balanced", choices=list_curators(),
                   help="how pairs are chosen: none = all pairs (the control), random = a seeded random subset, "
                        "prototype = CheXficient's prototype-driven online selection, balanced = a "
                        "cluster-balanced subset of the texts' MiniLM clusters that thins the large clusters, keeps "
                        "small ones whole and takes each cluster's most typical reports first (--curator-option "
                        "within=random draws them at random). Default balanced: the best of the curators in "
                        "benchmarks/data_efficiency.py (docs/curation.md)")
    p.add_argument("--budget", type=float, default=0.2,
                   help="target fraction of pairs to keep, in (0, 1] (default 0.2; ignored by none)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the config's for --curate none; for a curated run, see "
                        "--compute-budget)")
    p.add_argument("--compute-budget", default=None, metavar="FRACTION|off",
                   help="a curated run without --epochs trains its kept pairs for the most epochs whose compute stays "
                        f"within this share of the same preset on all pairs (default {DEFAULT_COMPUTE_BUDGET:g}: at "
                        "--budget 0.2 with tiny-cpu's 10 epochs, 29 epochs over the kept fifth, the cheapest schedule "
                        "that came within about 0.01 of all pairs on the validation part of "
                        "benchmarks/compute_frontier.py; within 0.3 a fifth stays about 0.1 below, docs/curation.md). "
                        "The choice is printed and saved in curation.json; `off` trains the preset's epochs")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds initial weights, data order, augmentation and curation (same seed = same start)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same settings and data required)")
    p.add_argument("--text-style", default="template", choices=["template", "sentences", "mixed"],
                   help="pseudo-reports for rows without a report: template sentences, real IU X-ray sentences "
                        "consistent with the labels, or a mix (default template)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set image_size=64 --set train.lr=0.001 (repeatable)")
    p.add_argument("--curator-option", dest="curator_options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the curator, e.g. --curator-option num_prototypes=16 (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    p.add_argument("--latents", type=Path, default=None, metavar="AE",
                   help="train on the latents of this autoencoder (from `cxrfm compress train`) instead of pixels: "
                        "the image tower becomes `latent` (the frozen AE encoder + a ConvNeXt on its latents) and "
                        "batches come from the latent cache in --cache-dir (written first when missing, as `cxrfm "
                        "compress encode` does); `cxrfm eval --model OUT` then works as for a pixel run (docs/latents.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from ..run import RunDir
    from ..train.loop import pretrain

    if args.latents is not None:
        from functools import partial

        from ..errors import ConfigError
        from ..train.compress import pretrain_on_latents

        if args.workers is not None or args.shuffle_buffer is not None:
            raise ConfigError("--latents reads the latent cache of a manifest; --workers / --shuffle-buffer apply "
                              "to shards only")
        pretrain = partial(pretrain_on_latents, ae=args.latents)
    out = pretrain(args.data, args.out, config=args.config, curate=args.curate, budget=args.budget,
                   compute_budget=_compute_budget(args.compute_budget),
                   epochs=args.epochs, seed=args.seed, resume=args.resume, text_style=args.text_style,
                   overrides=_parse_key_values(args.overrides, "--set"),
                   curator_kwargs=_parse_key_values(args.curator_options, "--curator-option"),
                   progress=args.progress, cache_dir=args.cache_dir,
                   fsdp=args.fsdp, **({} if args.latents is not None else {"stream": {
                       k: v for k, v in (("workers", args.workers), ("shuffle_buffer", args.shuffle_buffer))
                       if v is not None}}))
    if int(os.environ.get("RANK", "0")) == 0:
        run = RunDir(out)
        info, status = run.read_curation() or {}, run.status()
        full = info.get("compute_fraction_of_full_preset")
        print(f"run: {out}  step {status['step']}/{status['total_steps']}  finished {status['finished']}  "
              f"data_fraction {info.get('data_fraction', float('nan')):.3f}  "
              f"compute_fraction {info.get('compute_fraction', float('nan')):.3f}"
              + (f" (of all pairs for these {info.get('epochs')} epochs; {full:.3f} of the preset on all pairs)"
                 if full is not None else ""))
    return 0


def _compute_budget(value: str | None) -> float | None:
    """--compute-budget: None (default) -> the default fraction; 'off' -> None; else a float."""
    from ..errors import ConfigError
    from ..train.schedule import DEFAULT_COMPUTE_BUDGET

    if value is None:
        return DEFAULT_COMPUTE_BUDGET
    if str(value).strip().lower() in ("off", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--compute-budget {value!r}: give a fraction in (0, 1] such as 0.3, or off") from None


# ---------------------------------------------------------------- shard
def _add_shard(sub):
    p = sub.add_parser(
        "shard", help="pack a manifest's images and metadata into tar shards for streamed pretraining",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write OUT/shard-NNNNNN.tar in the WebDataset layout (per sample <key>.png, letterboxed to "
                    "--size and stored as 8-bit grey, then <key>.json: row, id, patient, source, report, labels), "
                    "OUT/manifest.parquet (the rows in shard order) and OUT/index.json (per shard: count, first row, "
                    "bytes, sha256), written last. `cxrfm pretrain --data OUT` streams them.",
        epilog="examples:\n"
               "  cxrfm shard data/manifest.csv --out data/shards --size 256 --per-shard 2000\n"
               "  torchrun --nproc-per-node 8 -m cxrfm pretrain --data data/shards --workers 8 --config base-gpu "
               "--out runs/big")
    p.add_argument("manifest", type=Path, help="manifest (.csv/.parquet) of image-report pairs")
    p.add_argument("--out", required=True, type=Path, help="new folder for the shards")
    p.add_argument("--size", type=int, default=256,
                   help="side of the stored square images in pixels (default 256; training resizes to its size)")
    p.add_argument("--per-shard", type=int, default=2000,
                   help="samples per shard (default 2000: ~60-100 MB at 256 px; use at least ranks x workers shards)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_shard)


def _run_shard(args) -> int:
    from ..data.shards import ShardSet, write_shards

    out = write_shards(args.manifest, args.out, size=args.size, per_shard=args.per_shard, progress=args.progress)
    shards = ShardSet.open(out)
    print(f"{out}: {shards.n_samples} samples in {len(shards.shards)} shards of <= {args.per_shard} at "
          f"{shards.size} px")
    return 0


COMMANDS = (_add_pretrain, _add_shard,)
