"""A 2-D convolutional autoencoder for compact CXR latents (MedVAE's idea, trained here, plain torch).

MedVAE (Varma et al. 2025) compresses medical images 4x or 8x per side into 1-4 latent channels and
trains downstream models on the latents. ``medvae`` downloads its weights at run time, so cxrfm trains
its own (:mod:`cxrfm.train.compress`). The network is a small VQGAN/LDM-style encoder-decoder: a
2x2 space-to-depth step and a 3x3 stem, per further halving one residual block (GroupNorm, SiLU, two 3x3 convs) and a stride-2 conv, a 1x1
conv to ``channels`` latents; the decoder mirrors it with nearest-neighbour upsampling. It is
deterministic (no KL term): latents are normalised per channel with statistics measured after training
(``latent_mean`` / ``latent_std`` buffers), so every latent channel has roughly unit variance, which the
latent cache's fixed 8-bit range (:mod:`cxrfm.data.latent_cache`) relies on.

Also here: :func:`ms_ssim` (Wang et al. 2003, written out so no loss downloads weights), :func:`psnr`,
the PatchGAN discriminator of the optional adversarial term, and the AE folder (the only code that
knows its file names): ``autoencoder.json`` (config, weights sha256, training record) and
``autoencoder.safetensors``; ``state/`` holds the resumable checkpoint of ``cxrfm compress train``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CxrfmError

AE_FORMAT = 2  # 2: a 2x2 space-to-depth stem and depth-to-space head
META_FILE, WEIGHTS_FILE, STATE_DIR = "autoencoder.json", "autoencoder.safetensors", "state"
FACTORS = (2, 4, 8, 16)
MIN_LATENT_SIDE = 4  # the smallest latent grid a tower (and the MS-SSIM of a reconstruction) can use


class AutoencoderError(CxrfmError):
    """An AE folder is missing, incomplete or damaged, or an AE does not fit the request."""


@dataclass(frozen=True)
class AEConfig:
    factor: int = 8  # downsampling per side (a power of two)
    channels: int = 4  # latent channels
    width: int = 32  # channels of the first stage (doubled per halving, at most 4x)
    image_size: int = 128  # the pixel side it was trained at (any multiple of ``factor`` works)
    pixel_mean: float = 0.5  # input normalisation (x - mean) / std; a latent run's image_mean / image_std
    pixel_std: float = 0.25

    def __post_init__(self):
        if self.factor not in FACTORS:
            raise AutoencoderError(f"factor {self.factor}: choose one of {', '.join(map(str, FACTORS))}")
        if not 1 <= self.channels <= 16 or self.width < 1 or not self.pixel_std > 0:
            raise AutoencoderError(f"channels {self.channels} must be in 1..16, width {self.width} >= 1 and "
                                   f"pixel_std {self.pixel_std} > 0")
        check_side(self.image_size, self.factor)

    @property
    def widths(self) -> list[int]:
        """Channels per level after the 2x2 space-to-depth stem (the first level is already at 1/2)."""
        levels = int(math.log2(self.factor)) - 1
        return [self.width * min(2 ** i, 4) for i in range(levels + 1)]


def check_side(side: int, factor: int, what: str = "image side") -> int:
    """The latent side of a ``side`` px image; an AutoencoderError when the factor does not allow it."""
    side, factor = int(side), int(factor)
    if side % factor or side // factor < MIN_LATENT_SIDE:
        need = factor * MIN_LATENT_SIDE
        raise AutoencoderError(f"{what} {side} px: too small or not a multiple of the factor {factor} (it needs a "
                               f"multiple of {factor} of at least {need} px, giving a latent grid of at least "
                               f"{MIN_LATENT_SIDE}x{MIN_LATENT_SIDE}); use e.g. --size {max(need, 16 * factor)}")
    return side // factor


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if ch % 8 == 0 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class LatentEncoder(nn.Module):
    """(B, 1, S, S) pixels in [0, 1] -> (B, channels, S/f, S/f) latents, normalised per channel."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.config = cfg
        w = cfg.widths
        # 2x2 space-to-depth first: no convolution runs at full resolution (4x cheaper on a CPU)
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(4, w[0], 3, padding=1)]
        for a, b in zip(w[:-1], w[1:]):
            layers += [ResBlock(a, b), nn.Conv2d(b, b, 3, stride=2, padding=1)]
        layers += [ResBlock(w[-1], w[-1]), _norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.channels, 1)]
        self.net = nn.Sequential(*layers)
        self.register_buffer("latent_mean", torch.zeros(cfg.channels))
        self.register_buffer("latent_std", torch.ones(cfg.channels))

    def raw(self, pixels: torch.Tensor) -> torch.Tensor:
        check_side(pixels.shape[-1], self.config.factor)
        check_side(pixels.shape[-2], self.config.factor, "image height")
        return self.net((pixels - self.config.pixel_mean) / self.config.pixel_std)  # (B, C, h, w), not standardised

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw(pixels))


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        w = cfg.widths[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, w[0], 3, padding=1), ResBlock(w[0], w[0])]
        for a, b in zip(w[:-1], w[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, a, 3, padding=1), ResBlock(a, b)]
        layers += [_norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 4, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) * 0.25 + 0.5  # (B, 1, S, S), about [0, 1]


class Autoencoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = LatentEncoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        return self.decoder(z * e.latent_std.view(1, -1, 1, 1) + e.latent_mean.view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder.raw(pixels))

    @torch.no_grad()
    def set_latent_stats(self, pixels: torch.Tensor) -> None:
        """Measure the per-channel mean / std of the raw latents of ``pixels`` (B, 1, S, S)."""
        z = self.encoder.raw(pixels).transpose(0, 1).flatten(1)  # (C, B*h*w)
        self.encoder.latent_mean.copy_(z.mean(1))
        self.encoder.latent_std.copy_(z.std(1).clamp(min=1e-4))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017), three convs: (B, 1, S, S) -> (B, 1, S/4, S/4) real/fake logits."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), _norm(2 * width), nn.LeakyReLU(0.2),
                                 nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)


# ------------------------------------------------------------------ reconstruction measures
_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure term (B,), Gaussian window (sigma 1.5), valid convolution."""
    coords = torch.arange(win, dtype=x.dtype, device=x.device) - (win - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    c1, c2 = 0.01 ** 2, 0.03 ** 2  # data range 1
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Multi-scale SSIM (B,) of (B, 1, H, W) images in [0, 1]; differentiable.

    As many of the five scales as the side allows (each scale must still hold one window; small test
    images use fewer scales, with the standard weights renormalised), so the value is comparable between
    settings of one image size, not between image sizes.
    """
    side = min(x.shape[-2:])
    win = min(window, side if side % 2 else side - 1)
    levels = max(1, min(len(_MS_WEIGHTS), int(math.log2(side / win)) + 1))
    w = torch.tensor(_MS_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    out = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(levels):
        ssim, cs = _ssim_parts(x, y, win)
        if i < levels - 1:
            out = out * cs.clamp(min=1e-6) ** w[i]
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        else:
            out = out * ssim.clamp(min=1e-6) ** w[i]
    return out


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (B,) in dB of images in [0, 1] (``x`` is clamped to [0, 1] first)."""
    mse = (x.clamp(0, 1) - y).square().flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


# ------------------------------------------------------------------ the AE folder
def ae_hash(folder: str | Path) -> str:
    """The identity of a saved AE: the first 16 hex digits of its weights' sha256 (from its json)."""
    return read_ae_meta(folder)["weights_sha256"][:16]


def save_autoencoder(ae: Autoencoder, folder: str | Path, training: dict) -> Path:
    """Write ``autoencoder.safetensors`` then ``autoencoder.json`` (the commit point) into ``folder``."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path
    from ..run import sha256_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    meta = {"format": AE_FORMAT, "config": asdict(ae.config), "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
            "training": training}
    with atomic_path(folder / META_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return folder


def read_ae_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    fix = f"train it with `cxrfm compress train --data MANIFEST --out {folder}` (or give the --out folder of one)"
    if not folder.is_dir():
        raise AutoencoderError(f"{folder}: no such autoencoder folder; {fix}")
    path = folder / META_FILE
    if not path.is_file():
        raise AutoencoderError(f"{folder}: no {META_FILE}, so it is not a finished autoencoder folder (training "
                               f"stopped before the end? resume it with `cxrfm compress train ... --resume --out "
                               f"{folder}`); or {fix}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        AEConfig(**meta["config"])
        str(meta["weights_sha256"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise AutoencoderError(f"{path}: damaged ({type(e).__name__}: {e}); delete the folder and {fix}") from None
    if meta.get("format") != AE_FORMAT:
        raise AutoencoderError(f"{path}: written by another cxrfm version (format {meta.get('format')}, this one reads "
                               f"{AE_FORMAT}); {fix}")
    return meta


def load_autoencoder(folder: str | Path, factor: int | None = None,
                     channels: int | None = None) -> tuple[Autoencoder, dict]:
    """The saved AE of ``folder`` (eval mode) and its json; checks the weights against their sha256.

    ``factor`` / ``channels``, when given, are the setting the caller expects: an AE trained for another
    one is an :class:`AutoencoderError` naming the setting it was trained for.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..run import sha256_file

    folder = Path(folder)
    meta = read_ae_meta(folder)
    cfg = AEConfig(**meta["config"])
    for name, want in (("factor", factor), ("channels", channels)):
        if want is not None and int(want) != getattr(cfg, name):
            raise AutoencoderError(f"{folder}: trained for factor {cfg.factor} with {cfg.channels} latent channel(s), "
                                   f"not {name} {want}; train one for that setting (`cxrfm compress train --factor "
                                   f"{factor or cfg.factor} --channels {channels or cfg.channels} ...`) or drop "
                                   f"--{name}")
    weights = folder / WEIGHTS_FILE
    fix = f"the folder is damaged; delete it and train again (`cxrfm compress train ... --out {folder}`)"
    if not weights.is_file():
        raise AutoencoderError(f"{weights}: missing; {fix}")
    if sha256_file(weights) != meta["weights_sha256"]:
        raise AutoencoderError(f"{weights}: its sha256 differs from the one in {META_FILE} (the file was replaced or "
                               f"damaged); {fix}")
    try:
        state = load_file(str(weights))
        ae = Autoencoder(cfg)
        ae.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise AutoencoderError(f"{weights}: does not hold this autoencoder ({str(e)[:200]}); {fix}") from None
    return ae.eval(), meta
