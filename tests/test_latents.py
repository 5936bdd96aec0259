"""Latent compression (issue 15): the autoencoder, its folder, the latent cache, the latent tower,
``cxrfm compress train | encode``, ``cxrfm pretrain --latents`` and ``cxrfm eval`` on a latent run.

Everything is tiny: 24 sample images at 32 px, an 8-wide autoencoder trained for a handful of steps.
The registered ``latent`` tower is also covered by tests/test_tower_contract.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cxrfm.cli import main
from cxrfm.config import ModelConfig
from cxrfm.data.latent_cache import LatentCache, LatentCacheError, dequantise, latent_cache_path, quantise
from cxrfm.data.schema import Manifest
from cxrfm.errors import ConfigError
from cxrfm.models.autoencoder import (AEConfig, Autoencoder, AutoencoderError, load_autoencoder, ms_ssim, psnr,
                                      read_ae_meta)
from cxrfm.models.latent_tower import encode_manifest, pack_latents, unpack_latents
from cxrfm.paths import SAMPLE_DIR
from cxrfm.train.compress import train_autoencoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AE_ARGS = dict(width=8, size=32, steps=4, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    m = Manifest.load(SAMPLE_DIR / "manifest.csv")
    m.subset(list(range(0, 640, 27))).save(root / "manifest.csv")  # 24 rows, every source
    return root


@pytest.fixture(scope="module")
def manifest(work):
    return Manifest.load(work / "manifest.csv")


@pytest.fixture(scope="module")
def ae(work, manifest):
    return train_autoencoder(manifest, work / "ae", factor=4, channels=2, cache_dir=work / "cache", **AE_ARGS)


@pytest.fixture(scope="module")
def other_ae(work, manifest):
    return train_autoencoder(manifest, work / "ae2", factor=4, channels=2, seed=1, cache_dir=work / "cache", **AE_ARGS)


# ------------------------------------------------------------------ measures and the network
def test_ms_ssim_and_psnr_rank_reconstructions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    close, far = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1), torch.rand(2, 1, 32, 32, generator=g)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ms_ssim(close, x) > ms_ssim(far, x) + 0.3).all()
    assert (psnr(close, x) > psnr(far, x) + 10).all() and (psnr(close, x) > 30).all()
    big = torch.rand(1, 1, 176, 176, generator=g)  # five scales
    assert 0 < float(ms_ssim(big * 0.9, big)) < 1


def test_autoencoder_shapes_and_too_small_images():
    ae = Autoencoder(AEConfig(factor=8, channels=4, width=8, image_size=32))
    z = ae.encode(torch.rand(3, 1, 64, 64))
    assert z.shape == (3, 4, 8, 8) and ae.decode(z).shape == (3, 1, 64, 64)
    for side in (16, 36):  # below 4 latents per side; not a multiple of the factor
        with pytest.raises(AutoencoderError, match="multiple of 8 of at least 32 px"):
            ae.encode(torch.rand(1, 1, side, side))
    with pytest.raises(AutoencoderError, match="too small"):
        AEConfig(factor=8, image_size=16)


def test_quantised_latents_round_trip_within_half_a_step():
    z = torch.randn(4, 2, 8, 8)
    back = dequantise(quantise(z))
    inside = z.abs() <= 4
    assert (back - z)[inside].abs().max() <= 4 / 255 + 1e-6
    assert torch.equal(back[~inside].abs(), torch.full_like(back[~inside], 4.0))


def test_packed_latents_unpack_exactly():
    z = torch.randn(3, 2, 8, 8)
    x = pack_latents(z, 32)
    assert x.shape == (3, 1, 32, 32) and torch.equal(unpack_latents(x, (2, 8, 8)), z)
    with pytest.raises(ConfigError, match="do not fit"):
        pack_latents(torch.randn(1, 4, 16, 16), 16)


# ------------------------------------------------------------------ training and the folder
def test_training_reduces_the_loss_and_writes_a_checked_folder(ae):
    meta = read_ae_meta(ae)
    hist = meta["training"]["final_losses"]
    assert meta["config"] == {"factor": 4, "channels": 2, "width": 8, "image_size": 32, "pixel_mean": 0.5,
                              "pixel_std": 0.25} and hist["step"] == 4
    model, _ = load_autoencoder(ae)
    assert model.encoder.latent_std.min() > 0 and not torch.equal(model.encoder.latent_std, torch.ones(2))
    scores = meta["training"]["train_sample_scores"]
    assert np.isfinite(scores["psnr"]) and 0 < scores["ms_ssim"] <= 1


def test_more_steps_reconstruct_better(work, manifest, ae):
    longer = train_autoencoder(manifest, work / "ae_long", factor=4, channels=2, cache_dir=work / "cache",
                               **{**AE_ARGS, "steps": 40})
    short = read_ae_meta(ae)["training"]["train_sample_scores"]
    long_ = read_ae_meta(longer)["training"]["train_sample_scores"]
    assert long_["psnr"] > short["psnr"] and long_["ms_ssim"] > short["ms_ssim"]


def test_resume_reaches_the_uninterrupted_weights(work, manifest, ae):
    out = work / "ae_resumed"
    train_autoencoder(manifest, out, factor=4, channels=2, cache_dir=work / "cache", max_steps=2, **AE_ARGS)
    assert not (out / "autoencoder.json").exists() and (out / "state" / "trainer.json").is_file()
    with pytest.raises(AutoencoderError, match="--resume"):
        train_autoencoder(manifest, out, factor=4, channels=2, cache_dir=work / "cache", **AE_ARGS)
    with pytest.raises(AutoencoderError, match="factor: 4 -> 8"):
        train_autoencoder(manifest, out, factor=8, channels=2, cache_dir=work / "cache", resume=True, **AE_ARGS)
    train_autoencoder(manifest, out, factor=4, channels=2, cache_dir=work / "cache", resume=True, **AE_ARGS)
    a, _ = load_autoencoder(ae)
    b, _ = load_autoencoder(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


def test_adversarial_term_and_stage_two_alignment_train(work, manifest, capsys):
    from cxrfm.train.loop import pretrain

    judge = pretrain(manifest, work / "pixel_run", curate="none", budget=1.0, epochs=1, progress=False,
                     cache_dir=work / "cache", overrides={"image_size": 32, "train.batch_size": 8, "image_arch": {
                         "depths": [1, 1], "hidden_sizes": [8, 16], "num_stages": 2}})
    rc = main(["compress", "train", "--data", str(work / "manifest.csv"), "--out", str(work / "ae_adv"), "--factor",
               "4", "--channels", "1", "--size", "32", "--width", "8", "--steps", "4", "--batch-size", "4",
               "--adv-weight", "0.1", "--adv-start", "0.5", "--align-model", str(judge), "--align-steps", "2",
               "--cache-dir", str(work / "cache"), "--no-progress"])
    assert rc == 0 and "PSNR" in capsys.readouterr().out
    meta = read_ae_meta(work / "ae_adv")
    hist = json.loads((work / "ae_adv" / "state" / "trainer.json").read_text())["history"]
    assert meta["training"]["align_steps"] == 2 and meta["training"]["align_model"] == str(judge.resolve())
    last = hist[-1]  # step 6: stage 2, with the alignment term; the adversarial term only ran in stage 1
    assert last["stage"] == 2 and 0 <= last["align"] <= 2 and "gen" not in last
    assert [h["step"] for h in hist if "gen" in h and "disc" in h] == [3, 4]  # from half of stage 1 on
    with pytest.raises(ConfigError, match="--align-model"):
        train_autoencoder(manifest, work / "ae_x", align_steps=2, cache_dir=work / "cache", **AE_ARGS)


def test_a_damaged_or_mismatched_folder_is_refused(work, ae):
    bad = work / "ae_bad"
    shutil.copytree(ae, bad)
    with pytest.raises(AutoencoderError, match="trained for factor 4 with 2 latent channel"):
        load_autoencoder(bad, factor=8)
    with pytest.raises(AutoencoderError, match="not channels 4"):
        load_autoencoder(bad, channels=4)
    w = bad / "autoencoder.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(AutoencoderError, match="sha256 differs"):
        load_autoencoder(bad)
    (bad / "autoencoder.json").write_text("{not json")
    with pytest.raises(AutoencoderError, match="damaged"):
        load_autoencoder(bad)
    (bad / "autoencoder.json").unlink()
    with pytest.raises(AutoencoderError, match="no autoencoder.json"):
        load_autoencoder(bad)
    with pytest.raises(AutoencoderError, match="no such autoencoder folder"):
        load_autoencoder(work / "nowhere")


# ------------------------------------------------------------------ the latent cache
def test_encode_writes_a_keyed_cache_with_its_storage_ratio(work, manifest, ae):
    cache = encode_manifest(ae, manifest, cache_dir=work / "cache")
    assert cache.array.shape == (24, 2, 8, 8) and cache.array.dtype == np.uint8
    assert cache.storage_ratio == pytest.approx(32 * 32 / (2 * 8 * 8)) and cache.ae_hash in cache.path.name
    model, _ = load_autoencoder(ae)
    from cxrfm.data.cache import ImageCache

    with torch.no_grad():
        z = model.encode(ImageCache.open(manifest, 32, work / "cache").batch([0, 5]))
    assert (cache.batch([0, 5]) - z.clamp(-4, 4)).abs().max() <= 4 / 255 + 1e-5
    mtime = cache.path.stat().st_mtime_ns
    assert encode_manifest(ae, manifest, cache_dir=work / "cache").path.stat().st_mtime_ns == mtime  # reused


def test_a_cache_of_another_autoencoder_or_manifest_is_refused(work, manifest, ae, other_ae):
    cache = encode_manifest(ae, manifest, cache_dir=work / "cache")
    other = read_ae_meta(other_ae)["weights_sha256"][:16]
    with pytest.raises(LatentCacheError, match="latents of another autoencoder"):
        LatentCache.open(cache.path, other, manifest)
    with pytest.raises(LatentCacheError, match="another manifest"):
        LatentCache.open(cache.path, cache.ae_hash, manifest.subset(range(10)))
    assert latent_cache_path(manifest, other, 32, work / "cache") != cache.path
    with pytest.raises(LatentCacheError, match="no latent cache"):
        LatentCache.open(latent_cache_path(manifest, other, 32, work / "cache"), other, manifest)


def test_encode_refuses_a_setting_the_ae_was_not_trained_for_and_too_small_images(work, manifest, ae):
    with pytest.raises(AutoencoderError, match="trained for factor 4"):
        encode_manifest(ae, manifest, cache_dir=work / "cache", factor=8, channels=4)
    with pytest.raises(AutoencoderError, match="--size 12 px"):
        encode_manifest(ae, manifest, size=12, cache_dir=work / "cache")


# ------------------------------------------------------------------ downstream on latents
def test_cli_encode_pretrain_on_latents_and_eval(work, ae, capsys):
    cache = work / "cache"
    assert main(["compress", "encode", "--ae", str(ae), "--data", str(work / "manifest.csv"), "--out", str(cache),
                 "--no-progress"]) == 0
    assert "storage ratio 8.0x" in capsys.readouterr().out
    run = work / "run"
    rc = main(["pretrain", "--data", str(work / "manifest.csv"), "--latents", str(ae), "--out", str(run),
               "--curate", "none", "--budget", "1", "--epochs", "1", "--cache-dir", str(cache), "--no-progress",
               "--set", 'image_arch={"depths": [1, 1], "hidden_sizes": [8, 16]}', "--set", "train.batch_size=8"])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert cfg["image_tower"] == "latent" and cfg["image_size"] == 32
    assert cfg["image_arch"]["ae_hash"] == read_ae_meta(ae)["weights_sha256"][:16]
    from cxrfm.models.dual import load_model

    model = load_model(run)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the pixel path (eval) and the cached-latent path (training) agree
        pixel = model.encode_image(x)
        model.image.latent_input = True
        z = dequantise(quantise(model.image.latents(x)))
        latent = model.encode_image(pack_latents(z, 32))
        model.image.latent_input = False
    assert (pixel * latent).sum(-1).min() > 0.99
    moved = work / "run_moved"  # the AE folder gone: the run still loads (its encoder is in model.safetensors)
    shutil.copytree(run, moved)
    c = json.loads((moved / "config.json").read_text())
    c["model"]["image_arch"]["ae"] = str(work / "gone")
    (moved / "config.json").write_text(json.dumps(c))
    with torch.no_grad():
        assert torch.allclose(load_model(moved).encode_image(x), pixel, atol=1e-6)
    ae_model, _ = load_autoencoder(ae)
    assert torch.equal(model.image.backbone.encoder.net[1].weight, ae_model.encoder.net[1].weight)  # the frozen AE encoder
    rc = main(["eval", "--model", str(run), "--data", str(work / "manifest.csv"), "--tasks", "zeroshot",
               "--out", str(work / "eval"), "--cache-dir", str(cache), "--n-boot", "10"])
    assert rc == 0
    res = json.loads((work / "eval" / "results.json").read_text())
    assert res["config"]["image_tower"] == "latent" and "zeroshot" in res["tasks"]


def test_cli_errors_are_one_line_with_the_fix(work, ae, capsys):
    rc = main(["compress", "encode", "--ae", str(ae), "--data", str(work / "manifest.csv"), "--factor", "8"])
    assert rc == 2 and "trained for factor 4" in capsys.readouterr().err
    rc = main(["compress", "encode", "--ae", str(work / "nowhere"), "--data", str(work / "manifest.csv")])
    assert rc == 2 and "no such autoencoder folder" in capsys.readouterr().err
    rc = main(["pretrain", "--data", str(work / "manifest.csv"), "--latents", str(ae), "--out", str(work / "r2"),
               "--set", "image_size=30"])
    assert rc == 2 and "image_size 30 px" in capsys.readouterr().err
    rc = main(["pretrain", "--data", str(work / "manifest.csv"), "--latents", str(ae), "--out", str(work / "r3"),
               "--set", "image_size=24"])  # 6x6 latents: too few for the default four ConvNeXt stages
    assert rc == 2 and "too small for 4 ConvNeXt stages" in capsys.readouterr().err
    rc = main(["compress", "train", "--data", str(work / "manifest.csv"), "--out", str(work / "t"), "--size", "8",
               "--factor", "4"])
    assert rc == 2 and "too small" in capsys.readouterr().err


def test_latent_tower_refuses_a_size_its_factor_does_not_allow():
    from cxrfm.models import build_model

    with pytest.raises(ConfigError, match="image_tower latent"):
        build_model(ModelConfig(image_tower="latent", image_size=20, image_arch={"factor": 8, "ae_width": 8}))
