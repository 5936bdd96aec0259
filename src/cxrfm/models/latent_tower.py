"""The latent image tower: a frozen autoencoder encoder, then a small ConvNeXt on its latents.

Registered as ``latent`` (``ModelConfig.image_tower = "latent"``), so a latent run is an ordinary run:
``cxrfm eval --model RUN`` feeds it pixels like any tower, and the tower turns them into latents itself
with the frozen encoder it owns (its weights are in the run's ``model.safetensors``). ``image_arch``
says which autoencoder: ``factor``, ``channels``, ``ae_width`` (its architecture) and, from
``cxrfm pretrain --latents AE``, ``ae`` (the folder) and ``ae_hash``; the other keys go to the
ConvNeXt config (``depths``, ``hidden_sizes``, ``patch_size``; default ``patch_size`` makes the first
stage's grid at most 16x16).

Pretraining on latents never runs the encoder: with ``latent_input`` set, ``forward_features`` takes
cached latents packed into a (B, 1, S, S) tensor (:func:`pack_latents`: the C*h*w latent values, then
zeros), which passes through :class:`~cxrfm.models.dual.DualEncoder` unchanged (it is already S x S).

:func:`encode_manifest` writes a manifest's latent cache (:mod:`cxrfm.data.latent_cache`).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..config import ModelConfig
from ..data.latent_cache import LatentCache, LatentCacheError, LatentCacheWriter, latent_cache_path
from ..data.schema import Manifest
from ..errors import ConfigError
from .autoencoder import AEConfig, AutoencoderError, LatentEncoder, check_side, load_autoencoder, read_ae_meta
from .tower import FeatureMaps, ImageTowerBase, register_image_tower

AE_KEYS = ("factor", "channels", "ae_width", "ae", "ae_hash")
DEFAULT_ARCH = {"factor": 8, "channels": 4, "ae_width": 32, "depths": [1, 1, 2, 1], "hidden_sizes": [32, 64, 128, 256]}
TINY_ARCH = {"factor": 4, "channels": 2, "ae_width": 8, "depths": [1, 1], "hidden_sizes": [8, 16]}


def pack_latents(z: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, 1, size, size): the C*h*w values first, zeros after."""
    b, n = z.shape[0], z[0].numel()
    if n > size * size:
        raise ConfigError(f"latents of {tuple(z.shape[1:])} do not fit a {size}x{size} input")
    flat = z.new_zeros(b, size * size)
    flat[:, :n] = z.reshape(b, n)
    return flat.view(b, 1, size, size)


def unpack_latents(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    n = shape[0] * shape[1] * shape[2]
    return x.reshape(x.shape[0], -1)[:, :n].reshape(x.shape[0], *shape)


class LatentBackbone(nn.Module):
    """The frozen AE encoder then a ConvNeXt: normalised pixels (or ready latents) -> ConvNeXt outputs."""

    def __init__(self, encoder: LatentEncoder, convnext: nn.Module):
        super().__init__()
        self.encoder, self.convnext = encoder, convnext

    def forward(self, pixel_values: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                output_hidden_states: bool = True):
        z = latents if latents is not None else self.encoder.standardise(self.encoder.net(pixel_values))
        return self.convnext(pixel_values=z, output_hidden_states=output_hidden_states)


class LatentTower(ImageTowerBase):
    """Pixels (or packed latents) -> frozen AE encoder -> ConvNeXt stages -> pooled (B, out_dim).

    Pixels are normalised with the config's ``image_mean`` / ``image_std`` (a latent run's config holds the
    autoencoder's own, :func:`latent_model_config`) before the backbone, as in every tower.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        import transformers as tf

        arch = {**DEFAULT_ARCH, **cfg.image_arch}
        try:
            self.ae_config = AEConfig(factor=int(arch["factor"]), channels=int(arch["channels"]),
                                      width=int(arch["ae_width"]), image_size=int(cfg.image_size),
                                      pixel_mean=float(cfg.image_mean), pixel_std=float(cfg.image_std))
        except AutoencoderError as e:
            raise ConfigError(f"image_tower latent: {e}") from None
        side = cfg.image_size // self.ae_config.factor
        self.latent_shape = (self.ae_config.channels, side, side)
        encoder = LatentEncoder(self.ae_config)
        encoder.requires_grad_(False)
        bb = {k: v for k, v in arch.items() if k not in AE_KEYS}
        bb.setdefault("patch_size", max(1, side // 16))
        bb.setdefault("num_stages", len(bb.get("depths", [])))
        need = int(bb["patch_size"]) * 2 ** (int(bb["num_stages"]) - 1)
        if side < need:
            raise ConfigError(f"image_tower latent: a {side}x{side} latent grid ({cfg.image_size} px / factor "
                              f"{self.ae_config.factor}) is too small for {bb['num_stages']} ConvNeXt stages (they "
                              f"need {need}); use a larger image_size (e.g. {need * self.ae_config.factor}) or fewer "
                              f"stages (image_arch depths / hidden_sizes)")
        try:
            hf = tf.ConvNextConfig(num_channels=self.ae_config.channels, **bb)
            convnext = tf.ConvNextModel(hf)
        except Exception as e:  # transformers validates with its own error types
            raise ConfigError(f"image_arch {cfg.image_arch}: not valid for the latent tower's ConvNextConfig "
                              f"({e})") from None
        self.backbone = LatentBackbone(encoder, convnext)
        self.register_buffer("mean", torch.tensor(float(cfg.image_mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(cfg.image_std)), persistent=False)
        self.out_dim = int(hf.hidden_sizes[-1])
        self.latent_input = False  # set by latent pretraining: inputs are pack_latents() of cached latents
        ae = arch.get("ae")
        if ae and Path(ae).is_dir():
            self._load_encoder_if_same(Path(ae), arch.get("ae_hash"))

    @property
    def encoder(self) -> LatentEncoder:
        return self.backbone.encoder

    def _load_encoder_if_same(self, folder: Path, want_hash: str | None) -> None:
        """Start from the AE folder's encoder when it is the one recorded (a saved run's own weights, loaded
        after building, replace it anyway; a from-scratch baseline keeps it)."""
        try:
            if want_hash and read_ae_meta(folder)["weights_sha256"][:16] != want_hash:
                print(f"latent tower: {folder} now holds another autoencoder than hash {want_hash}; its encoder is "
                      f"not used", file=sys.stderr)
                return
            ae, _ = load_autoencoder(folder, self.ae_config.factor, self.ae_config.channels)
        except AutoencoderError as e:
            print(f"latent tower: {e}", file=sys.stderr)
            return
        if ae.config.width == self.ae_config.width:
            self.encoder.load_state_dict(ae.encoder.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen
        return self

    def _check(self, pixels: torch.Tensor) -> None:
        try:
            check_side(pixels.shape[-1], self.ae_config.factor)
            check_side(pixels.shape[-2], self.ae_config.factor, "image height")
        except AutoencoderError as e:
            raise ConfigError(f"latent tower: {e}") from None

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) pixels in [0, 1] -> (B, C, S/f, S/f) standardised latents (the cached values)."""
        self._check(pixels)
        return self.encoder.standardise(self.encoder.net((pixels - self.mean) / self.std))

    # ------------------------------------------------------------ the tower contract
    def forward_features(self, pixels: torch.Tensor) -> FeatureMaps:
        if self.latent_input:
            out = self.backbone(latents=unpack_latents(pixels, self.latent_shape))
        else:
            self._check(pixels)
            out = self.backbone(pixel_values=(pixels - self.mean) / self.std)
        h = out.last_hidden_state
        maps = [s for s in (out.hidden_states or ())[1:] if s is not None and s.dim() == 4]
        if not maps or maps[-1] is not h:
            maps.append(h)
        return FeatureMaps(maps[-4:])

    def forward_head(self, features: FeatureMaps) -> torch.Tensor:
        return self.backbone.convnext.layernorm(features[-1].mean(dim=(-2, -1)))  # ConvNeXt's pooler_output


@register_image_tower("latent", tiny_arch=TINY_ARCH)
def build_latent_tower(cfg: ModelConfig) -> LatentTower:
    return LatentTower(cfg)


def latent_model_config(cfg: ModelConfig, ae_folder: str | Path, size: int | None = None) -> ModelConfig:
    """``cfg`` turned into a latent run's config for the AE in ``ae_folder``.

    The ConvNeXt keys of ``cfg.image_arch`` are kept when ``cfg`` is a ConvNeXt or latent config (the AE's
    keys always come from its folder); the side is ``size``, else the AE's training size.
    """
    folder = Path(ae_folder).resolve()
    meta = read_ae_meta(folder)
    ae = AEConfig(**meta["config"])
    keep = cfg.image_tower in ("latent", "convnext") and cfg.image_hf_config is None
    arch = {k: v for k, v in cfg.image_arch.items() if k not in AE_KEYS} if keep else {}
    arch.update(factor=ae.factor, channels=ae.channels, ae_width=ae.width, ae=str(folder),
                ae_hash=meta["weights_sha256"][:16])
    size = int(size or ae.image_size)
    try:
        check_side(size, ae.factor, "image_size")
    except AutoencoderError as e:
        raise ConfigError(f"{folder}: {e}") from None
    return dataclasses.replace(cfg, image_tower="latent", image_arch=arch, image_size=size,
                               image_mean=ae.pixel_mean, image_std=ae.pixel_std)


# ------------------------------------------------------------------ writing a latent cache
def encode_manifest(ae_folder: str | Path, manifest: Manifest, size: int | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = False,
                    factor: int | None = None, channels: int | None = None, device: str | None = None) -> LatentCache:
    """The latent cache of ``manifest`` under the AE in ``ae_folder`` (written unless a fresh one exists).

    Pixels come from the decoded-image cache at ``size`` (default: the AE's training size); ``factor`` /
    ``channels`` are the setting the caller expects (another one is an error).
    """
    from tqdm.auto import tqdm

    from ..data.cache import ImageCache

    folder = Path(ae_folder).resolve()
    ae, meta = load_autoencoder(folder, factor, channels)
    size = int(size or ae.config.image_size)
    check_side(size, ae.config.factor, "--size")
    h = meta["weights_sha256"][:16]
    path = latent_cache_path(manifest, h, size, cache_dir)
    try:
        return LatentCache.open(path, h, manifest)
    except LatentCacheError:
        pass  # missing or stale: (re)write it
    pixels = ImageCache.build(manifest, size=size, cache_dir=cache_dir, progress=progress)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ae = ae.to(device)
    writer = LatentCacheWriter(path, manifest, h, str(folder), size, ae.config.factor, ae.config.channels)
    try:
        with torch.no_grad(), tqdm(total=len(manifest), desc="encode latents", unit="img", disable=not progress) as bar:
            for start in range(0, len(manifest), batch_size):
                idx = np.arange(start, min(start + batch_size, len(manifest)))
                writer.write(start, ae.encode(pixels.batch(idx).to(device)).cpu())
                bar.update(len(idx))
    except BaseException:
        writer.abort()
        raise
    return writer.close()
