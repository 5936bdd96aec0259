"""Where a task that fits something on labels gets its training and evaluation rows, and their pixels.

Shared by the tasks that train a head (probe, segmentation, report, ood). The rows come from, in order:
a separate training manifest (``context.train_manifest``, ``--train-data``), else the manifest's
``split`` column, else a seeded patient-level split of the evaluation manifest made by
:func:`cxrfm.data.splits.split_patients` (the one patient-split function; images of one patient never
straddle the parts, as in every public CXR benchmark). The result says which under ``split.how``.

:func:`carve_validation` takes a patient-disjoint validation part out of the *training* rows, for the
choices a task makes before it scores (a baseline's schedule): choosing on the evaluation rows would
be optimistic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.schema import Manifest
from ..data.splits import split_patients
from ..errors import SplitError
from .embed import ImageBatches, open_image_cache

if TYPE_CHECKING:
    from .suite import EvalContext

EVAL_FRACTION = 0.25


@dataclass
class TaskSplit:
    """Training and evaluation rows of a task that fits something on labels.

    ``eval_rows`` index the evaluation context's manifest; ``train_rows`` index it too when the
    training rows come from it (``train_external`` False), otherwise they index ``train``.
    """

    train: Manifest
    train_rows: np.ndarray
    eval_rows: np.ndarray
    train_external: bool
    how: str

    def describe(self) -> dict:
        return {"how": self.how, "n_train": int(len(self.train_rows)), "n_eval": int(len(self.eval_rows))}


def patient_train_eval_rows(manifest: Manifest, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows) of a seeded patient-level split stratified by source (``split_patients``)."""
    if not 0 < eval_fraction < 1:
        raise SplitError(f"eval_fraction {eval_fraction!r} must be strictly between 0 and 1, e.g. 0.25")
    parts = split_patients(manifest, (1 - eval_fraction, eval_fraction), seed=seed, names=("train", "eval"))
    return np.flatnonzero(parts == "train"), np.flatnonzero(parts == "eval")


def resolve_split(context: "EvalContext", eval_fraction: float = EVAL_FRACTION) -> TaskSplit:
    """The training manifest of ``context`` if it has one, else its ``split`` column, else a seeded
    patient-level split (``eval_fraction`` of rows to evaluation, stratified by source)."""
    from .registry import TaskSkipped

    manifest = context.manifest
    train = getattr(context, "train_manifest", None)
    if train is not None:
        ours = set(manifest.table["patient_id"].astype(str))
        shared = ours & set(train.table["patient_id"].astype(str))
        how = f"training manifest {train.path or '(given table)'}; evaluation manifest is the eval set"
        if shared:
            how += f" (warning: {len(shared)} patient(s) are in both, the evaluation leaks)"
        return TaskSplit(train, np.arange(len(train)), np.arange(len(manifest)), True, how)
    if "split" in manifest.table.columns:
        parts = manifest.table["split"].astype(str).str.lower().to_numpy()
        train_rows = np.flatnonzero(parts == "train")
        eval_rows = np.flatnonzero(parts == "test")
        how = "the manifest's split column: train rows -> training, test rows -> eval"
        if len(eval_rows) == 0:
            eval_rows = np.flatnonzero(parts != "train")
            how = "the manifest's split column: train rows -> training, all other rows -> eval"
    else:
        try:
            train_rows, eval_rows = patient_train_eval_rows(manifest, eval_fraction, context.seed)
        except SplitError as e:
            raise TaskSkipped(f"cannot split the manifest into train and eval: {e}") from None
        how = (f"seeded patient-level split of the evaluation manifest (seed {context.seed}, "
               f"{eval_fraction:.0%} of rows to eval, stratified by source); give a training manifest to "
               f"evaluate on all rows")
    if len(eval_rows) == 0:
        raise TaskSkipped(f"the eval split is empty ({how}); add eval patients or give a training manifest")
    if len(train_rows) == 0:
        raise TaskSkipped(f"the training split is empty ({how}); give a training manifest")
    return TaskSplit(manifest, train_rows, eval_rows, False, how)


def carve_validation(train: Manifest, rows: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` of ``train`` into (fit positions, validation positions) by patient.

    Positions index ``rows`` (not the manifest). Raises :class:`SplitError` when the rows hold too few
    patients to leave both parts non-empty.
    """
    rows = np.asarray(rows, dtype=np.int64)
    fit, val = patient_train_eval_rows(train.subset(rows), fraction, seed)
    if len(fit) == 0 or len(val) == 0:
        patients = set(map(str, train.table["patient_id"].to_numpy()[rows]))
        raise SplitError(f"{len(rows)} training rows of {len(patients)} patient(s) cannot give a validation "
                         f"part; at least two patients are needed")
    return fit, val


def context_images(context: "EvalContext") -> ImageBatches:
    """The context's row-aligned images at the model's size (the suite's cache, built on first use)."""
    if context.images is None:
        context.images = open_image_cache(context.manifest, int(context.model.image_size),
                                          cache_dir=context.cache_dir, progress=context.progress)
    return context.images


def train_images(context: "EvalContext", split: TaskSplit) -> ImageBatches:
    """The training rows' image source: the context's own, or the training manifest's cache."""
    if not split.train_external:
        return context_images(context)
    return open_image_cache(split.train, int(context.model.image_size), cache_dir=context.cache_dir,
                            progress=context.progress)


def load_pixels(images: ImageBatches, rows: np.ndarray, size: int, batch_size: int = 256) -> torch.Tensor:
    """Rows of ``images`` resized to ``size`` as one float32 (N, 1, size, size) tensor."""
    from ..models.image import resize_to

    parts = [resize_to(images.batch(rows[i:i + batch_size]), size) for i in range(0, len(rows), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, 1, size, size)
