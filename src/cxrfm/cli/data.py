"""Data commands: ingest, prepare, label, split, summary, demo."""
from __future__ import annotations

from pathlib import Path

from ..errors import CxrfmError


# ---------------------------------------------------------------- ingest
def _add_ingest(sub):
    from ..data.sources import list_layouts

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
    from ..data.sources import ingest

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
    from ..data.cache import ImageCache
    from ..data.schema import Manifest

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
    from ..data.label_table import label_table_file

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
    from ..data.splits import split_manifest_file

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
    from ..data.summary import summarize
    from ..data.schema import Manifest

    print(summarize(Manifest.load(args.manifest)))
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="run the main job on the bundled sample",
                       description="The main job on the bundled sample: ingest, data summary, training texts labeled "
                                   "back, patient split, tiny-cpu pretraining with the default curation "
                                   "(balanced at a 20%% budget, epochs from the default compute budget), `eval --tasks all` on the held-out patients, report.html. Re-running "
                                   "with the same --out resumes (a finished run is not trained again). With "
                                   "--latents the pretraining runs on autoencoder latents instead (docs/latents.md).")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None,
                   help="pretraining epochs (default: as `cxrfm pretrain` chooses them from its default compute budget)")
    p.add_argument("--tasks", default="all", help="evaluation tasks (default all)")
    from ..demo import DEMO_AE as a

    p.add_argument("--latents", action="store_true",
                   help=f"latent compression: train a small autoencoder on the training part ({a['factor']}x per "
                        f"side, {a['channels']} channels, width {a['width']}, {a['steps']} steps; OUT/ae), pretrain "
                        "on its 8-bit latents instead of pixels "
                        "(OUT/run-latents) and evaluate with the reconstruction task added: PSNR, MS-SSIM and the "
                        "best / median / worst reconstructions in OUT/eval-latents/report.html")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args.out, epochs=args.epochs, tasks=args.tasks, latents=args.latents)


COMMANDS = (_add_ingest, _add_prepare, _add_label, _add_split, _add_summary, _add_demo,)
