"""Image towers: transformers backbones (ConvNeXt, ResNet, ViT, DINOv2) behind the tower contract.

Every tower answers :class:`~cxrfm.models.tower.ImageTowerBase`'s interface (``forward_features`` ->
spatial maps, ``forward_head`` -> pooled ``(B, out_dim)``), so the dual encoder, segmentation and
Grad-CAM treat them alike; each kind is registered with ``@register_image_tower`` and tested by the one
contract test. Backbones come from ``transformers`` configs (no torchvision/timm): ConvNeXt (Liu et al.
2022), ResNet (He et al. 2016), ViT (Dosovitskiy et al. 2021), DINOv2 (Oquab et al. 2024). From-scratch
towers take one grayscale channel; checkpoints that expect RGB get the channel repeated.

Normalisation (``image_mean`` / ``image_std``) is applied here, from the model's config: callers
pass raw [0, 1] pixels.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import ConfigError
from .hf import quiet_transformers, seeded_init
from .tower import (FeatureMaps, ImageTowerBase, image_tower_entry, is_registered, list_image_towers,
                    register_image_tower, tokens_to_map)

# Default architecture of each from-scratch kind; ModelConfig.image_arch is merged over these.
# convnext/resnet are CPU-sized (~1M params, ~0.3M params); vit/dinov2 are the "B" sizes used on GPU.
DEFAULT_ARCH: dict[str, dict] = {
    "convnext": {"depths": [1, 1, 2, 1], "hidden_sizes": [32, 64, 128, 256]},
    "resnet": {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1],
               "layer_type": "basic"},
    "vit": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "patch_size": 16},
    "dinov2": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14},
}
# Test-sized architectures (the contract test builds each at 32 px in well under a second).
TINY_ARCH: dict[str, dict] = {
    "convnext": {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]},
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "layer_type": "basic"},
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 8},
    "dinov2": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "mlp_ratio": 2},
}


def _hf_config(kind: str, cfg: ModelConfig):
    import transformers as tf

    arch = {**DEFAULT_ARCH[kind], **cfg.image_arch, "num_channels": 1}
    if kind in ("vit", "dinov2"):
        arch.setdefault("image_size", cfg.image_size)
        # No dropout: keeps a resumed run bit-for-bit on the same path (dropout draws from global RNG).
        arch.setdefault("hidden_dropout_prob", 0.0)
        arch.setdefault("attention_probs_dropout_prob", 0.0)
    cls = {"convnext": tf.ConvNextConfig, "resnet": tf.ResNetConfig, "vit": tf.ViTConfig,
           "dinov2": tf.Dinov2Config}[kind]
    try:
        return cls(**arch)
    except Exception as e:  # transformers validates fields with its own error types
        raise ConfigError(f"image_arch {cfg.image_arch}: not valid for {cls.__name__} ({e}); "
                          f"see the transformers docs of {cls.__name__}") from None


def _backbone_from_config(hf) -> nn.Module:
    import transformers as tf

    # ViTModel's default pooler is an untrained tanh head; we pool the [CLS] token ourselves.
    return tf.ViTModel(hf, add_pooling_layer=False) if hf.model_type == "vit" else tf.AutoModel.from_config(hf)


def _register_scratch(kind: str) -> None:
    @register_image_tower(kind, tiny_arch=TINY_ARCH[kind])
    def build(cfg: ModelConfig) -> ImageTower:
        return ImageTower(_backbone_from_config(_hf_config(kind, cfg)), cfg)


for _kind in DEFAULT_ARCH:
    _register_scratch(_kind)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ImageTower(ImageTowerBase):
    """A transformers vision backbone behind the tower contract; ``forward`` -> pooled (B, out_dim)."""

    def __init__(self, backbone: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.backbone = backbone
        hf = backbone.config
        mask_token = getattr(getattr(backbone, "embeddings", None), "mask_token", None)
        if isinstance(mask_token, nn.Parameter):
            # Only used for masked-image modelling, never here: a parameter without a gradient would
            # make DDP wait for it forever.
            mask_token.requires_grad_(False)
        self.in_channels = int(getattr(hf, "num_channels", 1))
        self.model_type = getattr(hf, "model_type", "")
        # A ViT checkpoint trained at another size needs its position embeddings interpolated.
        self._interpolate = self.model_type == "vit" and getattr(hf, "image_size", cfg.image_size) != cfg.image_size
        self.register_buffer("mean", torch.tensor(float(cfg.image_mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(cfg.image_std)), persistent=False)
        self.out_dim = self._infer_out_dim(cfg.image_size)

    def _infer_out_dim(self, size: int) -> int:
        hf = self.backbone.config
        if getattr(hf, "hidden_sizes", None):
            return int(hf.hidden_sizes[-1])
        if getattr(hf, "hidden_size", None):
            return int(hf.hidden_size)
        with torch.no_grad():  # unknown layout: ask the backbone
            return int(self.forward(torch.zeros(1, 1, size, size)).shape[1])

    # ------------------------------------------------------------ the tower contract
    def forward_features(self, pixels: torch.Tensor) -> FeatureMaps:
        """(B, 1, S, S) in [0, 1] -> the backbone's spatial maps, shallow -> deep.

        CNNs (ConvNeXt, ResNet): the stage outputs (the stem output is dropped: it repeats stage 1's
        size), at most the last four. Token towers (ViT, DINOv2): the patch tokens of the last layer
        (layer-normed) as a grid, preceded by the grid of the last block's input: a [CLS]-pooled head
        depends on the patches only through that last block, so Grad-CAM needs the map before it.
        """
        x = (pixels - self.mean) / self.std  # (B, 1, S, S)
        if self.in_channels != 1:
            x = x.expand(-1, self.in_channels, -1, -1)  # (B, 3, S, S) for RGB checkpoints
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.backbone(pixel_values=x, output_hidden_states=True, **kwargs)
        h = out.last_hidden_state
        hidden = [s for s in (out.hidden_states or ()) if s is not None]
        if h.dim() == 4:  # (B, C, h, w)
            maps = [s for s in hidden[1:] if s.dim() == 4]
            if not maps or maps[-1] is not h:  # the head must read the very tensor the backbone ends on
                maps.append(h)
            return FeatureMaps(maps[-4:])
        grid, prefix = tokens_to_map(h)  # (B, D, g, g), (B, P, D)
        if len(hidden) >= 2 and hidden[-2].shape == h.shape:
            return FeatureMaps([tokens_to_map(hidden[-2])[0], grid], prefix=prefix, tokens=[hidden[-2], h])
        return FeatureMaps([grid], prefix=prefix, tokens=[h])

    def forward_head(self, features: FeatureMaps) -> torch.Tensor:
        """The pooled vector (B, out_dim), computed exactly as the backbone's own pooler does."""
        last = features[-1]  # (B, C, h, w)
        prefix = getattr(features, "prefix", None)
        if prefix is not None:  # a token tower: its [CLS] token (ViT, DINOv2), else the mean patch token
            return prefix[:, 0] if prefix.shape[1] else last.mean(dim=(2, 3))
        if self.model_type in ("convnext", "convnextv2"):
            return self.backbone.layernorm(last.mean(dim=(-2, -1)))  # ConvNeXt's pooler_output
        pooler = getattr(self.backbone, "pooler", None)
        if isinstance(pooler, nn.Module):
            return pooler(last).flatten(1)  # ResNet: AdaptiveAvgPool2d -> (B, C)
        return last.mean(dim=(2, 3))  # (B, C) global average pool


def _load_checkpoint_backbone(ref: str) -> nn.Module:
    import transformers as tf

    p = Path(ref).expanduser()
    fix = (f"give a folder holding a transformers config.json + weights (model.save_pretrained(DIR)), "
           f"or one of the kinds {', '.join(list_image_towers())}")
    if p.exists():
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise ConfigError(f"image_tower {ref!r}: not a model folder (no config.json); {fix}")
        try:
            return tf.AutoModel.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"image_tower {ref!r}: cannot be loaded ({e}); {fix}") from None
    if not _HUB_ID.match(ref):
        raise ConfigError(f"image_tower {ref!r}: no such folder; {fix}")
    try:  # a hub id: loads from the local Hugging Face cache (downloads only when online mode is allowed)
        return tf.AutoModel.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise ConfigError(f"image_tower {ref!r}: not a local folder and not in the Hugging Face cache ({e}); "
                          f"download it once (huggingface-cli download {ref}) or {fix}") from None


def build_image_tower(cfg: ModelConfig) -> tuple[ImageTowerBase, ModelConfig]:
    """The tower of ``cfg`` and the config to save with it (checkpoint towers record their HF config).

    Registered kinds draw their weights from torch's global RNG: seed around this call (``seeded_init``).
    """
    import transformers as tf

    if cfg.image_hf_config is not None:  # rebuilding a saved run: architecture only, weights come after
        d = dict(cfg.image_hf_config)
        hf = tf.AutoConfig.for_model(d.pop("model_type"), **d)
        return ImageTower(_backbone_from_config(hf), cfg), cfg
    if is_registered(cfg.image_tower):
        return image_tower_entry(cfg.image_tower).build(cfg), cfg
    backbone = _load_checkpoint_backbone(cfg.image_tower)
    if not hasattr(backbone.config, "num_channels"):
        raise ConfigError(f"image_tower {cfg.image_tower!r}: {type(backbone).__name__} is not a vision model "
                          f"(its config has no num_channels); give an image backbone folder")
    if getattr(backbone, "pooler", None) is not None and backbone.config.model_type == "vit":
        backbone.pooler = None  # untrained tanh head of ViTModel; we pool the [CLS] token ourselves
    saved = dataclasses.replace(cfg, image_hf_config=backbone.config.to_dict())
    return ImageTower(backbone, saved), saved


def build_scratch_image_tower(config: ModelConfig | None, seed: int,
                              image_size: int | None = None) -> tuple[ImageTowerBase, int]:
    """A fresh tower with ``config``'s architecture, randomly initialised from ``seed``, and its out dim.

    The from-scratch baselines (probe, segmentation) use it: a checkpoint tower's weights are never
    loaded (its saved architecture is rebuilt); a checkpoint with no saved architecture falls back to the
    default kind. ``config=None`` is the default ModelConfig; ``image_size`` overrides the config's.
    The caller's global RNG state is left untouched.
    """
    cfg = config if config is not None else ModelConfig()
    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=int(image_size))
    if cfg.image_hf_config is None and not is_registered(cfg.image_tower):
        cfg = dataclasses.replace(cfg, image_tower=ModelConfig().image_tower)
    with seeded_init(seed), quiet_transformers():
        tower, _ = build_image_tower(cfg)
    return tower, int(tower.out_dim)


def resize_to(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, size, size) with antialiasing; no-op when already that size."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
