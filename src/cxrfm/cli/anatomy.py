"""`cxrfm segment` (in-context segmentation from support pairs) and `cxrfm anatomy train | measure`.

Each action is a few lines over :mod:`cxrfm.inference.anatomy`, :mod:`cxrfm.train.anatomy` and
:mod:`cxrfm.models.anatomy_store` (docs/anatomy.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CxrfmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MASK_SUFFIX = ".png"
MAX_LISTED = 8  # problems listed in one error message


class SegmentInputError(CxrfmError):
    """A support folder or query path that `cxrfm segment` cannot use."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _raise_listed(head: str, problems: list[str]) -> None:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise SegmentInputError(head + "".join(f"\n  {p}" for p in problems[:MAX_LISTED]) + more)


def support_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) files of a support folder (``images/NAME.*`` with ``masks/NAME.png``), paired by stem."""
    layout = ("a support folder holds images/NAME.png (or .jpg, .jpeg, .dcm) and masks/NAME.png (0/255, the "
              "image's size), one mask per image with the same file stem")
    if not folder.is_dir():
        raise SegmentInputError(f"{folder}: no such folder; {layout}")
    img_dir, mask_dir = folder / "images", folder / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SegmentInputError(f"{d}: missing; {layout}")
    problems: list[str] = []
    images: dict[str, Path] = {}
    for p in _files(img_dir):
        if not _is_image(p):
            problems.append(f"{p}: not a PNG, JPEG or DICOM file name (.png .jpg .jpeg .dcm); remove it or rename it")
        elif p.stem in images:
            problems.append(f"{p} and {images[p.stem]}: two images with the stem {p.stem!r}; keep one")
        else:
            images[p.stem] = p
    masks: dict[str, Path] = {}
    for p in _files(mask_dir):
        if p.suffix.lower() != MASK_SUFFIX:
            problems.append(f"{p}: masks must be PNG (0/255); JPEG blurs a mask's edges into grey levels: save it "
                            f"as {p.stem}.png")
        else:
            masks[p.stem] = p
    problems += [f"{images[s]}: no mask; add {mask_dir / (s + MASK_SUFFIX)} or remove the image"
                 for s in sorted(images) if s not in masks]
    problems += [f"{masks[s]}: no image; add {img_dir / s}.png (or .jpg, .dcm) or remove the mask"
                 for s in sorted(masks) if s not in images]
    if problems:
        _raise_listed(f"{folder}: {len(problems)} problem(s) with the support pairs:", problems)
    if not images:
        raise SegmentInputError(f"{folder}: k = 0, no support pair in {img_dir}; in-context segmentation needs at "
                                f"least one image with its mask of the structure (1-5 work best); {layout}")
    return [(images[s], masks[s]) for s in sorted(images)]


def read_supports(pairs: list[tuple[Path, Path]]):
    """Images (1, H, W) and bool masks of the pairs; every bad mask is named in one error."""
    from ..data.anatomy import read_mask
    from ..data.images import read_image

    images, masks, problems = [], [], []
    for img_path, mask_path in pairs:
        try:
            img = read_image(img_path)
            masks.append(read_mask(mask_path, expect_hw=tuple(img.shape[-2:]), allow_empty=False))
            images.append(img)
        except CxrfmError as e:  # MaskError, ImageReadError
            problems.append(str(e))
    if problems:
        _raise_listed(f"{len(problems)} of the {len(pairs)} support pair(s) cannot be used:", problems)
    return images, masks


def query_files(query: Path) -> list[Path]:
    if query.is_file():
        return [query]
    if not query.is_dir():
        raise SegmentInputError(f"{query}: no such file or folder; --query is an image (PNG, JPEG, DICOM) or a "
                                f"folder of them")
    files = [p for p in _files(query) if _is_image(p)]
    if not files:
        raise SegmentInputError(f"{query}: no image in this folder (looked for {' '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, Path] = {}
    clashes = []
    for p in files:
        if p.stem in seen:
            clashes.append(f"{seen[p.stem]} and {p}: both would be written as {p.stem}.png; rename one")
        seen[p.stem] = p
    if clashes:
        _raise_listed(f"{query}: queries with the same file stem:", clashes)
    return files


# ---------------------------------------------------------------- segment
def _add_segment(sub):
    p = sub.add_parser(
        "segment", help="outline in query images the structure a few support image-mask pairs show",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="In-context segmentation (no fine-tuning): the anatomy folder's in-context segmenter encodes the "
                    "k support pairs once and outlines the same structure in every query. Supports and queries may "
                    "have any sizes (each is letterboxed to the network's side and the mask returned at the query's "
                    "size). Writes OUT/<query stem>.png per query: 0/255, the query's size. A query that cannot be "
                    "read is skipped with a message, the others are written, and the exit status is 1.",
        epilog="support folder layout:\n"
               "  SUPPORT/images/NAME.png   (or .jpg, .jpeg, .dcm)\n"
               "  SUPPORT/masks/NAME.png    0/255, the image's size, the structure not empty\n"
               "examples:\n"
               "  cxrfm segment --support supports/heart --query films/ --out heart_masks/\n"
               "  cxrfm segment --support supports/clavicle --query film.dcm --out out/ --threshold 0.4")
    p.add_argument("--support", required=True, type=Path, help="folder with images/ and masks/ (see below)")
    p.add_argument("--query", required=True, type=Path, help="an image (PNG, JPEG, DICOM) or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="folder for the masks (created; existing masks of the "
                                                          "same names are replaced)")
    p.add_argument("--model", type=Path, default=None,
                   help="anatomy folder of `cxrfm anatomy train` (default $CXRFM_ANATOMY, else the shipped one)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability above which a pixel is the structure "
                                                                "(default 0.5)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_segment)


def _save_mask(mask, path: Path) -> None:
    import numpy as np
    from PIL import Image

    from ..atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(tmp, format="PNG")


def _run_segment(args) -> int:
    from tqdm.auto import tqdm

    from ..data.images import read_image
    from ..inference.anatomy import FewShot

    if not 0.0 < args.threshold < 1.0:
        raise SegmentInputError(f"--threshold {args.threshold}: must be between 0 and 1 (exclusive)")
    pairs = support_pairs(args.support)
    queries = query_files(args.query)
    out = args.out.resolve()
    protected = {args.support.resolve() / "images", args.support.resolve() / "masks"} | {q.parent.resolve()
                                                                                        for q in queries}
    if out in protected:
        raise SegmentInputError(f"--out {args.out}: is a folder of input images or masks and would be overwritten; "
                                f"choose another output folder")
    few = FewShot(*read_supports(pairs), model_dir=args.model, threshold=args.threshold)
    out.mkdir(parents=True, exist_ok=True)
    failed, empty = [], []
    for q in tqdm(queries, desc="segment", unit="image", disable=not args.progress):
        try:
            mask = few(read_image(q))
        except CxrfmError as e:
            failed.append(q)
            tqdm.write(f"cxrfm segment: skipped {q}: {e}", file=sys.stderr)
            continue
        _save_mask(mask, out / f"{q.stem}.png")
        if not mask.any():
            empty.append(q)
    print(f"segment: k={few.k} support(s) from {args.support}, {len(queries) - len(failed)} of {len(queries)} "
          f"query image(s) -> {args.out}" + (f"; {len(failed)} skipped (see above)" if failed else "")
          + (f"; {len(empty)} empty mask(s) (nothing above --threshold {args.threshold})" if empty else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------- anatomy train | measure
def _add_anatomy(sub):
    p = sub.add_parser("anatomy", help="heart and lung models: train, measure (CTR)",
                       description="The anatomy models (docs/anatomy.md): a supervised U-Net (one output per "
                                   "mask_<structure> column) and the in-context segmenter used by `cxrfm segment`.")
    asub = p.add_subparsers(dest="anatomy_command", metavar="ACTION", required=True)
    t = asub.add_parser(
        "train", help="train the supervised U-Net and/or the in-context segmenter into an anatomy folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="supervised: a U-Net on the `train` part of MANIFEST's fixed patient-disjoint split "
                    "(cxrfm.data.anatomy.anatomy_split: 60/20/20 by patient, seed 0), one output per mask_<structure> "
                    "column (rows may lack some masks). incontext: the in-context segmenter pretrained on masks made "
                    "automatically from the images of --pretext-data (default: MANIFEST; of a manifest with "
                    "mask_<structure> columns only its train part is used) and their lung masks, never a heart "
                    "mask. Writes OUT/anatomy.json (configs and the training record: manifest, the rows' image "
                    "paths, the mask columns read, the split part, the settings), unet.safetensors and/or "
                    "incontext.safetensors; a network not trained is kept from an existing OUT. Training runs on the "
                    "CPU; --steps and --size default to SupervisedSettings (cxrfm.train.anatomy) and PretextSettings "
                    "(cxrfm.train.anatomy_pretext).",
        epilog="examples:\n"
               "  cxrfm anatomy train --data ../shared/data/anatomy/manifest.csv --out models/anatomy\n"
               "  cxrfm anatomy train --data anatomy.csv --out models/anatomy --what incontext "
               "--pretext-data ../shared/data/cxr/manifest.csv\n"
               "  CXRFM_ANATOMY=models/anatomy cxrfm anatomy measure film.png --overlay film_ctr.png")
    t.add_argument("--data", required=True, type=Path, help="manifest with mask_<structure> columns (e.g. "
                                                           "mask_heart, mask_left_lung, mask_right_lung)")
    t.add_argument("--out", required=True, type=Path, help="anatomy folder to write (or update)")
    t.add_argument("--what", choices=("supervised", "incontext", "both"), default="both",
                   help="which network to train (default both)")
    t.add_argument("--steps", type=int, default=None, help="optimisation steps of each network (default: their "
                                                           "settings' defaults)")
    t.add_argument("--size", type=int, default=None, help="the networks' input side in pixels (default: their "
                                                          "settings' defaults)")
    t.add_argument("--pretext-data", type=Path, nargs="+", default=None, metavar="MANIFEST",
                   help="manifests whose images (and lung masks) the in-context pretext episodes are made from "
                        "(default: --data); only the train part of a manifest with mask_<structure> columns is "
                        "used, and no heart column is ever read")
    t.add_argument("--seed", type=int, default=0, help="seeds initial weights, batches and augmentation")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    t.set_defaults(func=_run_anatomy_train)
    m = asub.add_parser(
        "measure", help="the cardiothoracic ratio of one film, with an overlay",
        description="Segments the heart and both lungs with the anatomy folder's U-Net and prints the "
                    "cardiothoracic ratio (heart width / thorax width, the masks' horizontal extents; above 0.5 "
                    "suggests an enlarged heart on a PA film), or why it was not measured: a lateral view, or "
                    "lungs not found. The view comes from --view, else a DICOM's ViewPosition, never a guess.")
    m.add_argument("image", type=Path, help="a chest film (PNG, JPEG, DICOM)")
    m.add_argument("--view", default=None, help="the film's view, e.g. PA, AP, L (lateral views are refused)")
    m.add_argument("--model", type=Path, default=None,
                   help="anatomy folder (default $CXRFM_ANATOMY, else the shipped one)")
    m.add_argument("--overlay", type=Path, default=None, metavar="OUT.png",
                   help="write the film with the heart and lung outlines and the two width lines")
    m.add_argument("--json", action="store_true", help="print the CTR record as JSON instead of a sentence")
    m.set_defaults(func=_run_anatomy_measure)


def _settings(cls, steps, size):
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (("steps", steps), ("size", size)) if v is not None and k in names})


def _train_supervised(manifest, args) -> tuple[object, dict]:
    import dataclasses

    import numpy as np
    from tqdm.auto import tqdm

    from ..data.anatomy import anatomy_split, load_structures, structure_columns
    from ..train.anatomy import SupervisedSettings, fit_supervised

    cols = structure_columns(manifest.table)
    if not cols:
        raise CxrfmError(f"{args.data}: no mask_<structure> column with paths (e.g. mask_heart, mask_left_lung); "
                         f"the supervised model learns one output per such column")
    rows = np.flatnonzero(anatomy_split(manifest) == "train")
    if not len(rows):
        raise CxrfmError(f"{args.data}: the train part of the patient split is empty ({len(manifest)} rows); "
                         f"add rows from more patients")
    images, masks = [], {s: [] for s in cols}
    for r in tqdm(rows, desc="reading images and masks", unit="image", disable=not args.progress, leave=False):
        im, ms = load_structures(manifest, [r], structures=list(cols))
        images += im
        for s in cols:
            masks[s] += ms[s]
    settings = _settings(SupervisedSettings, args.steps, args.size)
    net = fit_supervised(images, masks, structures=tuple(cols), settings=settings, seed=args.seed,
                         progress=args.progress)
    record = {"manifest": str(Path(args.data).resolve()), "manifest_hash": manifest.content_hash(),
              "split": "train", "split_rule": "cxrfm.data.anatomy.anatomy_split (patients 60/20/20, seed 0)",
              "rows": [str(manifest.table["image"].iloc[int(r)]) for r in rows],
              "mask_columns": sorted(cols.values()),
              "masks_per_structure": {s: int(sum(m is not None for m in masks[s])) for s in cols},
              "settings": dataclasses.asdict(settings), "seed": int(args.seed)}
    return net, record


def _train_incontext(manifest, args) -> tuple[object, dict]:
    from ..data.schema import Manifest

    try:
        from ..train.anatomy_pretext import PretextSettings, pretrain_incontext
    except ImportError as e:
        raise CxrfmError(f"the in-context pretraining (cxrfm.train.anatomy_pretext) is not in this version ({e}); "
                         f"use --what supervised") from None
    # pretrain_incontext itself keeps only the train part of a manifest with mask_<structure> columns
    manifests = [Manifest.load(p) for p in args.pretext_data] if args.pretext_data else [manifest]
    net, record = pretrain_incontext(manifests, settings=_settings(PretextSettings, args.steps, args.size),
                                     seed=args.seed, progress=args.progress)
    record = dict(record or {})
    record.setdefault("manifests", [str(Path(p).resolve()) for p in (args.pretext_data or [args.data])])
    return net, record


def _run_anatomy_train(args) -> int:
    from .. import __version__
    from ..data.schema import Manifest
    from ..models.anatomy_store import save_anatomy

    if args.steps is not None and args.steps < 1:
        raise CxrfmError(f"--steps {args.steps}: must be a positive integer")
    if args.size is not None and args.size < 32:
        raise CxrfmError(f"--size {args.size}: must be at least 32 (the networks halve it up to 4 times)")
    manifest = Manifest.load(args.data)
    unet = incontext = None
    training = {}
    if args.what in ("supervised", "both"):
        unet, training["unet"] = _train_supervised(manifest, args)
    if args.what in ("incontext", "both"):
        incontext, training["incontext"] = _train_incontext(manifest, args)
    for rec in training.values():
        rec.setdefault("cxrfm_version", __version__)
    save_anatomy(args.out, unet=unet, incontext=incontext, training=training)
    parts = []
    if unet is not None:
        r = training["unet"]
        parts.append(f"U-Net ({', '.join(unet.config.structures)}) on {len(r['rows'])} train rows, "
                     f"{r['settings']['steps']} steps at {unet.config.size} px")
    if incontext is not None:
        parts.append(f"in-context segmenter at {incontext.config.size} px")
    print(f"anatomy: {args.out}  " + "; ".join(parts))
    return 0


def _dicom_view(path: Path) -> str | None:
    """ViewPosition of a DICOM file, or None (not DICOM, or the tag absent)."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["ViewPosition"])
        v = str(getattr(ds, "ViewPosition", "") or "").strip()
        return v or None
    except Exception:  # noqa: BLE001 - not a DICOM: no view from the header
        return None


def _run_anatomy_measure(args) -> int:
    import json

    from ..data.images import read_image
    from ..inference.anatomy import Anatomy

    image = read_image(args.image)
    view = args.view if args.view is not None else _dicom_view(args.image)
    masks, ctr = Anatomy(model_dir=args.model).measure(image, view=view)
    if args.overlay is not None:
        from ..inference.anatomy_overlay import draw_anatomy_overlay

        draw_anatomy_overlay(image, masks, ctr, args.overlay)
    if args.json:
        print(json.dumps({"image": str(args.image), **ctr.to_dict(),
                          "overlay": None if args.overlay is None else str(args.overlay)}))
    elif ctr.ratio is None:
        print(f"{args.image}: CTR not measured: {ctr.refused}")
    else:
        flag = ("above 0.5: suggests an enlarged heart" + ("" if str(view or "PA").upper().startswith("PA")
                                                           else " (an AP film magnifies the heart)")
                if ctr.enlarged else "not above 0.5")
        print(f"{args.image}: CTR {ctr.ratio:.3f} (heart {ctr.heart_width} px / thorax {ctr.thorax_width} px, "
              f"view {view or 'not given'}): {flag}")
    if args.overlay is not None and not args.json:
        print(f"overlay: {args.overlay}")
    return 0


COMMANDS = (_add_segment, _add_anatomy)
