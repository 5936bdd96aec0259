"""Label-efficient probe on real data: the stand-in encoder of test_zero_shot, then a tiny real pretraining run.

``make_tiny_run`` (tests/helpers.py: a 1-epoch tiny-cpu pretraining on 160 real images at 32 px) is
shared with the segmentation and shortcut tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from cxrfm.data.findings import FINDINGS
from cxrfm.metrics import auroc
from cxrfm.tasks import probe
from cxrfm.tasks.suite import EvalContext, TaskSkipped
from tests.helpers import StandInModel, make_tiny_run, subset_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path, per_source=60)


def _ctx(model, manifest, cache_dir, tmp_path=None, **kw):
    ctx = EvalContext(model=model, manifest=manifest, n_boot=100, cache_dir=cache_dir, **kw)
    ctx.out_dir = tmp_path
    return ctx


def test_label_subsets_are_nested_stratified_and_skip_too_few():
    y = np.array([1.0] * 40 + [0.0] * 160 + [np.nan] * 50)
    picks = probe.label_subsets(y, (0.01, 0.1, 1.0), np.random.default_rng(0))
    assert isinstance(picks[0.01], str) and "needs >= 3" in picks[0.01]  # 0 positives at 1 %
    assert (y[picks[0.1]] == 1).sum() == 4 and (y[picks[0.1]] == 0).sum() == 16
    assert set(picks[0.1]) <= set(picks[1.0])
    assert len(picks[1.0]) == 200 and not np.isnan(y[picks[1.0]]).any()


def test_linear_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = rng.normal(size=(300, 16)) + 1.5 * y[:, None] * np.eye(16)[0]
    s = probe.linear_probe(x[:200], y[:200], x[200:])
    assert s.shape == (100,) and auroc(y[200:], s) > 0.8


def test_probe_task_on_real_subset(subset, cache_dir, tmp_path):
    ctx = _ctx(StandInModel(image_size=32), subset, cache_dir, tmp_path)
    r = probe.run(ctx, baseline=probe.BaselineSettings(image_size=32, epochs=2, min_steps=4))
    assert "patient-level split" in r["split"]["how"]
    assert r["n"] == r["split"]["n_eval"] and r["split"]["n_train"] + r["n"] == len(subset)
    pn = r["findings"]["Pneumonia"]
    assert set(pn["auroc"]) == {"0.1", "1.0"}  # 1 % of ~110 labels is too few: skipped with its reason
    assert "0.01" in pn["skipped_fractions"]
    lo, hi = pn["ci"]["1.0"]
    assert lo <= pn["auroc"]["1.0"] <= hi
    assert pn["auroc"]["1.0"] > 0.6  # pooled pixels do carry pneumonia signal (and source)
    assert pn["n_pos"] + pn["n_neg"] <= r["n"] and 0 < pn["prevalence"] < 1
    assert set(r["baseline"]["findings"]["Pneumonia"]["auroc"]) == {"0.1", "1.0"}
    assert (tmp_path / probe.PLOT_FILE).stat().st_size > 1000 and r["plot"].endswith(probe.PLOT_FILE)
    # eval rows are patient-disjoint from the training rows
    split = probe.resolve_split(ctx)
    pid = subset.table["patient_id"].to_numpy()
    assert not set(pid[split.train_rows]) & set(pid[split.eval_rows])


def test_probe_uses_a_given_training_manifest(cxr_manifest_path, subset, cache_dir):
    full = subset_manifest(cxr_manifest_path, per_source=120)
    train = full.subset(np.flatnonzero(~full.table["patient_id"].isin(set(subset.table["patient_id"])).to_numpy()))
    ctx = _ctx(StandInModel(image_size=32), subset, cache_dir)
    ctx.train_manifest = train
    r = probe.run(ctx, baseline=None)
    assert r["split"]["how"].startswith("training manifest") and r["n"] == len(subset)
    assert r["split"]["n_train"] == len(train) and r["plot"] is None and "baseline" not in r


def test_probe_skips_without_enough_positives(subset, cache_dir):
    only_neg = subset.subset(np.flatnonzero(subset.table["source"].to_numpy() == "nih-chestxray14"))
    ctx = _ctx(StandInModel(image_size=32), only_neg, cache_dir, findings=["Pneumothorax"])
    with pytest.raises(TaskSkipped, match="positives"):
        probe.run(ctx, baseline=None)


def test_probe_skips_an_empty_eval_split(subset, cache_dir):
    m = subset.subset(np.arange(len(subset)))
    m.table["split"] = "train"
    with pytest.raises(TaskSkipped, match="eval split is empty"):
        probe.run(_ctx(StandInModel(image_size=32), m, cache_dir), baseline=None)
    one = subset.subset(np.flatnonzero(subset.table["patient_id"].to_numpy() == subset.table["patient_id"][0]))
    with pytest.raises(TaskSkipped, match="split"):
        probe.run(_ctx(StandInModel(image_size=32), one, cache_dir), baseline=None)


def test_probe_with_a_real_tiny_run(tmp_path_factory, cxr_manifest_path, subset, cache_dir, tmp_path):
    from cxrfm import load_model

    run_dir = make_tiny_run(tmp_path_factory.mktemp("tiny"), cxr_manifest_path, cache_dir)
    model = load_model(run_dir)
    r = probe.run(_ctx(model, subset, cache_dir, tmp_path),
                  baseline=probe.BaselineSettings(epochs=1, min_steps=2))
    assert r["baseline"]["image_size"] == 32  # the model's own (tiny) size caps the baseline's
    for f, v in r["findings"].items():
        assert f in FINDINGS and all(0 <= a <= 1 for a in v["auroc"].values())
