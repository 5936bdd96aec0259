"""Shortcut audit: attribute probes and zero-shot error clusters, synthetic cases and real data."""
from __future__ import annotations

import numpy as np
import pytest

from cxrfm.tasks import shortcut as sc
from cxrfm.tasks.suite import EvalContext, TaskSkipped
from cxrfm.tasks.zero_shot import load_prompts
from tests.helpers import StandInModel, make_tiny_run, subset_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path, per_source=60)


def _ctx(model, manifest, cache_dir, **kw):
    return EvalContext(model=model, manifest=manifest, n_boot=100, cache_dir=cache_dir, prompts=load_prompts(), **kw)


def test_age_bands():
    assert [sc.age_band(a) for a in (2, 17.9, 18, 45, 79, 90)] == ["0-17", "0-17", "18-39", "40-59", "60-79", "80+"]
    assert sc.age_band(float("nan")) is None and sc.age_band(None) is None


def test_attribute_probe_finds_an_encoded_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    n = 300
    values = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)]
    values[:8] = "rare"  # too few rows: dropped
    values[8:20] = None  # unknown
    groups = np.arange(n) // 2
    code = {"a": 0, "b": 1, "c": 2, "rare": 3}
    emb = rng.normal(size=(n, 8))
    encoded = emb.copy()
    for i, v in enumerate(values):
        if v is not None:
            encoded[i, code[v]] += 3.0
    r = sc.attribute_probe(encoded, values, groups, np.random.default_rng(1), n_boot=100)
    assert r["auroc"] > 0.9 and r["average"] == "macro one-vs-rest"
    assert r["dropped_classes"] == {"rare": 8} and r["n_unknown"] == 12 and r["n"] == n - 20
    assert r["ci"][0] <= r["auroc"] <= r["ci"][1]
    noise = sc.attribute_probe(emb, values, groups, np.random.default_rng(1), n_boot=100)
    assert 0.35 < noise["auroc"] < 0.65
    assert "skipped" in sc.attribute_probe(emb, np.array(["a"] * n, dtype=object), groups, np.random.default_rng(1))


def test_youden_threshold_hand_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.15, 0.2, 0.6, 0.5, 0.7, 0.9])
    # at 0.7: sensitivity 2/3, specificity 1 -> J 0.667; at 0.5: sensitivity 1, specificity 3/4 -> J 0.75
    assert sc.youden_threshold(y, s) == pytest.approx(0.5)


def test_error_clusters_point_at_the_attribute_the_errors_share():
    rng = np.random.default_rng(0)
    n = 400
    site = np.where(np.arange(n) < 200, "site-A", "site-B").astype(object)
    y = rng.integers(0, 2, n).astype(float)
    s = y + rng.normal(0, 0.05, n)  # perfect at site A ...
    flip = (site == "site-B") & (rng.random(n) < 0.3)
    s[flip] = 1 - y[flip]  # ... while site B gets 30 % of its cases wrong
    emb = rng.normal(size=(n, 4)) + np.where(site == "site-B", 4.0, 0.0)[:, None]
    res = sc.error_clusters(emb, s[:, None], y[:, None], ["Pneumonia"], {"source": site}, np.random.default_rng(0))
    f = res["findings"]["Pneumonia"]
    assert f["n_fp"] + f["n_fn"] == int(flip.sum())
    top = f["clusters"][0]["attributes"]["source"]["top"][0]
    assert top["value"] == "site-B" and top["share"] == 1.0 and top["base_rate"] == 0.5 and top["lift"] == 2.0
    warnings = sc.shortcut_warnings({}, res)
    assert warnings and "site-B" in warnings[0]


def test_shortcut_task_on_real_subset(subset, cache_dir):
    r = sc.run(_ctx(StandInModel(image_size=32), subset, cache_dir))
    src = r["attributes"]["source"]
    assert r["n"] == len(subset) and set(src["classes"]) == set(subset.table["source"])
    assert src["auroc"] >= 0.8  # four hospitals' images differ in pixels alone
    assert any(w.startswith("source is predictable from the embedding") for w in r["warnings"])
    assert sum(src["prevalence"].values()) == pytest.approx(1.0)
    assert "0-17" not in r["attributes"]["age_band"].get("classes", {})  # too few known pediatric ages: dropped
    pn = r["error_clusters"]["findings"]["Pneumonia"]
    assert sum(c["n"] for c in pn["clusters"]) == pn["n_fp"] + pn["n_fn"]
    assert all(e in subset.ids for c in pn["clusters"] for e in c["examples"])


def test_shortcut_skips_tiny_or_attribute_free_manifests(subset, cache_dir):
    with pytest.raises(TaskSkipped, match="rows"):
        sc.run(_ctx(StandInModel(image_size=32), subset.subset(np.arange(10)), cache_dir))
    bare = subset.subset(np.flatnonzero(subset.table["source"].to_numpy() == "kermany-pediatric-cxr"))
    with pytest.raises(TaskSkipped, match="no attribute"):  # one source, no view / sex / age
        sc.run(_ctx(StandInModel(image_size=32), bare, cache_dir))


def test_shortcut_with_a_real_tiny_run(tmp_path_factory, cxr_manifest_path, subset, cache_dir):
    from cxrfm import load_model

    model = load_model(make_tiny_run(tmp_path_factory.mktemp("tiny"), cxr_manifest_path, cache_dir))
    r = sc.run(_ctx(model, subset, cache_dir, findings=["Pneumonia"]))
    assert 0 <= r["attributes"]["source"]["auroc"] <= 1 and isinstance(r["warnings"], list)
    assert list(r["error_clusters"]["findings"]) == ["Pneumonia"]
