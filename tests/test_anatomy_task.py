"""The ``anatomy`` evaluation task: its result keys on real anatomy masks (tiny nets, a few steps), the
few-shot draws, CTR scoring, the statistics, the split fallback and the skips; and its benchmark's CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm.data.schema import Manifest
from cxrfm.models.anatomy_nets import InContextConfig, InContextSegmenter
from cxrfm.models.anatomy_store import save_anatomy
from cxrfm.reporting.assets import Assets
from cxrfm.tasks import anatomy as task_mod
from cxrfm.tasks.anatomy import AnatomySettings, cohen_kappa, score_ctr
from cxrfm.tasks.anatomy_fewshot import AnatomyData, atlas_mask, pretraining_check, two_way_ci
from cxrfm.tasks.registry import TaskSkipped, get_task
from cxrfm.tasks.suite import EvalContext, _jsonable
from tests.helpers import StandInModel, subset_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STRUCTURES = ("heart", "left_lung", "right_lung")
TINY = AnatomySettings.tiny()


class SpatialStandIn(StandInModel):
    """The stand-in plus fixed feature maps at strides 2 and 4 (for the frozen-encoder decoder)."""

    def forward_features(self, x):
        return [torch.nn.functional.avg_pool2d(x, 2).repeat(1, 4, 1, 1),
                torch.nn.functional.avg_pool2d(x, 4).repeat(1, 8, 1, 1)]


@pytest.fixture(scope="module")
def anatomy(shared_data) -> Manifest:
    return Manifest.load(shared_data / "anatomy" / "manifest.csv").subset(np.arange(30))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("anatomy_model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = InContextSegmenter(InContextConfig(widths=(4, 8, 8, 8), size=32))
    record = {"rows": [{"image": "images/other.png", "mask_columns": ["mask"]}], "mask_columns_read": ["mask"],
              "n_images": 1}
    return save_anatomy(d, incontext=net, training={"incontext": record})


def _ctx(manifest, out=None, model=None):
    return EvalContext(model=model or SpatialStandIn(), manifest=manifest, n_boot=50, out_dir=out)


@pytest.fixture(scope="module")
def result(anatomy, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("anatomy_out")
    r = task_mod.run(_ctx(anatomy, out), AnatomySettings.tiny(model_dir=str(model_dir)))
    return r, out


def _inside(d):
    lo, hi = d["ci"]
    return 0.0 <= lo <= d["mean"] <= hi <= 1.0


def test_result_has_the_contract_keys(result):
    r, _ = result
    get_task("anatomy").check_result(r)
    json.dumps(_jsonable(r), allow_nan=False)
    assert r["structures"] == ["heart", "left_lung", "right_lung"]
    assert "anatomy_split" in r["split"]["how"] and r["split"]["n_test"] > 0
    for s in STRUCTURES:
        assert _inside(r["supervised"][s]["dice"]) and r["supervised"][s]["hd95"]["unit"].endswith("own size")
        for k in ("1", "3", "5"):
            e = r["fewshot"][s][k]
            assert _inside(e["dice"]) and e["n_draws"] == 2 and e["n_queries"] == r["split"]["n_test"]
            assert _inside(r["baselines"]["atlas"][s][k]["dice"])
            assert _inside(r["baselines"]["supervised_k"][s][k]["dice"])
        assert r["baselines"]["label_fraction"]["0.5"][s]["n"] == r["split"]["n_test"]
        assert _inside(r["baselines"]["frozen_decoder"][s]["dice"])
    half = r["baselines"]["label_fraction"]["0.5"]["n_train"]
    assert half == round(0.5 * r["split"]["n_train"]) and r["baselines"]["label_fraction"]["1"]["n_train"] == \
        r["split"]["n_train"]
    c = r["ctr"]  # a 3-step U-Net may find no lungs: then every row is refused (CTR scoring: tests below)
    assert c["n_measured"] + c["n_refused"] == r["split"]["n_test"] and "against" in c and "mae" in c
    if c["mae"] is not None:
        assert c["mae"] >= 0 and 0 <= c["cardiomegaly"]["accuracy"]["value"] <= 1
    assert r["fewshot_model"]["pretraining"]["heart_mask_read"] is False


def test_supports_come_from_training_patients_only(result, anatomy):
    r, _ = result
    t = anatomy.table
    patient = dict(zip(t["image"], t["patient_id"].astype(str)))
    draws = r["fewshot_model"]["supports"]
    assert len(draws) == 2
    test_images = {r["overlays"][n]["image"] for n in ("best", "median", "worst")}
    from cxrfm.data.anatomy import anatomy_split

    test_patients = set(t["patient_id"].astype(str)[anatomy_split(anatomy) == "test"])
    for d in draws:
        for s in STRUCTURES:
            assert len(d[s]) == 5 and len(set(d[s])) == 5
            assert not {patient[i] for i in d[s]} & test_patients
    assert {patient[i] for i in test_images} <= test_patients
    assert draws[0]["heart"] != draws[1]["heart"]  # two different draws


def test_overlays_console_and_html(result):
    r, out = result
    for name in ("best", "median", "worst"):
        assert Path(r["overlays"][name]["path"]).is_file()
    assert r["overlays"]["best"]["dice"] >= r["overlays"]["median"]["dice"] >= r["overlays"]["worst"]["dice"]
    task = get_task("anatomy")
    lines = task.console_lines(r)
    assert lines[0].startswith("anatomy: supervised Dice heart ")
    assert any(x.strip().startswith("few-shot heart: k=1 ") for x in lines)
    assert any(x.strip().startswith("CTR MAE" if r["ctr"]["mae"] is not None else "CTR: ") for x in lines)
    page = task.html_section(r, Assets(out))
    for text in ("Supervised U-Net", "Few-shot segmentation", "supervised on k shots", "50 % of labels",
                 "frozen-encoder decoder", "Cohen's kappa", "<img"):
        assert text in page, text


def test_missing_model_and_small_manifest(anatomy, tmp_path):
    small = anatomy.subset(np.arange(6))
    settings = AnatomySettings.tiny(model_dir=str(tmp_path / "nothing"), baselines=False)
    r = task_mod.run(_ctx(small, model=StandInModel()), settings)
    assert r["split"]["how"].startswith("only 6 patients have masks")
    assert r["fewshot"] == {} and r["fewshot_model"]["available"] is False
    assert "not an anatomy model folder" in r["fewshot_model"]["reason"]
    assert r["baselines"] == {} and r["overlays"]["best"]["path"] is None
    assert any("few-shot: not run" in x for x in get_task("anatomy").console_lines(r))


def test_skips_without_structure_columns(cxr_manifest_path):
    with pytest.raises(TaskSkipped, match="no mask_<structure> column"):
        task_mod.run(_ctx(subset_manifest(cxr_manifest_path, per_source=3)), TINY)


def test_a_grey_mask_skips_with_the_file_named(anatomy, tmp_path):
    from cxrfm.data.anatomy import anatomy_split

    df = anatomy.table.copy()
    bad = tmp_path / "grey.png"
    Image.fromarray(np.full((320, 320), 77, np.uint8)).save(bad)
    df.loc[int(np.flatnonzero(anatomy_split(anatomy) == "test")[0]), "mask_heart"] = str(bad)
    with pytest.raises(TaskSkipped, match="grey.png: the mask is not binary"):
        task_mod.run(_ctx(Manifest.from_table(df, anatomy.root)), TINY)


# ---------------------------------------------------------------- pieces
def test_atlas_of_one_mask_repeated_is_that_mask():
    m = np.zeros((40, 60), bool)
    m[10:30, 5:25] = True
    got = atlas_mask([m, m, m], 40, 60, 120)
    assert got.shape == (40, 60)
    from cxrfm.tasks.segmentation import dice_score

    assert dice_score(got, m) > 0.97
    assert not atlas_mask([m, ~m, ~m], 40, 60, 32)[15, 10]  # the majority wins


def test_two_way_ci_counts_draw_variation():
    rng = np.random.default_rng(0)
    groups = [f"p{i}" for i in range(20)]
    assert two_way_ci(np.full((3, 20), 0.7), groups, rng, 200) == pytest.approx((0.7, 0.7))
    lo, hi = two_way_ci(np.vstack([np.zeros(20), np.ones(20)]), groups, rng, 400)
    assert lo == 0.0 and hi == 1.0  # draws disagree completely: a patient-only bootstrap would say [0.5, 0.5]


def test_cohen_kappa_hand_computed():
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)  # po 0.75, pe 0.5
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None


def _synthetic(n: int) -> AnatomyData:
    images, masks = [], {s: [] for s in STRUCTURES}
    for i in range(n):
        h = np.zeros((40, 40), bool)
        h[20:30, 15:25 + i] = True  # heart width 10 + i
        ll, rl = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
        rl[5:35, 5:18], ll[5:35, 22:35] = True, True  # thorax 5..34 = 30 px
        images.append(torch.zeros(1, 40, 40))
        for s, m in zip(STRUCTURES, (h, ll, rl)):
            masks[s].append(m)
    return AnatomyData([f"i{i}" for i in range(n)], np.array([f"p{i}" for i in range(n)]), images, masks,
                       np.arange(0), np.arange(n))


def test_ctr_scoring_against_masks_and_table():
    data = _synthetic(5)
    preds = {i: {s: data.masks[s][i] for s in STRUCTURES} for i in range(5)}
    views = ["PA", "PA", "PA", "PA", "LATERAL"]
    rng = np.random.default_rng(0)
    c = score_ctr(data, preds, views, [None] * 5, rng, 50)
    assert c["against"].startswith("the CTR of the reference masks") and c["mae"] == 0.0
    assert c["n_refused"] == 1 and c["n_measured"] == 4 and "lateral" in next(iter(c["refusals"]))
    assert c["cardiomegaly"]["accuracy"]["value"] == 1.0
    ref = [0.4, 0.5, 0.6, None, 0.3]  # rows 0-2 carry a reference; heart widths 10-12 px over 30 px
    c = score_ctr(data, preds, views, ref, rng, 50)
    want = np.mean([abs(10 / 30 - 0.4), abs(11 / 30 - 0.5), abs(12 / 30 - 0.6)])
    assert c["against"].startswith("ctr_reference") and c["n_scored"] == 3 and c["mae"] == pytest.approx(want)
    assert c["mae_vs_reference_masks"] == {"mae": 0.0, "n": 4}
    assert c["cardiomegaly"]["n_enlarged_reference"] == 1 and c["cardiomegaly"]["n_enlarged_predicted"] == 0


def test_ctr_needs_heart_and_both_lungs():
    data = _synthetic(2)
    del data.masks["heart"]
    c = score_ctr(data, {}, ["PA", "PA"], [None, None], np.random.default_rng(0), 10)
    assert c["mae"] is None and "mask_heart" in c["skipped"]


def test_pretraining_check_flags_a_heart_and_test_images(tmp_path):
    d = save_anatomy(tmp_path / "m", incontext=InContextSegmenter(InContextConfig(widths=(4, 8, 8, 8), size=32)),
                     training={"incontext": {"rows": [{"image": "images/a.png", "mask_columns": ["mask_heart"]},
                                                      {"image": "images/b.png", "mask_columns": ["mask"]}]}})
    got = pretraining_check(d, ["images/b.png", "images/c.png"])
    assert got["heart_mask_read"] is True and got["n_test_images_in_pretext"] == 1 and got["n_pretext_images"] == 2


def test_benchmark_runs_quick():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "anatomy.py"), "--quick"], capture_output=True,
                          text=True, timeout=240, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cached / uncached" in proc.stdout and "U-Net / decoder" in proc.stdout


def test_the_fitted_unet_is_kept_as_an_anatomy_folder(result):
    """The scored U-Net is saved (OUT/anatomy_model) and segments like the scored one."""
    from cxrfm.models.anatomy_store import load_unet, read_meta

    r, out = result
    folder = Path(r["supervised"]["model_dir"])
    assert folder.parent == Path(out)
    net = load_unet(folder)
    assert set(net.config.structures) == set(r["structures"])
    rec = read_meta(folder)["training"]["unet"]
    assert rec["part"] == "train" and rec["n_images"] > 0
