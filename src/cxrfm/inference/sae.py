"""A Matryoshka batch-top-k sparse autoencoder over a model's embeddings, in plain torch.

Follows SAIL's recipe for medical image embeddings and the papers it builds on:

- batch top-k while training (Bussmann et al., "BatchTopK Sparse Autoencoders", 2024): the ``k * B``
  largest pre-activations of a batch of ``B`` survive, so an image may use more or fewer than ``k``
  features; at inference a learned threshold (a running mean of the smallest activation kept) replaces
  the batch, so one image is encoded the same way alone or in a batch;
- nested dictionaries (Bussmann et al., "Learning Multi-Level Features with Matryoshka SAEs", 2025):
  the loss sums the reconstruction error of each prefix of the dictionary (e.g. the first 32, 128, 512
  features), so the first features carry the coarse concepts and later ones refine them;
- dead-feature revival (resampling, Bricken et al., "Towards Monosemanticity", 2023): after each epoch a
  feature that fired on no training input is re-initialised towards the inputs reconstructed worst, and the
  AuxK loss (Gao et al. 2024) trains the features silent for ``dead_rows`` training rows on the residual;
- a firing-rate floor (homeostatic threshold adaptation, Foldiak 1990, "Forming sparse representations by
  local anti-Hebbian learning"; the same idea as the bias-based load balancing of mixture-of-experts
  routers): after each batch, the encoder bias of every feature that fired on fewer than ``min_rate`` of
  the batch's rows is raised by :data:`BALANCE_STEP`, so it is selected, gets gradient and finds a use.
  After revival stops the learning rate falls linearly to 0 (``settle_decay``), so in the last epochs the
  floor outweighs Adam's steps. Without the two, on embeddings with few directions
  (docs/concepts.md) features revived late fire on 0-6 of 1,250 training rows (they fit a few badly
  reconstructed inputs) and on none of the held-out rows: dead there. With them, features kept above the
  floor may still contribute little: :func:`evaluate_sae` reports that share (``negligible_fraction``).

Embeddings are centred and scaled by statistics of the training embeddings (stored with the weights), so
one learning rate suits any model. Training is seeded (each epoch's shuffle comes from ``seed`` and the
epoch number) and resumable from the state written after every epoch. Weights are safetensors, settings
JSON; :func:`load_sae` refuses a folder trained on another run's weights.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from .sae_files import (FORMAT, SAE_JSON, SAE_WEIGHTS, STATE_DIR, ConceptsError, _load_state, _save_state,  # noqa: F401
                        _tensors, read_sae_json, save_sae)

THRESHOLD_MOMENTUM = 0.99
AUX_WEIGHT = 1 / 32  # AuxK's weight in Gao et al. 2024
BALANCE_STEP = 1e-3  # encoder-bias raise per batch for a feature under the firing-rate floor (scaled units)


@dataclass(frozen=True)
class SAEConfig:
    """Settings of one SAE; the defaults were chosen on a validation part (docs/concepts.md)."""

    sizes: tuple[int, ...] = (16, 64)  # nested dictionary sizes; the last is the dictionary
    # features active per input, on average over a batch; k = M/4 kept features alive on the tiny model's
    # embeddings, where sparser codes left a third of the dictionary dead (docs/concepts.md)
    k: int = 16
    epochs: int = 80
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    revive_until: float = 0.75  # revive dead features during this fraction of the epochs, then let them settle
    # firing-rate floor: a feature selected for fewer than this share of a batch's rows has its encoder bias
    # raised by BALANCE_STEP (0 = off, the behaviour before; chosen on validation rows, docs/concepts.md)
    min_rate: float = 0.02
    settle_decay: bool = True  # after revival stops, the learning rate falls linearly to 0 (False: constant)
    dead_rows: int = 0  # AuxK counts a feature dead after this many training rows without firing (0: one epoch)
    k_aux: int = 0  # AuxK's number of dead features per input (0: 2k; Gao et al. use d_in / 2)
    # numbers the caller stores with the concepts, e.g. which embeddings they were trained on
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.sizes[-1])

    def check(self, d_in: int | None = None) -> "SAEConfig":
        sizes = [int(s) for s in self.sizes]
        if not sizes or any(s <= 0 for s in sizes) or sizes != sorted(set(sizes)):
            raise ConfigError(f"SAE sizes {self.sizes!r} must be increasing positive dictionary sizes, e.g. 64,256,1024")
        if not 0 < int(self.k) <= sizes[-1]:
            raise ConfigError(f"SAE k={self.k} must be between 1 and the dictionary size {sizes[-1]}: a dictionary "
                              f"smaller than k cannot be sparse; raise --sizes or lower --k")
        if not 0 <= self.min_rate < 1 or self.dead_rows < 0 or self.k_aux < 0:
            raise ConfigError(f"SAE min_rate ({self.min_rate}) must be in [0, 1), dead_rows ({self.dead_rows}) and "
                              f"k_aux ({self.k_aux}) >= 0")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ConfigError(f"SAE epochs ({self.epochs}), batch_size ({self.batch_size}) and lr ({self.lr}) must be "
                              f">= 1, >= 2 and > 0")
        if d_in is not None and d_in < 1:
            raise ConceptsError(f"embeddings of dimension {d_in}: nothing to encode")
        return self

    def to_json(self) -> dict:
        return {**asdict(self), "sizes": [int(s) for s in self.sizes]}


class MatryoshkaSAE(torch.nn.Module):
    """``encode(x (B, D)) -> (B, M)`` sparse non-negative codes; ``decode(codes) -> (B, D)``."""

    def __init__(self, d_in: int, config: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        config.check(d_in)
        self.config, self.d_in = config, int(d_in)
        m = config.n_features
        w = torch.randn(m, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)  # (M, D), unit rows: a feature's direction
        self.W_enc = torch.nn.Parameter(w.t().clone())  # (D, M), tied at init (Gao et al. 2024)
        self.b_enc = torch.nn.Parameter(torch.zeros(m))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))

    # -- the maps
    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ConceptsError(f"embeddings of shape {tuple(x.shape)} do not match these concepts, trained on "
                                f"{self.d_in}-dimensional embeddings; use the concepts of this model's run "
                                f"(`cxrfm concepts train --model RUN`)")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale  # (B, D) in the training embeddings' units
        return torch.relu((z - self.b_dec) @ self.W_enc + self.b_enc)  # (B, M)

    def encode(self, x: torch.Tensor, batch_topk: bool = False) -> torch.Tensor:
        """Sparse codes (B, M): the batch's top ``k * B`` when training, else those above the threshold."""
        self.check_input(x)
        pre = self.pre_activations(x)
        if not batch_topk:
            return pre * (pre > self.threshold)
        keep = torch.topk(pre.flatten(), min(self.config.k * len(pre), pre.numel()), sorted=False).indices
        mask = torch.zeros_like(pre).flatten().index_fill_(0, keep, 1.0).view_as(pre)
        return pre * mask

    def decode(self, codes: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Embeddings (B, D) from codes, using only the first ``upto`` features when given."""
        m = codes.shape[1] if upto is None else upto
        z = codes[:, :m] @ self.W_dec[:m] + self.b_dec  # (B, D)
        return z * self.scale + self.mean

    def nested_loss(self, x: torch.Tensor, codes: torch.Tensor, dead: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the nested dictionaries of each prefix's squared error (in scaled units), plus the
        AuxK term (Gao et al., "Scaling and evaluating sparse autoencoders", 2024) when ``dead`` (M,) bool
        marks features that have not fired lately: their top activations must explain what the live
        features left over, which pulls them back towards the data."""
        z = (x - self.mean) / self.scale
        recon = self.b_dec.expand_as(z)
        losses, start = [], 0
        for m in self.config.sizes:
            recon = recon + codes[:, start:m] @ self.W_dec[start:m]  # (B, D): prefix m's reconstruction
            losses.append(((z - recon) ** 2).sum(dim=1).mean())
            start = m
        loss = torch.stack(losses).mean()
        if dead is not None and bool(dead.any()):
            resid = (z - recon).detach()  # (B, D): what the full dictionary missed
            pre = self.pre_activations(x)[:, dead]  # (B, n_dead)
            k_aux = min(int(pre.shape[1]), self.config.k_aux or 2 * self.config.k)
            top = torch.topk(pre, k_aux, dim=1)
            aux = torch.zeros_like(pre).scatter_(1, top.indices, top.values) @ self.W_dec[dead]  # (B, D)
            loss = loss + AUX_WEIGHT * ((resid - aux) ** 2).sum(dim=1).mean() / \
                (resid ** 2).sum(dim=1).mean().clamp_min(1e-12)
        return loss

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


# ---------------------------------------------------------------- training
def embeddings_hash(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()[:16]


def explained_variance(x: np.ndarray, x_hat: np.ndarray) -> float:
    """R² = 1 - SSE / SST, SST about the mean of ``x`` (the fraction of variance reconstructed)."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    sst = float(((x - x.mean(axis=0)) ** 2).sum())
    return float(1.0 - ((x - x_hat) ** 2).sum() / sst) if sst > 0 else float("nan")


@torch.no_grad()
def reconstruct(sae: MatryoshkaSAE, x: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N, M), reconstructions (N, D)) with the inference threshold."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    sae.check_input(xt)
    codes, recon = [], []
    for i in range(0, len(xt), batch_size):
        c = sae.encode(xt[i:i + batch_size])
        codes.append(c)
        recon.append(sae.decode(c))
    if not codes:
        return np.zeros((0, sae.config.n_features), np.float32), np.zeros((0, sae.d_in), np.float32)
    return torch.cat(codes).numpy(), torch.cat(recon).numpy()


NEGLIGIBLE_R2 = 1e-4  # a feature whose removal lowers R² by less than this does not matter to the reconstruction
RARE_RATE = 0.01  # a feature firing on fewer than this share of the rows counts as rare


def feature_r2_loss(sae: MatryoshkaSAE, x: np.ndarray, codes: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """(M,) how much R² on ``x`` drops when each feature alone is removed from the codes (0 for a dead one)."""
    x64, c = np.asarray(x, dtype=np.float64), np.asarray(codes, dtype=np.float64)
    sst = float(((x64 - x64.mean(axis=0)) ** 2).sum())
    if not sst > 0:
        return np.zeros(c.shape[1])
    resid = x64 - np.asarray(recon, dtype=np.float64)  # (N, D)
    w = sae.W_dec.detach().double().numpy() * float(sae.scale)  # (M, D): a unit code's change in x
    # ||r + c_f w_f||^2 - ||r||^2, summed over rows, for every f at once
    return (2 * (c * (resid @ w.T)).sum(axis=0) + (c ** 2).sum(axis=0) * (w ** 2).sum(axis=1)) / sst


def evaluate_sae(sae: MatryoshkaSAE, x: np.ndarray) -> dict:
    """R², dead fraction (features that fire on none of ``x``), mean active features, R² per nested size, and
    two second looks at the dictionary: ``rare_fraction`` (features firing on under 1 % of ``x``, dead ones
    included) and ``negligible_fraction`` (features whose removal lowers R² on ``x`` by under 1e-4, dead ones
    included): a feature may fire and still do nothing."""
    codes, recon = reconstruct(sae, x)
    with torch.no_grad():
        nested = {str(m): explained_variance(x, sae.decode(torch.as_tensor(codes), upto=m).numpy())
                  for m in sae.config.sizes}
    rate = (codes > 0).mean(axis=0) if len(codes) else np.zeros(codes.shape[1])
    loss = feature_r2_loss(sae, x, codes, recon)
    return {"r2": explained_variance(x, recon), "dead_fraction": float((codes.max(axis=0, initial=0) <= 0).mean()),
            "rare_fraction": float((rate < RARE_RATE).mean()),
            "negligible_fraction": float((loss < NEGLIGIBLE_R2).mean()),
            "mean_active": float((codes > 0).sum(axis=1).mean()) if len(codes) else 0.0, "r2_nested": nested,
            "n": int(len(x))}


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # derived from (seed, epoch) alone, so a resumed run draws exactly what an uninterrupted one would
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 1)


@torch.no_grad()
def revive_dead(sae: MatryoshkaSAE, optimizer: torch.optim.Optimizer, fired: torch.Tensor, x: torch.Tensor,
                generator: torch.Generator) -> int:
    """Re-initialise the features that never fired (``fired`` False) towards the worst-reconstructed
    inputs of ``x`` (their residual directions), with zeroed Adam moments; returns how many."""
    dead = torch.nonzero(~fired).flatten()
    if len(dead) == 0:
        return 0
    z = (x - sae.mean) / sae.scale
    resid = z - ((sae.encode(x, batch_topk=True) @ sae.W_dec) + sae.b_dec)  # (N, D): picks the worst inputs
    err = (resid ** 2).sum(dim=1)
    picks = torch.multinomial(err / err.sum(), len(dead), replacement=len(dead) > len(err), generator=generator)
    # an input's own direction, not its residual: on embeddings with few strong directions the residuals
    # are noise no input aligns with, and a feature pointed there dies again (measured: docs/concepts.md)
    d = (z - sae.b_dec)[picks]
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (n_dead, D)
    sae.W_dec[dead] = d
    # the encoder column gets the mean norm of the live ones, so a revived feature competes on equal terms
    alive = torch.nonzero(fired).flatten()
    norm = sae.W_enc[:, alive].norm(dim=0).mean() if len(alive) else torch.tensor(1.0)
    sae.W_enc[:, dead] = d.t() * norm
    sae.b_enc[dead] = 0.0
    for p in (sae.W_dec, sae.W_enc, sae.b_enc):
        st = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                if p is sae.W_enc:
                    st[key][:, dead] = 0.0
                else:
                    st[key][dead] = 0.0
    return int(len(dead))


def epoch_lr(config: SAEConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): constant while features are revived, then, with ``settle_decay``,
    falling linearly towards 0 over the remaining epochs (the firing-rate floor then outweighs Adam's steps)."""
    if not config.settle_decay:
        return float(config.lr)
    settle = max(1.0, (1 - config.revive_until) * config.epochs)
    return float(config.lr) * min(1.0, (config.epochs - epoch) / settle)


@torch.no_grad()
def raise_rare_biases(sae: MatryoshkaSAE, codes: torch.Tensor, min_rate: float) -> int:
    """The firing-rate floor: raise by :data:`BALANCE_STEP` the encoder bias of each feature selected for fewer
    than ``min_rate`` of the batch's rows (``codes`` (B, M)); returns how many were raised."""
    if min_rate <= 0:
        return 0
    low = (codes > 0).float().mean(dim=0) < min_rate
    sae.b_enc.add_(low.float() * BALANCE_STEP)
    return int(low.sum())


def train_sae(x: np.ndarray, config: SAEConfig | None = None, state_dir: str | Path | None = None,
              progress: Callable[[int, dict], None] | None = None) -> tuple[MatryoshkaSAE, dict]:
    """Train on embeddings ``x`` (N, D); returns (sae, history).

    With ``state_dir`` the state is written after every epoch and an existing state of the same settings
    and embeddings is resumed (a state of other settings or embeddings is an error naming the folder).
    ``progress(epoch, info)`` is called after each epoch.
    """
    config = (config or SAEConfig()).check()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < config.batch_size // 2 or not np.isfinite(x).all():
        raise ConceptsError(f"an SAE needs a finite (N, D) embedding matrix with N >= {config.batch_size // 2} "
                            f"rows; got shape {x.shape}{'' if np.isfinite(x).all() else ' with NaN/inf values'}")
    xt = torch.from_numpy(x)
    sae = MatryoshkaSAE(x.shape[1], config, generator=torch.Generator().manual_seed(int(config.seed)))
    with torch.no_grad():
        sae.mean.copy_(xt.mean(dim=0))
        sae.scale.copy_(((xt - sae.mean) ** 2).sum(dim=1).mean().sqrt().clamp_min(1e-8))  # unit mean norm
    opt = torch.optim.Adam(sae.parameters(), lr=config.lr)
    data_hash = embeddings_hash(x)
    history: dict = {"epochs": [], "revived": [], "data_hash": data_hash, "resumed_from": None}
    start = 0
    silent = torch.zeros(config.n_features, dtype=torch.long)  # training rows since each feature last fired
    if state_dir is not None:
        start = _load_state(Path(state_dir), sae, opt, config, data_hash, history, silent)
    n, bs = len(xt), config.batch_size
    for epoch in range(start, config.epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        g = _epoch_generator(config.seed, epoch)
        order = torch.randperm(n, generator=g)
        fired = torch.zeros(config.n_features, dtype=torch.bool)
        total = 0.0
        steps_per_epoch = max(1, (n - bs // 2 + 1 + bs - 1) // bs)
        window = config.dead_rows or steps_per_epoch * bs  # rows without firing after which AuxK calls it dead
        for i in range(0, n - bs // 2 + 1, bs):  # a last batch under half size is dropped (its top-k is noisy)
            xb = xt[order[i:i + bs]]
            codes = sae.encode(xb, batch_topk=True)
            loss = sae.nested_loss(xb, codes, dead=silent >= window)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            with torch.no_grad():
                kept = codes[codes > 0]
                if len(kept):
                    cut = kept.min()
                    first = epoch == 0 and i == 0 and start == 0
                    sae.threshold.copy_(cut if first else THRESHOLD_MOMENTUM * sae.threshold
                                        + (1 - THRESHOLD_MOMENTUM) * cut)
                now = (codes > 0).any(dim=0)
                fired |= now
                silent = torch.where(now, torch.zeros_like(silent), silent + len(xb))
                raise_rare_biases(sae, codes, config.min_rate)
            total += float(loss.detach()) * len(xb)
        revived = 0
        if epoch + 1 < config.epochs and epoch + 1 <= config.revive_until * config.epochs:
            revived = revive_dead(sae, opt, fired, xt[order[: min(n, 8192)]], g)
        info = {"epoch": epoch + 1, "loss": total / n, "dead_in_epoch": int((~fired).sum()), "revived": revived}
        history["epochs"].append(info)
        if state_dir is not None:
            _save_state(Path(state_dir), sae, opt, config, data_hash, history, silent)
        if progress is not None:
            progress(epoch + 1, info)
    sae.eval()
    return sae, history


def load_sae(folder: str | Path, run_weights_sha256: str | None = None) -> tuple[MatryoshkaSAE, dict]:
    """(sae, its JSON) from ``folder``. With ``run_weights_sha256`` (``RunDir.weights_sha256()``), a folder
    trained on another run's weights is refused: its features would describe another embedding space."""
    from safetensors.torch import load_file

    info = read_sae_json(folder)
    trained_on = (info.get("run") or {}).get("weights_sha256")
    if run_weights_sha256 is not None and trained_on != run_weights_sha256:
        raise ConceptsError(
            f"{folder}: these concepts come from another run ({(info.get('run') or {}).get('path', 'unknown')}, "
            f"weights {str(trained_on)[:12]}), not from the model given (weights {run_weights_sha256[:12]}); train "
            f"concepts for this run with `cxrfm concepts train --model RUN`")
    cfg = dict(info["config"])
    cfg["sizes"] = tuple(cfg["sizes"])
    # folders from before the firing-rate floor and the settling decay were trained without them
    cfg.setdefault("min_rate", 0.0)
    cfg.setdefault("settle_decay", False)
    sae = MatryoshkaSAE(int(info["d_in"]), SAEConfig(**cfg))
    try:
        sae.load_state_dict(load_file(str(Path(folder) / SAE_WEIGHTS)))
    except Exception as e:  # noqa: BLE001 - missing, truncated or wrong-shaped: the fix is the same
        raise ConceptsError(f"{Path(folder) / SAE_WEIGHTS}: cannot load ({e}); re-run `cxrfm concepts train`") from e
    return sae.eval(), info
