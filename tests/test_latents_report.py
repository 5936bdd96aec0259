"""Latent compression in report.html and the demo (issue 15): the ``reconstruction`` eval task on a latent
run, its skip on a pixel run, the message for a moved or replaced autoencoder folder, ``--tasks all``
choosing it by image tower, and ``cxrfm demo --latents``.

The latent run is built as tests/test_latents.py builds its own (its fixtures: 24 sample images at
32 px, an 8-wide autoencoder of 4 steps), then pretrained for one epoch on its latents.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfm.cli import main
from cxrfm.data.cache import ImageCache
from cxrfm.data.schema import Manifest
from cxrfm.models.autoencoder import load_autoencoder, ms_ssim, psnr, read_ae_meta
from cxrfm.paths import SAMPLE_DIR
from cxrfm.tasks import reconstruction
from cxrfm.tasks.registry import get_task
from cxrfm.tasks.suite import evaluate
from cxrfm.train.compress import pretrain_on_latents
from tests.test_latents import AE_ARGS, ae, manifest, other_ae, work  # noqa: F401 - fixtures shared with it

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_TOWER = {"image_arch": {"depths": [1, 1], "hidden_sizes": [8, 16]}, "train.batch_size": 8}


@pytest.fixture(scope="module")
def latent_run(work, manifest, ae):  # noqa: F811
    return pretrain_on_latents(manifest, work / "latent_run", ae, curate="none", budget=1.0, epochs=1,
                               progress=False, cache_dir=work / "cache", overrides=dict(TINY_TOWER))


@pytest.fixture(scope="module")
def pixel_model():
    from cxrfm.config import ModelConfig
    from cxrfm.models import build_model

    return build_model(ModelConfig(image_size=32, image_arch={"depths": [1, 1], "hidden_sizes": [8, 16],
                                                            "num_stages": 2})).eval()


def _eval(run, manifest, out, tasks="reconstruction", cache=None):  # noqa: F811
    return evaluate(run, manifest, tasks=tasks, out=out, n_boot=50, progress=False, cache_dir=cache)


def _reference(ae_dir, manifest, cache):  # noqa: F811
    """PSNR / MS-SSIM per row, computed here from the AE folder: encode -> 8-bit codes -> decode."""
    from cxrfm.data.latent_cache import dequantise, quantise

    model, _ = load_autoencoder(ae_dir)
    x = ImageCache.open(manifest, 32, cache).batch(np.arange(len(manifest)))
    with torch.no_grad():
        codes = quantise(model.encode(x))
        rec = model.decode(dequantise(codes)).clamp(0, 1)
    return x, rec, psnr(rec, x).numpy(), ms_ssim(rec, x).numpy()


# ------------------------------------------------------------------ the task on a latent run
def test_reconstruction_scores_the_runs_autoencoder_and_draws_best_median_worst(work, manifest, ae, latent_run,
                                                                                 tmp_path, capsys):  # noqa: F811
    res = _eval(latent_run, manifest, tmp_path, cache=work / "cache")
    r = res["tasks"]["reconstruction"]
    assert "skipped" not in r
    assert (r["n"], r["n_rows"], r["factor"], r["channels"]) == (24, 24, 4, 2)
    assert r["storage_ratio"] == pytest.approx(32 * 32 / (2 * 8 * 8)) and r["latent_shape"] == [2, 8, 8]
    assert r["ae"] == str(ae.resolve()) and r["ae_hash"] == read_ae_meta(ae)["weights_sha256"][:16]
    x, rec, p, s = _reference(ae, manifest, work / "cache")
    assert r["psnr"]["mean"] == pytest.approx(p.mean(), abs=1e-3) and r["psnr"]["unit"] == "dB"
    assert r["psnr"]["median"] == pytest.approx(np.median(p), abs=1e-3)
    assert r["ms_ssim"]["mean"] == pytest.approx(s.mean(), abs=1e-4)
    for key in ("psnr", "ms_ssim"):
        lo, hi = r[key]["ci"]
        assert lo <= r[key]["mean"] <= hi and lo < hi
    ids = [str(v) for v in manifest.table["image"]]
    order = np.argsort(-p, kind="stable")
    best, median, worst = (int(order[0]), int(order[len(order) // 2]), int(order[-1]))
    assert [r["examples"][k]["image"] for k in ("best", "median", "worst")] == [ids[best], ids[median], ids[worst]]
    assert r["examples"]["best"]["psnr"] >= r["examples"]["median"]["psnr"] >= r["examples"]["worst"]["psnr"]

    from PIL import Image

    fig = np.asarray(Image.open(r["figure"]), dtype=np.float64) / 255  # 3 rows x (original | decoded | 4 |diff|)
    assert fig.shape == (96, 96)
    for row, i in enumerate((best, median, worst)):
        orig, dec, diff = (fig[32 * row:32 * (row + 1), 32 * c:32 * (c + 1)] for c in range(3))
        assert np.abs(orig - x[i, 0].numpy()).max() <= 0.5 / 255 + 1e-6
        assert np.abs(dec - rec[i, 0].numpy()).max() <= 2 / 255
        assert np.abs(diff - np.clip(4 * np.abs(rec[i, 0].numpy() - x[i, 0].numpy()), 0, 1)).max() <= 8 / 255

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    section = page[page.index('id="task-reconstruction"'):]
    section = section[:section.index("</section>")]
    assert "PSNR (dB)" in section and "MS-SSIM" in section and "storage ratio" in section
    assert f"{r['psnr']['mean']:.2f}" in section and Path(ids[best]).name in section and Path(ids[worst]).name in section
    assert re.search(r'<img class="fig" alt="best, median and worst reconstruction" src="data:image/png;base64,',
                     section)
    from cxrfm.tasks.suite import format_results_table

    assert re.search(r"reconstruction: PSNR \d+\.\d+ dB \[", format_results_table(res))


def test_the_image_cap_is_a_setting_and_latents_pass_the_8_bit_codes(work, manifest, latent_run,  # noqa: F811
                                                                      monkeypatch):
    from cxrfm.data import latent_cache

    coded = []
    real = latent_cache.quantise
    monkeypatch.setattr(latent_cache, "quantise", lambda z: coded.append(len(z)) or real(z))
    monkeypatch.setattr(reconstruction, "DEFAULT_SETTINGS", reconstruction.ReconstructionSettings(max_images=5))
    r = _eval(latent_run, manifest, None, cache=work / "cache")["tasks"]["reconstruction"]
    assert (r["n"], r["n_rows"], r["settings"]["max_images"]) == (5, 24, 5) and r["figure"] is None
    assert sum(coded) == 5  # every scored image went through the latent cache's 8-bit codes
    assert len({v["image"] for v in r["examples"].values()}) == 3


# ------------------------------------------------------------------ when it cannot run
def test_a_pixel_run_is_skipped_with_the_reason(pixel_model, manifest, work):  # noqa: F811
    r = _eval(pixel_model, manifest, None, cache=work / "cache")["tasks"]["reconstruction"]
    assert "image tower is 'convnext', not 'latent'" in r["skipped"] and "cxrfm pretrain --latents" in r["skipped"]


def test_tasks_all_includes_it_for_latent_runs_only(pixel_model, latent_run, manifest, work, monkeypatch):  # noqa: F811
    from cxrfm.tasks import registry

    registry.list_tasks()  # only two tasks, so `all` stays cheap: one that applies to every tower, and this one
    monkeypatch.setattr(registry, "_REGISTRY", {n: registry._REGISTRY[n] for n in ("prevalence", "reconstruction")})
    pixel = _eval(pixel_model, manifest, None, tasks="all", cache=work / "cache")
    assert pixel["tasks_requested"] == ["prevalence"] and list(pixel["tasks"]) == ["prevalence"]
    latent = _eval(latent_run, manifest, None, tasks="all", cache=work / "cache")
    assert latent["tasks_requested"] == ["prevalence", "reconstruction"]
    assert "psnr" in latent["tasks"]["reconstruction"]
    task = get_task("reconstruction")
    assert task.towers == ("latent",) and not task.applies_to(pixel_model)


def test_a_moved_or_replaced_autoencoder_is_named_with_the_fix_and_the_eval_goes_on(  # noqa: F811
        work, manifest, ae, other_ae, latent_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(latent_run, moved)
    cfg_file = moved / "config.json"

    def point_to(folder):
        c = json.loads(cfg_file.read_text())
        c["model"]["image_arch"]["ae"] = str(folder)
        cfg_file.write_text(json.dumps(c))

    point_to(tmp_path / "gone")
    res = _eval(moved, manifest, tmp_path / "e1", tasks="reconstruction,prevalence", cache=work / "cache")
    why = res["tasks"]["reconstruction"]["skipped"]
    assert f"{tmp_path / 'gone'} is gone" in why and f"model.image_arch.ae in {cfg_file}" in why
    assert "n_rows" in res["tasks"]["prevalence"]  # the other tasks ran
    assert "Skipped: the run" in (tmp_path / "e1" / "report.html").read_text(encoding="utf-8")

    point_to(other_ae)  # another autoencoder of the same setting: its decoder is not the run's
    why = _eval(moved, manifest, None, cache=work / "cache")["tasks"]["reconstruction"]["skipped"]
    assert f"{other_ae} now holds another autoencoder" in why and read_ae_meta(ae)["weights_sha256"][:16] in why

    new_place = tmp_path / "ae_moved"  # the fix the message gives: point the config at the folder's new place
    shutil.copytree(ae, new_place)
    point_to(new_place)
    r = _eval(moved, manifest, None, cache=work / "cache")["tasks"]["reconstruction"]
    assert "skipped" not in r and r["ae"] == str(new_place)

    (new_place / "autoencoder.safetensors").write_bytes(b"damaged")
    why = _eval(moved, manifest, None, cache=work / "cache")["tasks"]["reconstruction"]["skipped"]
    assert "cannot be used" in why and "sha256 differs" in why


# ------------------------------------------------------------------ the demo
def test_demo_help_explains_latents(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--latents" in out and "autoencoder" in out and "reconstruction" in out


def test_demo_latents_trains_an_autoencoder_pretrains_on_its_latents_and_reports(tmp_path, monkeypatch, capsys):
    from cxrfm import demo

    sample = tmp_path / "sample"  # a 48-row slice of the bundled sample, every source; a 2-step 32 px AE
    m = Manifest.load(SAMPLE_DIR / "manifest.csv")
    m.subset(list(range(0, 640, 13))[:48]).save(sample / "manifest.csv")
    monkeypatch.setattr(demo, "SAMPLE_DIR", sample)
    monkeypatch.setattr(demo, "DEMO_AE", {"factor": 4, "channels": 2, "width": 8, "size": 32, "steps": 2,
                                          "batch_size": 4, "lr": 2e-3})
    monkeypatch.setenv("CXRFM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--latents", "--epochs", "1", "--tasks", "zeroshot", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    meta = read_ae_meta(out / "ae")
    assert meta["config"]["factor"] == 4 and meta["training"]["steps"] == 2 and meta["training"]["lr"] == 2e-3
    assert meta["training"]["n_train_rows"] == len(Manifest.load(out / "data" / "train.csv"))
    cfg = json.loads((out / "run-latents" / "config.json").read_text())["model"]
    assert cfg["image_tower"] == "latent" and cfg["image_arch"]["ae_hash"] == meta["weights_sha256"][:16]
    res = json.loads((out / "eval-latents" / "results.json").read_text())
    assert res["tasks_requested"] == ["zeroshot", "reconstruction"]  # added to the asked-for tasks
    r = res["tasks"]["reconstruction"]
    assert r["n"] == len(Manifest.load(out / "data" / "eval.csv")) and r["psnr"]["mean"] > 0
    assert Path(r["figure"]) == out / "eval-latents" / reconstruction.FIGURE_FILE and Path(r["figure"]).is_file()
    assert "reconstruction: PSNR" in printed and "eval-latents/report.html" in printed
    assert 'id="task-reconstruction"' in (out / "eval-latents" / "report.html").read_text(encoding="utf-8")
    assert not (out / "run").exists()  # the pixel demo's run folder is not touched
