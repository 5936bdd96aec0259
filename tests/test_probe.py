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
    r = probe.run(ctx, baseline=probe.BaselineSettings(schedules=((1, 2e-3), (2, 2e-3)), min_steps=4))
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
    # the baseline sees the encoder's own input size, and says which schedule it chose and how
    base = r["baseline"]
    assert base["image_size"] == base["encoder_image_size"] == 32
    sched = base["schedule"]
    assert (sched["epochs"], sched["lr"]) in {(1, 2e-3), (2, 2e-3)} and len(sched["candidates"]) == 2
    assert "validation" in sched["how"] and f"{sched['epochs']} epochs" in base["description"]
    scored = [c for c in sched["candidates"] if c["val_mean_auroc"] is not None]
    assert scored and max(c["val_mean_auroc"] for c in scored) == next(
        c["val_mean_auroc"] for c in sched["candidates"] if (c["epochs"], c["lr"]) == (sched["epochs"], sched["lr"]))
    # headline means exist at every fraction some finding has, with how many findings they average
    for res in (r, base):
        for k, n in res["n_findings"].items():
            assert (res["mean_auroc"][k] is None) == (n == 0)
    assert r["n_findings"]["1.0"] >= r["n_findings"]["0.1"] >= 1 and r["mean_auroc"]["0.1"] is not None
    assert "plot" not in r  # the report draws the figure from these numbers
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
    assert r["split"]["n_train"] == len(train) and "baseline" not in r


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
                  baseline=probe.BaselineSettings(schedules=((1, 2e-3),), min_steps=2))
    assert r["baseline"]["image_size"] == 32  # the model's own (tiny) size
    assert r["baseline"]["schedule"]["candidates"] == [] and r["baseline"]["schedule"]["epochs"] == 1
    for f, v in r["findings"].items():
        assert f in FINDINGS and all(0 <= a <= 1 for a in v["auroc"].values())


def test_means_average_the_findings_each_fraction_has_and_count_them():
    found = {"A": {"auroc": {"0.01": 0.6, "0.1": 0.7, "1.0": 0.8}},
             "B": {"auroc": {"0.1": 0.5, "1.0": 0.6}},  # too few labels at 1 %
             "C": {"auroc": {"1.0": None}}}  # scored nowhere
    means, counts = probe.mean_by_fraction(found, (0.01, 0.1, 1.0), "auroc")
    assert means == pytest.approx({"0.01": 0.6, "0.1": 0.6, "1.0": 0.7})
    assert counts == {"0.01": 1, "0.1": 2, "1.0": 2}
    none, zero = probe.mean_by_fraction({}, (1.0,), "auroc")
    assert none == {"1.0": None} and zero == {"1.0": 0}


def test_fit_linear_probe_folds_the_standardisation_into_w_and_b():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8)) * rng.uniform(0.1, 5, 8) + rng.normal(size=8)
    y = (x[:, 0] + rng.normal(size=120) > x[:, 0].mean()).astype(int)
    w, b = probe.fit_linear_probe(x[:80], y[:80])
    want = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=0)).fit(
        x[:80], y[:80]).predict_proba(x[80:])[:, 1]
    np.testing.assert_allclose(probe.probe_probabilities(x[80:], w, b), want, rtol=1e-6, atol=1e-9)


def test_the_probe_task_saves_its_probes_into_the_served_findings_head(subset, cache_dir, tmp_path):
    """What eval's probe predicts on the eval embeddings is what the findings head (serve's) answers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cxrfm.inference.heads import load_findings_head
    from cxrfm.inference.zero_shot import load_prompts

    model, prompts = StandInModel(image_size=32), load_prompts()
    ctx = _ctx(model, subset, cache_dir, prompts=prompts, run_dir=tmp_path / "run")
    r = probe.run(ctx, baseline=None)
    assert r["head_file"] and (tmp_path / "run").is_dir()
    findings = [f for f in FINDINGS if f in prompts]
    head, note = load_findings_head(tmp_path / "run", model, findings, prompts, ctx.logit_scale)
    assert note is None
    probed = set(r["findings"])
    assert probed and {f for f in findings if head.kind_of(f) == "linear-probe"} == probed
    split = probe.resolve_split(ctx)
    assert head.fitted_on["data_hash"] == split.train.content_hash()
    assert head.fitted_on["n_rows"] == len(split.train_rows)
    eval_emb = ctx.image_embeddings(split.eval_rows).astype(np.float64)
    train_emb = ctx.image_embeddings(split.train_rows).astype(np.float64)
    got = head.predict(eval_emb)
    train_labels = subset.labels()[split.train_rows]
    for f in probed:
        y = train_labels[:, FINDINGS.index(f)]
        known = ~np.isnan(y)  # the 100 % subset is every known training label
        want = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=0)).fit(
            train_emb[known], y[known].astype(int)).predict_proba(eval_emb)[:, 1]
        np.testing.assert_allclose(got[:, findings.index(f)], want, rtol=1e-5, atol=1e-8)
        y_eval = subset.labels()[split.eval_rows][:, FINDINGS.index(f)]
        k = ~np.isnan(y_eval)
        assert auroc(y_eval[k], got[k, findings.index(f)]) == pytest.approx(r["findings"][f]["auroc"]["1.0"])


def test_no_run_folder_or_no_prompts_no_head(subset, cache_dir, tmp_path):
    r = probe.run(_ctx(StandInModel(image_size=32), subset, cache_dir), baseline=None)
    assert r["head_file"] is None
    # a run folder but no prompts: the findings head (prompt classifier + probes) cannot be built
    r = probe.run(_ctx(StandInModel(image_size=32), subset, cache_dir, run_dir=tmp_path / "run"), baseline=None)
    assert r["head_file"] is None and not (tmp_path / "run").exists()
