"""One pretraining run, set up and driven (:class:`Pretraining`); :func:`cxrfm.train.loop.pretrain` is
the entry point, and its docstring says what a run does. Streamed shards subclass it (:mod:`.stream`)."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..config import ModelConfig, TrainConfig, load_config
from ..data.schema import Manifest
from ..errors import ConfigError, ManifestError
from ..run import RunDir
from .accounting import Accounting, epoch_batch_sizes
from .augment import batch_seed, random_affine
from .checkpoint import check_run_dir, load_checkpoint, normalise, save_checkpoint, write_run_config
from .curation import CurationContext, Curator, curator_class, select_mask
from .distributed import DistContext, any_rank, barrier, gather_with_grad, mean_over_ranks, shard, wrap_ddp
from .fsdp import FullState, average_replicated_grads, full, shard_model
from .inputs import PairInputs, training_rows
from .interrupts import CheckpointSchedule, StopRequest
from .losses import contrastive_loss, local_contrastive_loss
from .optim import learning_rate, make_optimizer
from .records import MetricsLog, new_epoch_stats, write_curation, write_debug_fingerprint
from .schedule import curated_epochs


class TrainingDivergedError(ConfigError):
    """The loss, a gradient or the weights became NaN/inf: the run stops before saving them."""


class Pretraining:
    """One pretraining run: set up from the arguments of :func:`pretrain`, then :meth:`run`."""

    fsdp = False  # pretrain(fsdp=True) sets it before run()

    def __init__(self, data, out: Path, config, curate: str, budget: float, epochs, seed: int, resume: bool,
                 text_style: str, overrides: dict, curator_kwargs: dict, progress: bool, cache_dir, ctx: DistContext,
                 *, compute_budget: float | None = None):
        self.ctx, self.out, self.seed, self.progress = ctx, out, seed, progress and ctx.is_main
        self.run_dir = RunDir(out)
        self.curate, self.budget = curate, budget
        curator_cls = curator_class(curate)  # the one lookup: an unknown name fails before any work
        self.manifest = data if isinstance(data, Manifest) else Manifest.load(data)
        model_cfg, train_cfg = load_config(config, overrides)
        if epochs is not None:
            train_cfg = dataclasses.replace(train_cfg, epochs=int(epochs))
        self.train_cfg: TrainConfig = train_cfg
        from ..data.pseudo_reports import training_texts

        rows = training_rows(self.manifest)
        part = self.manifest if len(rows) == len(self.manifest) else self.manifest.subset(rows)
        texts = training_texts(part, style=text_style, seed=seed, skip=True)
        has_text = np.array([t is not None for t in texts], dtype=bool)
        if not has_text.any():
            raise ManifestError(f"{self.manifest.path or 'manifest'}: no training row has a report or a known label, "
                                f"so there is no text to pair the images with; add a `report` column or labels "
                                f"(per-finding columns or `labels`)")
        self.n_without_text = int((~has_text).sum())
        if self.n_without_text and ctx.is_main:
            print(f"pretrain: {self.n_without_text} of {len(rows)} training rows have neither a report nor a known "
                  f"label; they are left out", file=sys.stderr)
        self.rows = rows[has_text]  # curator row i = manifest row self.rows[i]
        self.n = len(self.rows)
        texts = [t for t in texts if t is not None]
        self.ids = [part.ids[i] for i in np.flatnonzero(has_text)]
        uniq: dict[str, int] = {}
        text_id = np.array([uniq.setdefault(t, len(uniq)) for t in texts], dtype=np.int64)  # (n,)
        unique_texts = list(uniq)
        self.schedule = None  # epochs chosen from --compute-budget (.schedule)
        if compute_budget is not None and epochs is None and curate != "none" and budget < 1:
            self.schedule = curated_epochs(self.n, budget, train_cfg.epochs, train_cfg.batch_size, len(uniq),
                                           text_cached=model_cfg.text_trainable_layers == 0,
                                           text_trainable=model_cfg.text_trainable_layers > 0,
                                           compute_budget=compute_budget)
            self.train_cfg = train_cfg = dataclasses.replace(train_cfg, epochs=self.schedule["epochs"])
            if ctx.is_main:
                print(f"pretrain: {self.schedule['why']}", file=sys.stderr)
        # the budget is checked here, once, by the context every curator is built from
        curation_context = CurationContext(
            n=self.n, budget=budget, seed=seed, texts=curator_kwargs.pop("texts", texts),
            text_features=curator_kwargs.pop("text_features", None))
        self.identity = normalise({
            "model_requested": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
            "data_hash": self.manifest.content_hash(), "n_rows": self.n, "curate": curate, "budget": budget,
            "seed": seed, "text_style": text_style, "curator_kwargs": curator_kwargs, "cxrfm_version": __version__,
            **self.extra_identity()})
        self.has_state = check_run_dir(self.run_dir, self.identity, resume)
        if resume and not self.has_state and ctx.is_main:
            print(f"pretrain: {out} holds no checkpoint yet; starting from step 0", file=sys.stderr)

        from ..models.factory import build_model

        self.model = build_model(model_cfg, seed=seed).to(ctx.device)
        self.model_cfg: ModelConfig = self.model.config
        if curation_context.text_features is None and model_cfg.text_tower == "minilm" and self.model.text.frozen:
            # curators that cluster by text get the loop's cached (and counted) frozen-MiniLM features
            curation_context = dataclasses.replace(curation_context,
                                                   text_features=lambda: self.inputs.row_text_features())
        if curation_context.thumbnails is None:
            curation_context = dataclasses.replace(curation_context, thumbnails=lambda: self.inputs.row_thumbnails())
        self.curator: Curator = curator_cls(curation_context, **curator_kwargs)
        self.optimizer = self._make_optimizer()
        self.acc = Accounting()
        self.step, self.epoch, self.batch_in_epoch, self.order = 0, 0, 0, None
        self.epoch_stats = new_epoch_stats()
        self.done = False
        self.total_steps: int | None = None
        if self.has_state:
            trainer, cur_state = load_checkpoint(self.run_dir, self.model, self.optimizer)
            self.curator.load_state_dict(cur_state)
            self._load_trainer(trainer)
        self.inputs = self.make_inputs(texts, text_id, unique_texts)
        self.metrics = MetricsLog(self.run_dir, ctx.is_main)
        self.cache_dir = cache_dir

    # ------------------------------------------------------------------ setup pieces
    def extra_identity(self) -> dict:
        """Settings beyond the common ones that a resume must match (streamed data adds its own)."""
        return {}

    def make_inputs(self, texts: list[str], text_id: np.ndarray, unique_texts: list[str]) -> PairInputs:
        return PairInputs(self.model, self.train_cfg, self.ctx, self.manifest, self.rows, texts, text_id,
                          unique_texts, self.acc)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, self.train_cfg)

    def _trainer_state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "order": None if self.order is None else np.asarray(self.order, dtype=np.int64),
                "epoch_stats": dict(self.epoch_stats), "accounting": self.acc.to_dict(), "done": self.done}

    def _load_trainer(self, t: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(t["step"]), int(t["epoch"]), int(t["batch_in_epoch"])
        self.order = None if t.get("order") is None else np.asarray(t["order"], dtype=np.int64)
        self.epoch_stats = dict(t["epoch_stats"])
        self.acc = Accounting.from_dict(t["accounting"])
        self.done = bool(t.get("done", False))

    # ------------------------------------------------------------------ schedule
    def _lr(self, n_batches: int) -> float:
        return learning_rate(self.train_cfg, self.epoch, self.batch_in_epoch, n_batches)

    def _diverged(self, what: str, lr: float, step: int) -> TrainingDivergedError:
        suggest = min(self.train_cfg.lr / 10, TrainConfig.lr)  # a tenth, and no more than the default
        return TrainingDivergedError(
            f"{self.out}: {what} at step {step} (epoch {self.epoch + 1}, lr {lr:.3g}); training stopped without "
            f"saving these weights. Lower the learning rate (e.g. --set train.lr={suggest:g}) and start a new run "
            f"in another --out")

    # ------------------------------------------------------------------ one step
    def train_step(self, gidx: np.ndarray, n_batches: int) -> dict:
        """One global batch: (score and select), forward the kept pairs, loss over all ranks, update."""
        cfg, ctx, inputs = self.train_cfg, self.ctx, self.inputs
        b = len(gidx)
        gen = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, self.batch_in_epoch))
        theta = random_affine(b, cfg, gen) if cfg.augment else None  # (B, 2, 3), same on every rank
        if self.curator.selects(self.epoch):
            img, txt = inputs.score(gidx, theta, tensors=self.curator.accepts_tensors)  # on the device if so
            kept_pos = np.flatnonzero(select_mask(self.curator, self.epoch, gidx.copy(), img, txt))
        else:
            kept_pos = np.arange(b)
        k = len(kept_pos)
        lr = self._lr(n_batches)
        if k < max(2, ctx.world):  # a contrastive loss needs a negative (and every rank a sample)
            return {"loss": None, "seen": b, "kept": k, "lr": lr}
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        local = shard(kept_pos, ctx)
        images = inputs.images(gidx[local], None if theta is None else theta[local])
        texts = inputs.text_input(gidx[local])
        # rank r trains kept_pos[r::world]; the gathered rows are in rank order
        counts = [len(kept_pos[r::ctx.world]) for r in range(ctx.world)]
        rows = np.concatenate([gidx[kept_pos[r::ctx.world]] for r in range(ctx.world)])
        return self.optimise(images, texts, counts, rows, lr, b)

    def optimise(self, images: torch.Tensor, texts, counts: list[int], rows: np.ndarray, lr: float,
                 seen: int) -> dict:
        """Forward this rank's pairs, the contrastive loss over all ranks' pairs, backward, update.

        ``counts[r]`` pairs are rank r's (all ranks know all counts); ``rows`` are every rank's curator
        rows in rank order (for the same-text positives). This rank's ``images`` hold ``counts[rank]``
        pairs, or one pair that is only padding when ``counts[rank]`` is 0 (streamed data: curation may
        keep nothing of one rank's share; the forward keeps every rank in the collectives).
        Single process: the global loss. Several: each rank's local loss over the gathered embeddings
        (:func:`~cxrfm.train.losses.local_contrastive_loss`), whose DDP-averaged gradient is the global one.
        """
        cfg, ctx = self.train_cfg, self.ctx
        k = int(sum(counts))
        with self.inputs.autocast():
            out = self.ddp(images, texts)
        img, txt = out.image_emb.float(), out.text_emb.float()
        scale = out.logit_scale.float()
        bias = None if out.logit_bias is None else out.logit_bias.float()
        pair_ids = torch.as_tensor(self.inputs.text_id[rows], device=img.device) if cfg.same_text_positive else None
        if not ctx.enabled:
            loss = contrastive_loss(self.model_cfg.loss, img, txt, scale, bias, pair_ids=pair_ids)
            loss_value = float(loss.detach())
        else:  # pad every rank to m rows, gather in rank order with gradients, drop the padding
            m, mine = max(counts), counts[ctx.rank]
            img_all = gather_with_grad(F.pad(img, (0, 0, 0, m - img.shape[0])), ctx)  # (world * m, D)
            txt_all = gather_with_grad(F.pad(txt, (0, 0, 0, m - txt.shape[0])), ctx)
            valid = torch.as_tensor(np.concatenate([r * m + np.arange(c) for r, c in enumerate(counts)]),
                                    device=img.device)
            loss = local_contrastive_loss(self.model_cfg.loss, img[:mine], txt[:mine], img_all[valid],
                                          txt_all[valid], int(sum(counts[:ctx.rank])), scale, bias,
                                          pair_ids=pair_ids, world=ctx.world)
            loss_value = mean_over_ranks(float(loss.detach()), ctx)  # the global loss, the same on every rank
        if not math.isfinite(loss_value):  # every rank holds the same value: all stop together
            raise self._diverged(f"the loss is {loss_value}", lr, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.fsdp:
            average_replicated_grads(self.model, ctx)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
            norm = float(full(norm) if self.fsdp else norm)
            if not math.isfinite(norm):
                raise self._diverged(f"the gradient norm is {norm}", lr, self.step + 1)
        self.optimizer.step()
        self.acc.image_fwd += k
        self.acc.image_bwd += k
        if self.inputs.text_feats is None:
            self.acc.text_fwd += k
            self.acc.text_bwd += k if any(p.requires_grad for p in self.model.text.backbone.parameters()) else 0
        return {"loss": loss_value, "seen": seen, "kept": k, "lr": lr}

    # ------------------------------------------------------------------ the run
    def run(self, max_steps: int | None = None) -> Path:
        ctx, cfg = self.ctx, self.train_cfg
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_run_config(self.run_dir, self.model_cfg, cfg, self.identity)
            self.run_dir.write_training_data(
                self.manifest.path, self.identity["data_hash"], self.ids,
                self.manifest.table["patient_id"].astype(str).to_numpy()[self.rows].tolist())
            if self.model_cfg.text_hf_config is not None:
                self.model.text.tokenizer.save_pretrained(str(self.run_dir.tokenizer_dir))
            self.metrics.trim(self.step, self.epoch, self.has_state)
        if self.done:  # resuming a finished run: nothing to train, make sure its outputs are complete
            self._write_curation()
            return self.out
        self.inputs.prepare(self.cache_dir, self.progress)
        self.model.train()
        if self.fsdp:
            self.ddp, self.optimizer = shard_model(self.model, self.optimizer, cfg, ctx)  # the model, sharded
        else:
            self.ddp = wrap_ddp(self.model, ctx, find_unused=self.model_cfg.image_hf_config is not None)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        schedule = CheckpointSchedule(cfg.checkpoint_every, cfg.checkpoint_every_s)
        steps_this_call = 0
        with StopRequest() as stop_request:
            try:
                while self.epoch < cfg.epochs:
                    if self.order is None:
                        self._begin_epoch()
                    n_batches, batches = self.epoch_batches()
                    # steps done before this epoch + this epoch's + the same again for each epoch left
                    self.total_steps = self.step - self.batch_in_epoch + n_batches * (cfg.epochs - self.epoch)
                    bar = self._bar(n_batches)
                    self.metrics.start_epoch()
                    for batch in batches:
                        res = self.train_step(batch, n_batches)
                        self.step += 1
                        self.batch_in_epoch += 1
                        steps_this_call += 1
                        self.metrics.record_step(res, self.epoch_stats, step=self.step, epoch=self.epoch,
                                                 log_every=cfg.log_every, logit_scale=self.model.logit_scale, bar=bar)
                        stop = stop_request.requested or (max_steps is not None and steps_this_call >= max_steps)
                        if any_rank(stop, ctx):
                            self._checkpoint(schedule)
                            bar.close()
                            if stop_request.requested:
                                print(f"pretrain: stopped at step {self.step} of about {self.total_steps}; "
                                      f"checkpoint in {self.out}; continue with --resume", file=sys.stderr)
                                raise KeyboardInterrupt
                            return self.out
                        if any_rank(schedule.due(self.step), ctx):
                            self._checkpoint(schedule)
                    bar.close()
                    self.curator.end_epoch(self.epoch)
                    self.metrics.record_epoch(self.epoch_stats, step=self.step, epoch=self.epoch, rows=len(self.order),
                                              logit_scale=self.model.logit_scale, units=self.acc.units())
                    self.epoch, self.order, self.batch_in_epoch = self.epoch + 1, None, 0
            except TrainingDivergedError as e:
                if ctx.is_main:
                    self.run_dir.write_status(finished=False, error=str(e))
                raise
        self.done = True
        self.total_steps = self.step
        self._checkpoint(schedule)
        self._write_curation()
        return self.out

    def epoch_batches(self):
        """(batches in this epoch, an iterator over those from ``batch_in_epoch`` on): global batches of
        curator rows, slices of the epoch's order."""
        sizes = epoch_batch_sizes(len(self.order), self.train_cfg.batch_size)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        return len(sizes), (self.order[starts[b]:starts[b + 1]] for b in range(self.batch_in_epoch, len(sizes)))

    def _begin_epoch(self) -> None:
        self.curator.begin_epoch(self.epoch, self.inputs.embed)
        rows = np.asarray(self.curator.epoch_rows(self.epoch), dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise ConfigError(f"--curate {self.curate}: epoch_rows() returned rows outside 0..{self.n - 1}")
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(rows))
        self.order, self.batch_in_epoch = rows[perm], 0
        self.epoch_stats = new_epoch_stats()

    # ------------------------------------------------------------------ bookkeeping
    def _bar(self, total: int):
        return tqdm(total=total, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{self.train_cfg.epochs}",
                    unit="batch", disable=not self.progress, leave=False)

    def _saveable(self):
        """(weights source, optimiser) as checkpoints read them: the full state gathered under FSDP."""
        if not self.fsdp:
            return self.model, self.optimizer
        state = FullState(self.model, self.optimizer)  # a collective: every rank builds it
        return state, state

    def _checkpoint(self, schedule: CheckpointSchedule) -> None:
        weights, optimizer = self._saveable()
        named = weights.weights_to_save().items() if self.fsdp else (
            (name, p) for name, p in self.model.named_parameters() if p.requires_grad)
        bad = [name for name, p in named if not torch.isfinite(p).all()]
        if bad:  # never save (or call finished) weights that are NaN/inf
            raise self._diverged(f"non-finite weights ({', '.join(bad[:3])})", self.optimizer.param_groups[0]["lr"],
                                 self.step)
        if self.ctx.is_main:
            save_checkpoint(self.run_dir, weights, optimizer, self._trainer_state(), self.curator.state_dict(),
                            total_steps=self.total_steps)
        barrier(self.ctx)
        schedule.saved()

    def _write_curation(self) -> None:
        write_debug_fingerprint(rank=self.ctx.rank, world=self.ctx.world, step=self.step, curator=self.curator,
                                weights=self._saveable()[0].weights_to_save(), acc=self.acc)
        if not self.ctx.is_main:
            return
        write_curation(self.run_dir, curator=self.curator, acc=self.acc, ids=self.ids,
                       n_without_text=self.n_without_text, curate=self.curate, budget=self.budget, seed=self.seed,
                       epochs=self.train_cfg.epochs, batch_size=self.train_cfg.batch_size,
                       n_unique_texts=len(self.inputs.unique_texts), text_cached=self.model.text.frozen,
                       text_trainable=any(p.requires_grad for p in self.model.text.backbone.parameters()),
                       schedule=self.schedule)
