"""Training the CXR autoencoder (``cxrfm compress train``) and pretraining on its latents (``--latents AE``).

Stage 1 (reconstruction): ``(1 - a) * L1 + a * (1 - MS-SSIM)`` with ``a = 0.84`` (Zhao et al. 2017's mix),
plus, with ``adv_weight > 0``, a hinge PatchGAN term from ``adv_start`` of the stage on (MedVAE's stage 1
has a perceptual term too; a perceptual network would be downloaded, so none here). Stage 2 (MedVAE's
alignment, ``align_model`` = a cxrfm run): the reconstruction loss plus ``align_weight * (1 - cos)`` between
the run's image embedding of the decoded image and of the original, so that the latents keep what cxrfm's
own encoder sees. Afterwards the per-channel latent statistics are measured on training images.

Resumable: the batch of step ``t`` is drawn from a generator seeded by ``(seed, t)``, and a checkpoint
(weights, optimisers, step; ``AE/state/``) is written every ``checkpoint_every`` steps, at the end and on
Ctrl-C / SIGTERM, so ``resume=True`` continues to the same result. Only the train split's rows are used.

:class:`LatentPretraining` is :class:`~cxrfm.train.pretraining.Pretraining` with the image tower switched
to ``latent`` and its inputs read from the latent cache (:mod:`cxrfm.data.latent_cache`): the frozen
encoder never runs during training.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import load_config
from ..data.schema import Manifest
from ..errors import ConfigError
from ..models.autoencoder import (STATE_DIR, WEIGHTS_FILE, AEConfig, Autoencoder, AutoencoderError,
                                  PatchDiscriminator, load_autoencoder, ms_ssim, psnr, read_ae_meta, save_autoencoder)
from ..models.latent_tower import encode_manifest, latent_model_config, pack_latents
from .augment import apply_affine
from .checkpoint import load_optimizer_state, optimizer_state, read_tensors, write_json, write_tensors
from .inputs import PairInputs, training_rows
from .interrupts import StopRequest
from .pretraining import Pretraining

MSSSIM_MIX = 0.84


def _state_files(out: Path) -> dict[str, Path]:
    s = out / STATE_DIR
    return {"trainer": s / "trainer.json", "weights": s / "weights.safetensors", "opt": s / "optimizers.safetensors"}


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (1 - MSSSIM_MIX) * (rec - x).abs().mean() + MSSSIM_MIX * (1 - ms_ssim(rec, x)).mean()


@torch.no_grad()
def reconstruction_scores(ae: Autoencoder, pixels: torch.Tensor, batch: int = 32) -> dict:
    """Mean PSNR (dB) and MS-SSIM of ``pixels`` (B, 1, S, S) after encode -> 8-bit latents -> decode."""
    from ..data.latent_cache import round_trip

    ps, ms = [], []
    for i in range(0, len(pixels), batch):
        x = pixels[i:i + batch]
        rec = round_trip(ae, x)
        ps.append(psnr(rec, x))
        ms.append(ms_ssim(rec, x))
    return {"psnr": float(torch.cat(ps).mean()), "ms_ssim": float(torch.cat(ms).mean()), "n": len(pixels)}


def train_autoencoder(data: Manifest | str | Path, out: str | Path, factor: int = 8, channels: int = 4,
                      width: int = 32, size: int = 128, steps: int = 2000, batch_size: int = 16, lr: float = 2e-4,
                      seed: int = 0, adv_weight: float = 0.0, adv_start: float = 0.5,
                      align_model: str | Path | None = None, align_steps: int = 0, align_weight: float = 1.0,
                      resume: bool = False, progress: bool = True, cache_dir: str | Path | None = None,
                      checkpoint_every: int = 200, max_steps: int | None = None, device: str | None = None) -> Path:
    """Train an autoencoder on ``data``'s train rows into the folder ``out``; returns ``out``.

    ``max_steps`` stops after that many steps of this call with a checkpoint (resume later). ``device``
    defaults to CUDA when available (weights and results do not depend on it beyond float rounding).
    """
    from ..data.cache import ImageCache

    out = Path(out)
    cfg = AEConfig(factor=int(factor), channels=int(channels), width=int(width), image_size=int(size))
    if steps < 1 or align_steps < 0 or batch_size < 2 or not lr > 0:
        raise ConfigError(f"steps ({steps}) must be >= 1, align steps ({align_steps}) >= 0, batch size ({batch_size}) "
                          f">= 2 and lr ({lr}) > 0")
    if align_steps and align_model is None:
        raise ConfigError("--align-steps needs --align-model RUN (a cxrfm run whose image encoder the latents "
                          "align to)")
    if align_model is not None and not align_steps:
        align_steps = max(1, steps // 4)
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    rows = training_rows(manifest)
    identity = {**dataclasses.asdict(cfg), "steps": int(steps), "align_steps": int(align_steps),
                "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed), "adv_weight": float(adv_weight),
                "adv_start": float(adv_start), "align_weight": float(align_weight),
                "align_model": str(Path(align_model).resolve()) if align_model else None,
                "data_hash": manifest.content_hash()}
    files = _state_files(out)
    trainer = _check_out(out, files, identity, resume)
    total = steps + align_steps
    if trainer is not None and trainer["step"] >= total and (out / WEIGHTS_FILE).is_file():
        print(f"compress train: {out} is finished ({total} steps); nothing to do", file=sys.stderr)
        return out
    pixels = ImageCache.build(manifest, size=cfg.image_size, cache_dir=cache_dir, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae, disc = Autoencoder(cfg), PatchDiscriminator(max(8, cfg.width))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ae, disc = ae.to(dev), disc.to(dev)
    opt = torch.optim.Adam(ae.parameters(), lr=lr, betas=(0.5, 0.9))
    dopt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    step, history = 0, []
    if trainer is not None:
        w = read_tensors(files["weights"])
        ae.load_state_dict({k[3:]: v for k, v in w.items() if k.startswith("ae.")})
        disc.load_state_dict({k[5:]: v for k, v in w.items() if k.startswith("disc.")})
        arrays = read_tensors(files["opt"])
        for name, o in (("ae", opt), ("disc", dopt)):
            load_optimizer_state(o, trainer["optimizers"][name],
                                 {k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(name + ".")})
        step, history = int(trainer["step"]), list(trainer.get("history", []))
    judge = None
    if align_model is not None:
        from ..models.dual import load_model

        judge = load_model(align_model, device=dev)
        judge.requires_grad_(False)

    def checkpoint():
        w = {**{f"ae.{k}": v for k, v in ae.state_dict().items()},
             **{f"disc.{k}": v for k, v in disc.state_dict().items()}}
        write_tensors(files["weights"], w)
        skel, arrays = {}, {}
        for name, o in (("ae", opt), ("disc", dopt)):
            skel[name], a = optimizer_state(o)
            arrays.update({f"{name}.{k}": v for k, v in a.items()})
        write_tensors(files["opt"], arrays or {"_": torch.zeros(1)})
        write_json(files["trainer"], {"identity": identity, "step": step, "total_steps": total, "optimizers": skel,
                                      "history": history[-200:]})

    last_ckpt, t0 = step, time.perf_counter()
    ae.train()
    stop_at = total if max_steps is None else min(total, step + int(max_steps))
    with StopRequest() as stop, tqdm(total=total, initial=step, desc="compress train", unit="step",
                                     disable=not progress) as bar:
        while step < stop_at:
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + step)
            idx = rows[torch.randint(len(rows), (batch_size,), generator=gen).numpy()]
            x = pixels.batch(np.sort(idx)).to(dev)  # (B, 1, S, S)
            rec = ae(x)
            loss = reconstruction_loss(rec, x)
            parts = {"rec": float(loss.detach())}
            adv_on = adv_weight > 0 and step < steps and step >= adv_start * steps
            if adv_on:
                g = -disc(rec).mean()
                loss = loss + adv_weight * g
                parts["gen"] = float(g.detach())
            if judge is not None and step >= steps:  # stage 2: keep what the run's image encoder sees
                with torch.no_grad():
                    target = judge.encode_image(x)
                align = (1 - (judge.encode_image(rec) * target).sum(-1)).mean()
                loss = loss + align_weight * align
                parts["align"] = float(align.detach())
            if not math.isfinite(float(loss.detach())):
                raise ConfigError(f"{out}: the autoencoder loss became {float(loss)} at step {step + 1}; lower --lr "
                                  f"and train again into another --out")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            if adv_on:  # hinge loss of the discriminator
                d = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
                dopt.zero_grad(set_to_none=True)
                d.backward()
                dopt.step()
                parts["disc"] = float(d.detach())
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()}, refresh=False)
            if step % max(1, min(10, total // 20)) == 0 or step == total:
                history.append({"step": step, "stage": 1 if step <= steps else 2, **parts})
            if step - last_ckpt >= checkpoint_every or stop.requested:
                checkpoint()
                last_ckpt = step
            if stop.requested:
                print(f"compress train: stopped at step {step}/{total}; continue with --resume", file=sys.stderr)
                return out
    checkpoint()
    if step < total:
        return out
    ae.eval()
    sample = pixels.batch(np.sort(rows[np.random.default_rng(seed).permutation(len(rows))[:256]])).to(dev)
    ae.set_latent_stats(sample)
    scores = reconstruction_scores(ae, sample[:64])
    record = {"steps": int(steps), "align_steps": int(align_steps), "batch_size": int(batch_size), "lr": float(lr),
              "seed": int(seed), "adv_weight": float(adv_weight), "align_model": identity["align_model"],
              "data": str(manifest.path) if manifest.path else None, "data_hash": manifest.content_hash(),
              "n_train_rows": int(len(rows)), "train_sample_scores": scores, "seconds_this_call":
              round(time.perf_counter() - t0, 1), "final_losses": history[-1] if history else None}
    save_autoencoder(ae, out, record)
    return out


def _check_out(out: Path, files: dict, identity: dict, resume: bool) -> dict | None:
    """The checkpoint to resume from (None: start fresh); refuses a folder of another AE or a silent overwrite."""
    import json

    has = files["trainer"].is_file()
    if not resume:
        if has or (out / WEIGHTS_FILE).exists():
            raise AutoencoderError(f"{out}: already holds an autoencoder (or its checkpoint); continue it with "
                                   f"--resume, or choose another --out")
        return None
    if not has:
        if (out / WEIGHTS_FILE).exists():
            read_ae_meta(out)  # a finished folder without state: damaged or copied
            raise AutoencoderError(f"{out}: has no {STATE_DIR}/ checkpoint to resume; choose another --out")
        print(f"compress train: {out} holds no checkpoint yet; starting from step 0", file=sys.stderr)
        return None
    try:
        trainer = json.loads(files["trainer"].read_text(encoding="utf-8"))
        old = trainer["identity"]
        int(trainer["step"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise AutoencoderError(f"{files['trainer']}: damaged ({e}); delete {out} and train again") from None
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in identity.items() if old.get(k) != v]
    if diff:
        raise AutoencoderError(f"{out}: was trained with other settings ({'; '.join(diff)}); --resume needs the same "
                               f"ones (factor/channels included), or choose another --out")
    if not (files["weights"].is_file() and files["opt"].is_file()):
        raise AutoencoderError(f"{out}/{STATE_DIR}: checkpoint incomplete; delete {out} and train again")
    return trainer


# ------------------------------------------------------------------ pretraining on latents
class LatentPairInputs(PairInputs):
    """PairInputs whose "pixels" are cached latents, packed for the latent tower's ``latent_input`` mode."""

    def open_images(self, cache_dir, progress: bool) -> None:
        from ..data.latent_cache import LatentCache, LatentCacheError, latent_cache_path
        from .distributed import barrier

        arch, size = self.model_cfg.image_arch, self.model.image_size
        if self.ctx.is_main:
            cache = encode_manifest(arch["ae"], self.manifest, size=size, cache_dir=cache_dir, progress=progress,
                                    factor=arch["factor"], channels=arch["channels"])
            if cache.ae_hash != arch["ae_hash"]:
                raise LatentCacheError(f"{arch['ae']}: now holds another autoencoder (hash {cache.ae_hash}) than this "
                                       f"run was started with ({arch['ae_hash']}); start a new run in another --out")
        barrier(self.ctx)
        self.cache = LatentCache.open(latent_cache_path(self.manifest, arch["ae_hash"], size, cache_dir),
                                      arch["ae_hash"], self.manifest)

    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        return self.cache.batch(self.rows[idx])  # (B, C, h, w) latents

    def place(self, x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        if theta is not None:
            x = apply_affine(x, theta)  # the batch's crop and rotation, on the latent grid
        return pack_latents(x, self.model.image_size).to(self.ctx.device, non_blocking=True)


class LatentPretraining(Pretraining):
    """Pretraining whose image tower is the ``latent`` tower and whose inputs come from the latent cache."""

    def __init__(self, data, out: Path, *args, compute_budget: float | None = None):
        super().__init__(data, out, *args, compute_budget=compute_budget)
        tower = self.model.image
        if not hasattr(tower, "latent_input"):
            raise ConfigError("pretraining on latents needs image_tower = latent")
        arch = self.model_cfg.image_arch
        if not self.has_state:  # start from the AE's own encoder (the build already did when it could)
            ae, meta = load_autoencoder(arch["ae"], arch["factor"], arch["channels"])
            if meta["weights_sha256"][:16] != arch["ae_hash"]:
                raise AutoencoderError(f"{arch['ae']}: holds another autoencoder (hash {meta['weights_sha256'][:16]}) "
                                       f"than the config names ({arch['ae_hash']}); give --latents again")
            tower.encoder.load_state_dict(ae.encoder.state_dict())
        tower.latent_input = True

    def make_inputs(self, texts, text_id, unique_texts) -> PairInputs:
        return LatentPairInputs(self.model, self.train_cfg, self.ctx, self.manifest, self.rows, texts, text_id,
                                unique_texts, self.acc)

    def run(self, max_steps: int | None = None) -> Path:
        try:
            return super().run(max_steps=max_steps)
        finally:
            self.model.image.latent_input = False  # the returned model reads pixels, as a loaded run does


def latent_overrides(config: str, overrides: dict, ae: str | Path) -> dict:
    """``overrides`` plus the latent tower's fields for the AE in ``ae``."""
    m, _ = load_config(config, overrides)
    size = overrides.get("model.image_size", overrides.get("image_size"))
    lc = latent_model_config(m, ae, size=size)
    return {**overrides, "model.image_tower": "latent", "model.image_arch": lc.image_arch,
            "model.image_size": lc.image_size, "model.image_mean": lc.image_mean, "model.image_std": lc.image_std}


def pretrain_on_latents(data, out, ae: str | Path, config: str = "tiny-cpu", curate: str = "balanced",
                        budget: float = 0.2, epochs: int | None = None, seed: int = 0, resume: bool = False,
                        text_style: str = "template", overrides: dict | None = None,
                        curator_kwargs: dict | None = None, progress: bool = True, cache_dir=None, *,
                        max_steps: int | None = None, fsdp: bool = False,
                        compute_budget: float | None = None) -> Path:
    """:func:`cxrfm.train.loop.pretrain` on the latents of the AE in ``ae`` (its arguments, same meaning)."""
    from ..data.shards import is_shard_folder
    from .distributed import init_distributed, shutdown

    if not isinstance(data, Manifest) and is_shard_folder(data):
        raise ConfigError(f"{data}: --latents trains from a latent cache of a manifest, not from shards; give the "
                          f"manifest")
    read_ae_meta(ae)
    over = latent_overrides(config, dict(overrides or {}), ae)
    ctx = init_distributed()
    try:
        run = LatentPretraining(data, Path(out), config, curate, budget, epochs, int(seed), bool(resume), text_style,
                                over, dict(curator_kwargs or {}), progress, cache_dir, ctx,
                                compute_budget=compute_budget)
        run.fsdp = bool(fsdp) and ctx.enabled
        return run.run(max_steps=max_steps)
    finally:
        shutdown(ctx)
