"""Dual-encoder pretraining with online data curation (``cxrfm pretrain``).

CLIP-style contrastive pretraining (Radford et al. 2021) of an image tower against a (by default
frozen, LiT-style, Zhai et al. 2022) text tower on image-report pairs, with a curator deciding which
pairs are trained on (the CheXficient idea, Wang et al. arXiv:2602.22843). Optimisation follows CLIP:
AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA.

Per epoch the loop drives the curator (:mod:`cxrfm.train.curation`)::

    curator.begin_epoch(epoch, embed)       # embed(rows) -> (img, txt) normalised numpy, no grad
    rows = curator.epoch_rows(epoch)        # shuffled here, with a generator seeded by (seed, epoch)
    per batch:  if curator.selects(epoch): keep = curator.select(epoch, idx, img, txt)
                -> loss and backward on kept pairs only
    curator.end_epoch(epoch)

When the curator selects inside batches, the batch is first embedded without gradients (a counted
scoring pass), then only the kept pairs go through the training forward and backward (online batch
selection: Loshchilov & Hutter 2015; RHO-LOSS, Mindermann et al. 2022); a loss masked after one full
forward would still pay every backward. An epoch whose ``selects(epoch)`` is False pays no scoring.

Everything random is a function of the seed: initial weights (same seed, same model, whatever the
curator, so curation arms are paired), the epoch order (seed, epoch) and the augmentation of each
batch (seed, epoch, batch). A checkpoint therefore only needs the weights, the optimiser, the
curator's state and the position in the epoch to resume to the same result as an uninterrupted run.

A run says what it is (:meth:`cxrfm.run.RunDir.status`); a non-finite loss or gradient stops it with
:class:`TrainingDivergedError` before the weights are touched. Helpers: :mod:`.inputs`, :mod:`.records`,
:mod:`.interrupts`, :mod:`.augment`, :mod:`.optim`; streamed shards: :mod:`.stream`; FSDP2: :mod:`.fsdp`.
"""
from __future__ import annotations

from pathlib import Path

from ..data.schema import Manifest
from ..data.shards import is_shard_folder
from ..errors import ConfigError
from ..run import RunDir
from .augment import apply_affine, random_affine  # noqa: F401  (public here too)
from .distributed import init_distributed, shutdown
from .inputs import training_rows  # noqa: F401  (public here too)
from .pretraining import Pretraining, TrainingDivergedError  # noqa: F401  (TrainingDivergedError: public here)
from .stream import StreamPretraining


def pretrain(data: Manifest | str | Path, out: str | Path, config: str = "tiny-cpu", curate: str = "balanced",
             budget: float = 0.2, epochs: int | None = None, seed: int = 0, resume: bool = False,
             text_style: str = "template", overrides: dict | None = None, curator_kwargs: dict | None = None,
             progress: bool = True, cache_dir: str | Path | None = None, *,
             max_steps: int | None = None, stream: dict | None = None, fsdp: bool = False,
             compute_budget: float | None = None) -> Path:
    """Pretrain a dual encoder on ``data`` (a manifest or its path) into the run dir ``out``.

    ``config`` is a preset name or JSON path, ``overrides`` replaces config fields, ``epochs`` overrides
    the config's. ``curate`` names a curator (:func:`cxrfm.train.curation.list_curators`) aiming at
    ``budget`` (fraction of pairs kept, in (0, 1]); ``curator_kwargs`` are its options. Only rows with
    ``split == "train"`` are used when the manifest has a ``split`` column. ``resume`` continues the
    run in ``out`` from its last checkpoint (a finished run is left as is). ``max_steps`` stops after
    that many steps of this call with a checkpoint, as SIGINT/SIGTERM do (for time-boxed jobs).
    ``data`` may also be a folder written by ``cxrfm shard``: it is streamed (:mod:`.stream`), and
    ``stream`` holds the options of :class:`~cxrfm.train.stream.StreamPretraining` (``workers``,
    ``shuffle_buffer``). ``fsdp`` shards parameters and optimiser state over the ranks with FSDP2
    (:mod:`.fsdp`) instead of replicating them with DDP (for towers that do not fit one device).
    ``compute_budget`` (a fraction, e.g. 0.3; default None: off) makes a curated run without ``epochs``
    train its kept pairs for the most epochs within that share of the preset's full-data compute
    (:mod:`.schedule`; ``cxrfm pretrain`` turns it on by default).

    Writes ``out/config.json``, ``model.safetensors``, ``status.json``, ``training_data.json``,
    ``metrics.jsonl``, ``curation.json`` and ``state/`` (:class:`cxrfm.run.RunDir`); returns ``out``.
    Under ``torchrun`` every rank calls this; rank 0 writes the files. A non-finite loss raises
    :class:`TrainingDivergedError` (a ConfigError: lower ``train.lr``).
    """
    ctx = init_distributed()
    try:
        args = (Path(out), config, curate, budget, epochs, int(seed), bool(resume), text_style, overrides or {},
                dict(curator_kwargs or {}), progress, cache_dir, ctx)
        if not isinstance(data, Manifest) and is_shard_folder(data):
            run = StreamPretraining(data, *args, compute_budget=compute_budget, **(stream or {}))
        else:
            if stream:
                raise ConfigError(f"{data}: stream options ({', '.join(sorted(stream))}) apply to a folder written "
                                  f"by `cxrfm shard`, not to a manifest")
            run = Pretraining(data, *args, compute_budget=compute_budget)
        run.fsdp = bool(fsdp) and ctx.enabled
        return run.run(max_steps=max_steps)
    finally:
        shutdown(ctx)


def run_is_finished(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished pretraining run (:meth:`cxrfm.run.RunDir.status`)."""
    return RunDir(run_dir).is_finished()
