"""The image-tower contract, checked on every registered tower (timm's tests over ``list_models()``).

A tower registered with ``@register_image_tower(name, tiny_arch=...)`` is built here at its tiny size
and must answer ``forward_features`` / ``forward_head`` with the right shapes, ``forward == head(features)``,
pass gradients to every trainable weight and to at least one feature map, and survive a safetensors
round trip. Nothing here names a tower: a new one is tested the moment it is registered.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from cxrfm.config import ModelConfig
from cxrfm.errors import ConfigError
from cxrfm.models import (FeatureMaps, ImageTowerBase, build_model, build_scratch_image_tower, list_image_towers,
                          load_model, register_image_tower)
from cxrfm.models import tower as registry
from cxrfm.models.tower import TINY_IMAGE_SIZE, image_tower_entry

pytestmark = pytest.mark.usefixtures("one_torch_thread")
S = TINY_IMAGE_SIZE


def tiny(kind: str, **kw) -> ModelConfig:
    return ModelConfig(image_tower=kind, image_arch=image_tower_entry(kind).tiny_arch, image_size=S, **kw)


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, S, S, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list_image_towers())
def test_features_head_and_forward_agree(kind):
    tower, dim = build_scratch_image_tower(tiny(kind), seed=0)
    assert isinstance(tower, ImageTowerBase) and dim == tower.out_dim
    tower.eval()
    x = pixels()
    with torch.no_grad():
        feats = tower.forward_features(x)
        pooled = tower.forward_head(feats)
        out = tower(x)
    assert isinstance(feats, FeatureMaps) and len(feats) >= 1
    for m in feats:  # spatial maps, batch first, no larger than the input
        assert m.dim() == 4 and m.shape[0] == 2 and m.shape[-1] <= S and m.shape[-2] <= S, m.shape
    sides = [m.shape[-1] for m in feats]
    assert sides == sorted(sides, reverse=True)  # shallow -> deep: resolution never grows
    assert pooled.shape == (2, dim) and torch.isfinite(pooled).all()
    assert torch.equal(out, pooled)
    assert not torch.allclose(out[0], out[1])  # the two images are told apart


@pytest.mark.parametrize("kind", list_image_towers())
def test_gradients_reach_every_weight_and_a_feature_map(kind):
    tower, _ = build_scratch_image_tower(tiny(kind), seed=0)
    tower.train()
    x = pixels().requires_grad_(True)
    feats = tower.forward_features(x)
    score = tower.forward_head(feats).square().sum()
    map_grads = feats.gradients(score)  # what Grad-CAM differentiates
    assert [g.shape for g in map_grads] == [m.shape for m in feats]
    assert any(bool(g.any()) for g in map_grads), "the pooled output depends on none of the feature maps"
    score.backward()
    trainable = [(n, p) for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"weights the output does not reach (DDP would wait for them): {no_grad[:3]}"


@pytest.mark.parametrize("kind", list_image_towers())
def test_safetensors_round_trip_gives_identical_outputs(kind, tmp_path):
    from safetensors.torch import load_file, save_file

    a, _ = build_scratch_image_tower(tiny(kind), seed=0)
    b, _ = build_scratch_image_tower(tiny(kind), seed=1)
    x = pixels()
    with torch.no_grad():
        assert not torch.equal(a.eval()(x), b.eval()(x))  # another seed, other weights
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "tower.safetensors"))
    b.load_state_dict(load_file(str(tmp_path / "tower.safetensors")), strict=True)
    with torch.no_grad():
        assert torch.equal(a(x), b.eval()(x))


@pytest.mark.parametrize("kind", list_image_towers())
def test_scratch_tower_is_a_function_of_the_seed_and_leaves_the_global_rng(kind):
    before = torch.random.get_rng_state()
    a, _ = build_scratch_image_tower(tiny(kind), seed=5)
    b, _ = build_scratch_image_tower(tiny(kind), seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ the transformers towers: unchanged outputs
@pytest.mark.parametrize("kind", ["convnext", "resnet", "vit", "dinov2"])
def test_hf_head_is_the_backbones_own_pooling(kind):
    """forward == what the backbone itself pools (ConvNeXt/ResNet/DINOv2 pooler_output, ViT [CLS]):
    the contract split changes no output, so runs trained before it load to the same embeddings."""
    tower, _ = build_scratch_image_tower(tiny(kind, image_mean=0.3, image_std=0.2), seed=0)
    tower.eval()  # BatchNorm (ResNet) uses running statistics on both sides
    x = pixels()
    with torch.no_grad():
        ref = tower.backbone(pixel_values=(x - 0.3) / 0.2)
        want = ref.last_hidden_state[:, 0] if kind == "vit" else ref.pooler_output.flatten(1)
        assert torch.equal(tower(x), want)


def test_scratch_tower_of_a_checkpoint_config_rebuilds_its_architecture_with_new_weights(tmp_path):
    import transformers as tf

    folder = tmp_path / "ckpt"
    tf.ConvNextModel(tf.ConvNextConfig(num_channels=3, depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 24])).save_pretrained(str(folder))
    model = build_model(ModelConfig(image_tower=str(folder), image_size=S, embed_dim=8))
    tower, dim = build_scratch_image_tower(model.config, seed=0, image_size=48)
    assert dim == 24 and tower.in_channels == 3
    assert not torch.equal(tower.state_dict()["backbone.embeddings.patch_embeddings.weight"],
                           model.image.state_dict()["backbone.embeddings.patch_embeddings.weight"])
    # A path tower with no saved architecture falls back to the default kind.
    fallback, _ = build_scratch_image_tower(dataclasses.replace(ModelConfig(), image_tower=str(tmp_path / "gone")), 0)
    assert fallback.model_type == "convnext"


# ------------------------------------------------------------------ registering a new tower
class MeanPoolConv(ImageTowerBase):
    """A two-stage conv tower written against the contract alone (no transformers)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = int(cfg.image_arch.get("width", 8))
        self.a = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.b = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.out_dim = 2 * width

    def forward_features(self, pixels):
        a = torch.relu(self.a(pixels))  # (B, W, S/2, S/2)
        return FeatureMaps([a, torch.relu(self.b(a))])  # + (B, 2W, S/4, S/4)

    def forward_head(self, features):
        return features[-1].mean(dim=(2, 3))  # (B, 2W)


@pytest.fixture
def registered_test_tower():
    register_image_tower("test-meanpool", tiny_arch={"width": 4})(MeanPoolConv)
    try:
        yield "test-meanpool"
    finally:
        registry._REGISTRY.pop("test-meanpool")


def test_a_registered_tower_trains_saves_and_loads_as_a_dual_encoder(registered_test_tower, tmp_path):
    import json

    from cxrfm.config import TrainConfig, config_to_dict
    from cxrfm.models.dual import save_model

    kind = registered_test_tower
    assert kind in list_image_towers()
    model = build_model(tiny(kind, embed_dim=8), seed=0).eval()
    x = pixels()
    with torch.no_grad():
        z = model.encode_image(x)
    assert z.shape == (2, 8)
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(model.config, TrainConfig())))
    save_model(model, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path).encode_image(x), z)
    with pytest.raises(ValueError, match="registered twice"):
        register_image_tower(kind, tiny_arch={})(MeanPoolConv)


def test_an_unknown_tower_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="convnext.*resnet"):
        image_tower_entry("convnxt")
