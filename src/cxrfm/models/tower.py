"""The image-tower contract and its registry (timm's ``@register_model`` / ``list_models()`` idea).

Every image tower answers one small interface, so segmentation, Grad-CAM and the dual encoder never
reach into a backbone's internals:

* ``forward_features(pixels (B, 1, S, S) in [0, 1]) -> FeatureMaps``: spatial maps ``(B, C_i, h_i, w_i)``,
  shallow -> deep (the stage outputs of a CNN; a ViT's patch tokens reshaped to a grid);
* ``forward_head(features) -> (B, out_dim)``: the pooled vector the projection takes;
* ``forward(pixels) == forward_head(forward_features(pixels))``.

A tower kind is registered with :func:`register_image_tower`, which also names a CPU-test-sized
``image_arch``: tests/test_tower_contract.py builds every :func:`list_image_towers` entry at that size,
so a new tower is tested the moment it is registered. This module imports no tower: the towers import
it (``cxrfm.models`` imports them all, so the registry is full whenever ``cxrfm.models`` is loaded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import ConfigError

TINY_IMAGE_SIZE = 32  # every registered tower's tiny_arch must build and run at this input size


class FeatureMaps(list):
    """What ``forward_features`` returns: a list of spatial maps ``(B, C_i, h_i, w_i)``, shallow -> deep.

    A token tower (ViT, DINOv2) also carries ``prefix``: the last layer's tokens that are not on the
    patch grid ([CLS], registers), ``(B, P, D)``, which its head may pool. ``tokens[i]`` is the
    ``(B, P + h*w, D)`` tensor map ``i`` was cut from (None for a convolutional map, which is itself a
    tensor of the graph): gradients are taken there, since a reshaped copy is not on the path to the output.
    """

    def __init__(self, maps, prefix: torch.Tensor | None = None, tokens: list | None = None):
        super().__init__(maps)
        self.prefix = prefix
        self.tokens = list(tokens) if tokens is not None else [None] * len(self)

    def gradients(self, score: torch.Tensor, only: list[int] | None = None) -> list[torch.Tensor]:
        """d score / d map for every map (or the maps ``only`` names: the others get zeros, and the
        backward pass stops at the shallowest one asked for), in the map's layout; zeros where ``score``
        does not depend on a map. The graph is kept, so one forward serves several scores."""
        keep = range(len(self)) if only is None else sorted(set(int(i) for i in only))
        sources = [self.tokens[i] if self.tokens[i] is not None else self[i] for i in keep]
        got = dict(zip(keep, torch.autograd.grad(score, sources, allow_unused=True, retain_graph=True)))
        grads = [got.get(i) for i in range(len(self))]
        out = []
        for m, t, g in zip(self, self.tokens, grads):
            if g is None:
                out.append(torch.zeros_like(m))
            elif t is None:
                out.append(g)
            else:
                out.append(tokens_to_map(g)[0])
        return out


def tokens_to_map(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P + g*g, D) tokens -> ((B, D, g, g) patch grid, (B, P, D) prefix tokens).

    The grid is the trailing ``g*g`` tokens with ``g = isqrt(T)``: [CLS] and register tokens come first
    in every ViT layout, and there are fewer of them than ``2g + 1``.
    """
    b, t, d = tokens.shape
    g = math.isqrt(t)
    grid = tokens[:, t - g * g:].transpose(1, 2).reshape(b, d, g, g)  # (B, D, g, g)
    return grid, tokens[:, :t - g * g]  # (B, P, D)


class ImageTowerBase(nn.Module):
    """The interface every registered tower implements; ``out_dim`` is the width of ``forward_head``."""

    out_dim: int

    def forward_features(self, pixels: torch.Tensor) -> FeatureMaps:
        raise NotImplementedError

    def forward_head(self, features: FeatureMaps) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixels))  # (B, out_dim)


@dataclass(frozen=True)
class TowerEntry:
    name: str
    build: Callable[[ModelConfig], ImageTowerBase]  # randomly initialised from torch's global RNG
    tiny_arch: dict = field(default_factory=dict)  # an image_arch that builds in well under a second


_REGISTRY: dict[str, TowerEntry] = {}
IMAGE_TOWERS = MappingProxyType(_REGISTRY)  # read-only live view: kind -> TowerEntry


def register_image_tower(name: str, *, tiny_arch: dict):
    """Decorator: ``@register_image_tower("convnext", tiny_arch={...})`` on ``build(cfg) -> tower``."""
    def register(build: Callable[[ModelConfig], ImageTowerBase]):
        if name in _REGISTRY:
            raise ValueError(f"image tower {name!r} is registered twice")
        _REGISTRY[name] = TowerEntry(name, build, dict(tiny_arch))
        return build

    return register


def list_image_towers() -> list[str]:
    """The registered tower kinds (``ModelConfig.image_tower`` also takes a local checkpoint folder)."""
    return list(_REGISTRY)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def image_tower_entry(name: str) -> TowerEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"image_tower {name!r}: not a registered tower; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
