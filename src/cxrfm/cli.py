"""The ``cxrfm`` command line. Each subcommand is a thin layer over the public API.

Layout: one ``_add_<name>`` (argparse) and one ``_run_<name>`` (calls the library) per subcommand.
User errors (:class:`cxrfm.errors.CxrfmError`) print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import __version__  # noqa: E402
from .errors import CxrfmError  # noqa: E402

EPILOG = """examples:
  cxrfm ingest ../shared/data/cxr/manifest.csv --format manifest --out data/
  cxrfm label data/manifest.csv --out data/labels.csv
  cxrfm split data/manifest.csv --out data/ --seed 0
  cxrfm prepare data/manifest.csv --size 128
  cxrfm demo --out runs/demo
"""


# ---------------------------------------------------------------- ingest
def _add_ingest(sub):
    from .data.sources import list_layouts

    p = sub.add_parser(
        "ingest", help="read a dataset layout and write a validated manifest",
        description="Read images + reports/labels from a known layout and write DIR/manifest.csv "
                    "(one row per image, paths relative to DIR). Rows whose image is missing or does not decode "
                    "are skipped, counted, and kept with every column in DIR/skipped_rows.csv; raw labels cxrfm "
                    "cannot map keep their rows and are listed in DIR/unmapped_labels.csv. Never writes over "
                    "an input file.")
    p.add_argument("src", type=Path, help="the dataset root folder (or the manifest/CSV file for --format manifest)")
    p.add_argument("--format", required=True, choices=list_layouts(), help="the layout of SRC")
    p.add_argument("--out", required=True, type=Path, help="output folder for manifest.csv")
    p.add_argument("--check-images", choices=["decode", "header", "none"], default="decode",
                   help="decode = decode every image fully (default; catches truncated files), header = read "
                        "headers only (faster; the summary says truncation was not checked), none = existence only")
    p.add_argument("--no-check-images", dest="check_images", action="store_const", const="none",
                   help="same as --check-images none")
    p.add_argument("--strict", action="store_true",
                   help="a raw label cxrfm cannot map is an error naming the row (default: keep the row, "
                        "count and list the label)")
    p.add_argument("--source", default=None,
                   help="--format folder: the `source` name of every row (default: SRC's folder name)")
    p.add_argument("--patient-pattern", default=None, metavar="REGEX",
                   help="--format folder: regular expression searched in each image's path relative to SRC; "
                        "its group `patient` (else group 1) is the patient id (default: the file stem), "
                        "e.g. '(person\\d+)' for Kermany file names")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args) -> int:
    from .data.sources import ingest

    result = ingest(args.src, fmt=args.format, out_dir=args.out, check_images=args.check_images, progress=True,
                    strict=args.strict, source=args.source, patient_pattern=args.patient_pattern)
    print(result.summary())
    return 0


# ---------------------------------------------------------------- prepare
def _add_prepare(sub):
    p = sub.add_parser(
        "prepare", help="decode every image once into a memory-mapped cache",
        description="Decode every image of MANIFEST once, resize (letterbox) to SIZE x SIZE and store it in a "
                    "memory-mapped uint8 cache keyed by the manifest's content and SIZE, so that training "
                    "epochs never decode files again. Re-running with the same manifest and size is a no-op.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--size", type=int, default=128, help="side of the square cache images in pixels (default 128)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where caches live (default $CXRFM_CACHE or ~/.cache/cxrfm)")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: number of cores)")
    p.add_argument("--masks", action="store_true",
                   help="also cache the `mask` column (lung masks, letterboxed like their images) for segmentation")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    from .data.cache import ImageCache
    from .data.schema import Manifest

    manifest = Manifest.load(args.manifest)
    cache = ImageCache.build(manifest, size=args.size, cache_dir=args.cache_dir, workers=args.workers, progress=True)
    print(f"cache: {cache.path} ({len(cache)} images, {args.size}x{args.size})")
    if args.masks:
        masks = ImageCache.build(manifest, size=args.size, cache_dir=args.cache_dir, workers=args.workers,
                                 progress=True, column="mask")
        print(f"masks: {masks.path} ({int(masks.has.sum())} of {len(masks)} rows have a mask)")
    return 0


# ---------------------------------------------------------------- label
def _add_label(sub):
    p = sub.add_parser(
        "label", help="label report texts with the 14 CheXpert findings, merged with the source's labels",
        description="Label each report with the 14 CheXpert findings (1 positive, 0 negated, -1 uncertain, blank "
                    "not mentioned) and merge with the labels the table already has: a cell its source decides "
                    "(finding columns, or `labels` read per `source`) keeps the source's value, the labeler fills "
                    "only the unknown cells. REPORTS is a manifest or any CSV/Parquet with a `report` column; "
                    "the output keeps every input row in order, adds one column per finding and `label_note` (why "
                    "a row has no labeler labels), and prints how many cells each side decided and how many "
                    "disagreed (listed in OUT's .disagreements.csv).")
    p.add_argument("reports", type=Path)
    p.add_argument("--out", required=True, type=Path, help="output CSV (or .parquet)")
    p.add_argument("--column", default="report", help="the column holding the report text (default: report)")
    p.add_argument("--max-chars", type=int, default=20_000,
                   help="longest report labeled, in characters (default 20000); a longer one keeps its row with "
                        "blank labeler cells and a note. 0 = no cap (the work stays linear in the length)")
    p.set_defaults(func=_run_label)


def _run_label(args) -> int:
    from .data.label_table import label_table_file

    if args.max_chars < 0:
        raise CxrfmError(f"--max-chars {args.max_chars}: give a positive number of characters, or 0 for no cap")
    stats = label_table_file(args.reports, args.out, column=args.column, progress=True,
                             max_chars=args.max_chars or None)
    print(stats)
    return 0


# ---------------------------------------------------------------- split
def _add_split(sub):
    p = sub.add_parser(
        "split", help="patient-level train/val/test split",
        description="Assign every row to train / val / test by patient (no patient in two parts), "
                    "deterministically from --seed; writes a `split` column to OUT/manifest.csv.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="output folder (or a .csv/.parquet path)")
    p.add_argument("--fractions", default="0.7,0.1,0.2", help="train,val,test fractions (default 0.7,0.1,0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replace-split", action="store_true",
                   help="replace an existing `split` column that differs from the new one (default: refuse)")
    p.set_defaults(func=_run_split)


def _run_split(args) -> int:
    from .data.splits import split_manifest_file

    print(split_manifest_file(args.manifest, args.out, fractions=args.fractions, seed=args.seed,
                              replace=args.replace_split))
    return 0


# ---------------------------------------------------------------- summary
def _add_summary(sub):
    p = sub.add_parser("summary", help="print a data summary of a manifest",
                       description="Counts per source, view, sex, label (canonical findings: pos / neg / unknown), "
                                   "reports and masks.")
    p.add_argument("manifest", type=Path)
    p.set_defaults(func=_run_summary)


def _run_summary(args) -> int:
    from .data.summary import summarize
    from .data.schema import Manifest

    print(summarize(Manifest.load(args.manifest)))
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="run the main job on the bundled sample",
                       description="The main job on the bundled sample: ingest, data summary, training texts labeled "
                                   "back, patient split, tiny-cpu pretraining with prototype curation at a 20%% "
                                   "budget, `eval --tasks all` on the held-out patients, report.html. Re-running "
                                   "with the same --out resumes (a finished run is not trained again).")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the tiny-cpu preset's)")
    p.add_argument("--tasks", default="all", help="evaluation tasks (default all)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, epochs=args.epochs, tasks=args.tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrfm", description="Build, curate, evaluate and serve chest X-ray vision-language models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cxrfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_ingest, _add_label, _add_split, _add_prepare, _add_summary, _add_demo):
        add(sub)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


# Commands from later layers (pretrain, eval, index, serve) register here.
_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CxrfmError as e:
        print(f"cxrfm {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxrfm {args.command}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- eval
def _add_eval(sub):
    from .tasks.registry import default_tasks, list_tasks

    p = sub.add_parser(
        "eval", help="evaluate a model on every task type (--tasks all) and write results.json + report.html",
        description="Run the evaluation tasks for the model in RUN on MANIFEST and write OUT/results.json. "
                    "Zero-shot AUROC is reported per finding with a patient-level bootstrap CI, within each source "
                    "and pooled (sources are a shortcut, so report within them); retrieval gives Recall@1/5/10 "
                    "with chance level over rows with report text. Tasks the data cannot support are recorded "
                    "as skipped with the reason.")
    p.add_argument("--model", required=True, type=Path, help="run folder written by `cxrfm pretrain`")
    p.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) to evaluate on")
    known = "; ".join(f"{t.name}: {t.summary}" if t.summary else t.name for t in list_tasks())
    p.add_argument("--tasks", default=",".join(default_tasks()),
                   help=f"comma-separated tasks, or 'all' (default {','.join(default_tasks())}; known: {known})")
    p.add_argument("--out", required=True, type=Path, help="output folder for results.json")
    p.add_argument("--prompts", type=Path, default=None,
                   help="zero-shot prompts JSON {finding: {positive: [...], negative: [...]}} (default: bundled)")
    p.add_argument("--findings", default=None,
                   help="comma-separated canonical findings to score (default: every finding with enough labels)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUROC CI (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    p.add_argument("--train-data", type=Path, default=None,
                   help="manifest that tasks training a head (probe, segmentation, report) learn from; "
                        "default: a seeded patient split of --data (results.json says which)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from .tasks.suite import RESULTS_FILE, evaluate, format_results_table

    findings = [f.strip() for f in args.findings.split(",") if f.strip()] if args.findings else None
    results = evaluate(args.model, args.data, tasks=args.tasks, out=args.out, seed=args.seed, n_boot=args.n_boot,
                       prompts=args.prompts, cache_dir=args.cache_dir, progress=True, findings=findings,
                       train_data=args.train_data)
    print(format_results_table(results))
    print(f"results: {args.out / RESULTS_FILE}")
    if (args.out / "report.html").exists():
        print(f"report:  {args.out / 'report.html'}")
    return 0


# ---------------------------------------------------------------- index
def _add_index(sub):
    p = sub.add_parser(
        "index", help="embed a manifest's images into a saved search index",
        description="Embed every image of MANIFEST with the model in RUN and save a FAISS cosine index with the "
                    "row ids and report texts to OUT (index.faiss, items.csv, index.json), for `cxrfm serve`.")
    p.add_argument("--model", required=True, type=Path, help="run folder written by `cxrfm pretrain`")
    p.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) to index")
    p.add_argument("--out", required=True, type=Path, help="output folder for the index")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    p.set_defaults(func=_run_index)


def _run_index(args) -> int:
    from .tasks.retrieval import index_manifest

    index = index_manifest(args.model, args.data, args.out, cache_dir=args.cache_dir, progress=True)
    print(f"index: {args.out} ({len(index)} images, {index.dim}-d)")
    return 0


_EXTRA_COMMANDS.append(_add_eval)


# ---------------------------------------------------------------- report
def _add_report(sub):
    p = sub.add_parser("report", help="render results.json as a self-contained report.html",
                       description="Render an evaluation's results.json (and the plots it references) as one "
                                   "self-contained HTML page; within-source figures lead, pooled second.")
    p.add_argument("results", type=Path, help="results.json written by `cxrfm eval`")
    p.add_argument("--out", type=Path, default=None, help="output HTML (default: report.html beside RESULTS)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .reporting.html import render_results_file
    from .tasks.registry import list_tasks

    print(f"report: {render_results_file(args.results, args.out, tasks=list_tasks())}")
    return 0


_EXTRA_COMMANDS.append(_add_report)
_EXTRA_COMMANDS.append(_add_index)


# ---------------------------------------------------------------- serve
def _add_serve(sub):
    from .serve.server import TOKEN_ENV, parse_port

    p = sub.add_parser(
        "serve", help="HTTP API + page for one trained model",
        description="Serve a run dir over HTTP: POST /v1/analyze (image -> OOD verdict, findings, nearest reports, "
                    "draft report, heat map), POST /v1/embed, GET /v1/health, GET /v1/model, the page at /, the "
                    "API spec at /openapi.json. Binds 127.0.0.1 unless --host says otherwise; any other address "
                    f"needs a token (--token or ${TOKEN_ENV}) or --insecure. CORS is off unless --cors-origin is given.")
    p.add_argument("--model", required=True, type=Path, help="run dir (config.json + model.safetensors)")
    p.add_argument("--index", type=Path, default=None, help="retrieval index dir from `cxrfm index` (nearest reports)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=parse_port, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--token", default=None,
                   help=f"bearer token every request but the page must send (default: ${TOKEN_ENV}; prefer the "
                        "variable: a flag shows in the process list)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host beyond loopback without a token (anyone on the network can use it)")
    p.add_argument("--ood-reference", type=Path, default=None,
                   help="manifest of in-distribution CXRs to fit the OOD gate on (default: the bundled sample)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest declared image size (default 40 Mpx)")
    p.add_argument("--concurrency", type=int, default=2, help="inference calls at once (default 2)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="connections + requests at once; beyond it the server answers 503 (default 64)")
    p.add_argument("--max-inflight-mb", type=float, default=128.0,
                   help="upload MiB held by all requests together; beyond it 503 + Retry-After (default 128)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds of silence allowed while an upload arrives; then 408 (default 10)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="intra-op threads per inference call (default 1: requests run side by side instead of "
                        "fighting over cores; measured 70 ms vs ~1 s per analysis on a busy 2-core box)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    import torch

    from .serve.app import ServeSettings, create_app
    from .serve.server import TOKEN_ENV, bind_socket, check_exposure, run_server

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise CxrfmError(f"the token (--token or ${TOKEN_ENV}) is empty; set a long random string, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    for flag, value in (("--concurrency", args.concurrency), ("--max-connections", args.max_connections),
                        ("--max-upload-mb", args.max_upload_mb), ("--max-inflight-mb", args.max_inflight_mb),
                        ("--body-timeout", args.body_timeout)):
        if not value > 0:
            raise CxrfmError(f"{flag} {value}: must be a positive number")
    if args.ood_reference is not None and not args.ood_reference.is_file():
        raise CxrfmError(f"--ood-reference {args.ood_reference}: no such manifest; give a manifest of chest "
                         "radiographs (csv/parquet) or leave it out to use the bundled sample")
    warning = check_exposure(args.host, token, args.insecure)
    sock = bind_socket(args.host, args.port)  # before the slow model load: a taken port fails at once
    if warning:
        print(warning, file=sys.stderr, flush=True)
    torch.set_num_threads(max(1, args.torch_threads))
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1e6),
        max_concurrency=args.concurrency, cors_origins=tuple(args.cors_origin), token=token,
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024), body_idle_s=args.body_timeout,
        max_connections=args.max_connections,
        ood_reference=str(args.ood_reference) if args.ood_reference else None)
    try:
        app = create_app(args.model, args.index, settings)
    except BaseException:
        sock.close()
        raise
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    print(f"cxrfm serve: {url}/  (the page; API spec: {url}/openapi.json"
          f"{'; requests need the token' if token else ''})", flush=True)
    run_server(app, sock, settings)
    return 0


_EXTRA_COMMANDS.append(_add_serve)


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
    from .config import list_presets
    from .train.curation import list_curators

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
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from .run import RunDir
    from .train.loop import pretrain

    out = pretrain(args.data, args.out, config=args.config, curate=args.curate, budget=args.budget,
                   epochs=args.epochs, seed=args.seed, resume=args.resume, text_style=args.text_style,
                   overrides=_parse_key_values(args.overrides, "--set"),
                   curator_kwargs=_parse_key_values(args.curator_options, "--curator-option"),
                   progress=args.progress, cache_dir=args.cache_dir,
                   stream={k: v for k, v in (("workers", args.workers), ("shuffle_buffer", args.shuffle_buffer))
                           if v is not None})
    if int(os.environ.get("RANK", "0")) == 0:
        run = RunDir(out)
        info, status = run.read_curation() or {}, run.status()
        print(f"run: {out}  step {status['step']}/{status['total_steps']}  finished {status['finished']}  "
              f"data_fraction {info.get('data_fraction', float('nan')):.3f}  "
              f"compute_fraction {info.get('compute_fraction', float('nan')):.3f}")
    return 0


_EXTRA_COMMANDS.append(_add_pretrain)


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------- score-reports
def _add_score_reports(sub):
    p = sub.add_parser(
        "score-reports", help="count clinically significant errors of candidate reports against references",
        description="Join CANDIDATES and REFERENCES (CSV/Parquet, columns `id` and `report`) on `id` and count, per "
                    "pair, the clinically significant errors of the candidate (GREEN-style, offline, no LLM): "
                    "false_finding, missed_finding, wrong_location, wrong_severity, false_comparison, device_error; "
                    "plus matched and score = matched / (matched + errors). Validation: docs/reports.md.")
    p.add_argument("candidates", type=Path, help="generated reports: a table with `id` and `report` columns")
    p.add_argument("references", type=Path, help="reference reports: a table with `id` and `report` columns")
    p.add_argument("--out", required=True, type=Path, help="output CSV (or .parquet): one row per id")
    p.set_defaults(func=_run_score_reports)


def _run_score_reports(args) -> int:
    from .data.report_errors import score_report_files

    print(score_report_files(args.candidates, args.references, args.out))
    return 0


_EXTRA_COMMANDS.append(_add_score_reports)


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
    from .data.shards import ShardSet, write_shards

    out = write_shards(args.manifest, args.out, size=args.size, per_shard=args.per_shard, progress=args.progress)
    shards = ShardSet.open(out)
    print(f"{out}: {shards.n_samples} samples in {len(shards.shards)} shards of <= {args.per_shard} at "
          f"{shards.size} px")
    return 0


_EXTRA_COMMANDS.append(_add_shard)


# ---------------------------------------------------------------- concepts (cxrfm/cli_concepts.py)
def _add_concepts(sub):
    from .cli_concepts import add_concepts_command

    add_concepts_command(sub)


_EXTRA_COMMANDS.append(_add_concepts)
