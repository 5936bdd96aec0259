"""The two anatomy networks: a supervised U-Net and an in-context segmenter.

* :class:`UNet` (Ronneberger et al., MICCAI 2015), small: one output channel per structure (sigmoid,
  multi-label: the heart overlaps the lungs' silhouettes), trained end to end on image-mask pairs.
* :class:`InContextSegmenter`: segments whatever structure its k support pairs show, with no
  fine-tuning, in the spirit of UniverSeg (Butoi et al., ICCV 2023) and MASS's in-context pretext task.
  Supports are encoded once and cached (:meth:`InContextSegmenter.encode_support`), so a query costs
  one encoder pass, two small attention maps and the decoder. The query's features attend to the
  supports' features at 1/8 and 1/4 resolution and carry the supports' mask values back (a soft label
  propagation); the mean support mask (an atlas) and foreground/background prototype similarities join
  at every decoder level. Two coordinate channels are appended to the image, so matching prefers
  corresponding places on roughly aligned chest films.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with BatchNorm and ReLU (the first may stride)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def coord_channels(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) with two channels appended: the row and column position in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, ys, xs], dim=1)


class Encoder(nn.Module):
    """Conv stages at strides s, 2s, 4s, ... (s = ``stem_stride``); returns every stage's map, shallow -> deep."""

    def __init__(self, cin: int, widths: Sequence[int], stem_stride: int = 1):
        super().__init__()
        self.stages = nn.ModuleList()
        prev = cin
        for i, w in enumerate(widths):
            self.stages.append(_block(prev, w, stride=stem_stride if i == 0 else 1))
            prev = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            maps.append(x)
        return maps


class Decoder(nn.Module):
    """U-Net decoder: upsample, concatenate the skip (and any extra maps at that level), convolve."""

    def __init__(self, widths: Sequence[int], extra: Sequence[int], cout: int):
        super().__init__()
        self.ups = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            self.ups.append(_block(widths[i] + widths[i - 1] + extra[i - 1], widths[i - 1]))
        self.deep = _block(widths[-1] + extra[-1], widths[-1]) if extra[-1] else nn.Identity()
        self.head = nn.Conv2d(widths[0], cout, 1)

    def forward(self, maps: Sequence[torch.Tensor], extras: Sequence[torch.Tensor | None]) -> torch.Tensor:
        x = maps[-1] if extras[-1] is None else self.deep(torch.cat([maps[-1], extras[-1]], 1))
        for j, up in enumerate(self.ups):
            i = len(maps) - 2 - j
            x = F.interpolate(x, size=maps[i].shape[-2:], mode="bilinear", align_corners=False)
            parts = [x, maps[i]] + ([] if extras[i] is None else [extras[i]])
            x = up(torch.cat(parts, 1))
        return self.head(x)


@dataclass(frozen=True)
class UNetConfig:
    structures: tuple[str, ...] = ("left_lung", "right_lung", "heart")
    widths: tuple[int, ...] = (16, 32, 64, 128, 192)
    size: int = 128  # the network's input side (images are letterboxed to it)
    stem_stride: int = 1  # 2: the first stage works at half resolution, logits are upsampled back


class UNet(nn.Module):
    """A small U-Net, one sigmoid output per structure."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(3, config.widths, config.stem_stride)
        self.decoder = Decoder(config.widths, [0] * len(config.widths), len(config.structures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) in [0, 1] -> logits (B, n_structures, S, S)."""
        maps = self.encoder(coord_channels(x * 2 - 1))
        out = self.decoder(maps, [None] * len(maps))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


@dataclass(frozen=True)
class InContextConfig:
    widths: tuple[int, ...] = (16, 32, 64, 96)
    size: int = 128
    stem_stride: int = 2  # the first stage works at half resolution; logits are upsampled back
    attend_levels: tuple[int, ...] = (1, 2)  # encoder levels (strides 4 and 8 with stem 2) where the query attends
    temperature: float = 0.1


class SupportCache:
    """What the segmenter keeps of k support pairs: their features and masks at every level."""

    def __init__(self, feats: list[torch.Tensor], masks: list[torch.Tensor]):
        self.feats = feats  # per level (K, C, h, w), L2-normalised over C
        self.masks = masks  # per level (K, 1, h, w) in [0, 1]

    def __len__(self) -> int:
        return int(self.masks[0].shape[0])


class InContextSegmenter(nn.Module):
    """Segments a query like its supports: ``forward(query, support_images, support_masks)``."""

    N_EXTRA = 4  # channels joined at a level: atlas, fg cosine, bg cosine, attention prior

    def __init__(self, config: InContextConfig = InContextConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(3, config.widths, config.stem_stride)
        self.decoder = Decoder(config.widths, [self.N_EXTRA] * len(config.widths), 1)
        self.key = nn.ModuleList([nn.Conv2d(w, w, 1) for w in config.widths])

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(coord_channels(x * 2 - 1))

    def encode_support(self, images: torch.Tensor, masks: torch.Tensor) -> SupportCache:
        """``images``, ``masks`` (K, 1, S, S): encode once, reuse for every query."""
        maps = self._features(images)
        feats, ms = [], []
        for lvl, m in enumerate(maps):
            feats.append(F.normalize(self.key[lvl](m), dim=1))
            ms.append(F.adaptive_avg_pool2d(masks.float(), m.shape[-2:]))
        return SupportCache(feats, ms)

    def _fuse(self, q: torch.Tensor, lvl: int, cache: SupportCache) -> torch.Tensor:
        """(1, C, h, w) query map -> (1, 4, h, w): atlas, fg/bg prototype cosines, attention prior."""
        s, m = cache.feats[lvl], cache.masks[lvl]  # (K, C, h, w), (K, 1, h, w)
        qk = F.normalize(self.key[lvl](q), dim=1)
        atlas = m.mean(0, keepdim=True)
        fg = (s * m).sum((0, 2, 3)) / m.sum().clamp_min(1e-3)
        bg = (s * (1 - m)).sum((0, 2, 3)) / (1 - m).sum().clamp_min(1e-3)
        cos_fg = (qk * F.normalize(fg, dim=0).view(1, -1, 1, 1)).sum(1, keepdim=True)
        cos_bg = (qk * F.normalize(bg, dim=0).view(1, -1, 1, 1)).sum(1, keepdim=True)
        if lvl in self.config.attend_levels:
            c, h, w = qk.shape[1:]
            logits = qk.view(c, h * w).T @ s.permute(1, 0, 2, 3).reshape(c, -1)  # (hw, K*hw)
            attn = torch.softmax(logits / self.config.temperature, dim=1)
            prior = (attn @ m.reshape(-1, 1)).view(1, 1, h, w)
        else:
            prior = atlas
        return torch.cat([atlas, cos_fg, cos_bg, prior], 1)

    def segment_cached(self, query: torch.Tensor, cache: SupportCache) -> torch.Tensor:
        """``query`` (B, 1, S, S) -> logits (B, 1, S, S) against one support set."""
        maps = self._features(query)
        out = []
        for b in range(query.shape[0]):
            qb = [m[b:b + 1] for m in maps]
            extras = [self._fuse(qb[lvl], lvl, cache) for lvl in range(len(qb))]
            out.append(self.decoder(qb, extras))
        return self._full(torch.cat(out), query)

    @staticmethod
    def _full(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] == like.shape[-2:]:
            return logits
        return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """Episodes: ``query`` (B, 1, S, S), supports (B, K, 1, S, S) -> logits (B, 1, S, S)."""
        b, k = support_images.shape[:2]
        maps_s = self._features(support_images.flatten(0, 1))
        maps_q = self._features(query)
        out = []
        for i in range(b):
            feats, ms = [], []
            for lvl, m in enumerate(maps_s):
                mi = m[i * k:(i + 1) * k]
                feats.append(F.normalize(self.key[lvl](mi), dim=1))
                ms.append(F.adaptive_avg_pool2d(support_masks[i].float(), mi.shape[-2:]))
            cache = SupportCache(feats, ms)
            qb = [m[i:i + 1] for m in maps_q]
            out.append(self.decoder(qb, [self._fuse(qb[lvl], lvl, cache) for lvl in range(len(qb))]))
        return self._full(torch.cat(out), query)
