"""Zero-shot classification on a real 200-row subset, with a stand-in dual encoder.

The stand-in (:class:`StandInModel`) answers the model contract exactly (``image_size``,
``encode_image``, ``encode_text``) with fixed random projections, so these tests check the task's
arithmetic, not a trained model. It lives in tests/helpers.py with the other shared helpers.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrfm.data.findings import FINDINGS
from cxrfm.data.schema import Manifest
from cxrfm.errors import ConfigError
from cxrfm.tasks.embed import FileImages, embed_texts
from cxrfm.tasks.suite import EvalContext, evaluate
from tests.helpers import StandInModel, subset_manifest
from cxrfm.tasks.zero_shot import (
    build_zero_shot_classifier, load_prompts, zero_shot_auroc, zero_shot_scores,
)


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path)


@pytest.fixture(scope="module")
def model():
    return StandInModel()


def test_classifier_is_renormalised_prompt_mean(model):
    prompts = load_prompts()
    cls = build_zero_shot_classifier(model, ["Cardiomegaly", "Pneumonia"], prompts)
    assert cls.shape == (2, 2, 32)
    assert torch.allclose(cls.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    pos = torch.from_numpy(embed_texts(model, prompts["Pneumonia"]["positive"])).mean(0)
    assert torch.allclose(cls[1, 0], pos / pos.norm(), atol=1e-5)


def test_scores_are_softmax_over_pos_neg(model):
    rng = np.random.default_rng(0)
    emb = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(5, 32)).astype(np.float32)), dim=-1)
    cls = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, 2, 32)).astype(np.float32)), dim=-1)
    got = zero_shot_scores(emb, cls, logit_scale=10.0)
    sims = np.einsum("nd,fkd->nfk", emb.numpy(), cls.numpy()) * 10.0
    want = np.exp(sims[..., 0]) / np.exp(sims).sum(-1)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bundled_prompts_cover_every_finding():
    prompts = load_prompts()
    assert set(prompts) == set(FINDINGS)
    assert all(p["positive"] and p["negative"] for p in prompts.values())


def test_zero_shot_auroc_matches_sklearn_per_finding_and_source(subset, model):
    labels = subset.labels()
    scored = ["Pneumonia", "COVID-19", "No Finding"]
    cols = [FINDINGS.index(f) for f in scored]
    images = FileImages(subset, model.image_size)
    ctx = EvalContext(model=model, manifest=subset, images=images)
    emb = ctx.image_embeddings()
    scores = zero_shot_scores(emb, build_zero_shot_classifier(model, scored, load_prompts()))
    tab = subset.table
    res = zero_shot_auroc(scores, labels[:, cols], tab["patient_id"], tab["source"], scored,
                          rng=np.random.default_rng(0), n_boot=200)
    for j, f in enumerate(scored):
        y = labels[:, cols[j]]
        known = ~np.isnan(y)
        r = res["findings"][f]
        assert r["auroc"] == pytest.approx(roc_auc_score(y[known], scores[known, j]))
        assert r["n_pos"] == int((y == 1).sum()) and r["n_neg"] == int((y == 0).sum())
        assert r["ci"][0] <= r["auroc"] <= r["ci"][1]
        for src, a in r["per_source"].items():
            m = known & (tab["source"].to_numpy() == src)
            assert a == pytest.approx(roc_auc_score(y[m], scores[m, j]))
            assert (y[m] == 1).sum() >= 10 and (y[m] == 0).sum() >= 10
        # source-only predictor: positive rate of the row's source
        rate = pd.Series(y[known]).groupby(tab["source"].to_numpy()[known]).transform("mean").to_numpy()
        assert r["source_only_auroc"] == pytest.approx(roc_auc_score(y[known], rate))
    # COVID-19 is almost fully explained by source in this set: the shortcut must show
    assert res["findings"]["COVID-19"]["source_only_auroc"] > 0.9
    assert res["mean_auroc"] == pytest.approx(np.mean([res["findings"][f]["auroc"] for f in scored]))


def test_min_counts_skip_with_reason():
    y = np.array([[1.0], [0.0], [np.nan]] * 5)  # 5 pos, 5 neg
    res = zero_shot_auroc(np.random.default_rng(0).random((15, 1)), y, np.arange(15), ["a"] * 15, ["Edema"],
                          rng=np.random.default_rng(0), n_boot=10)
    assert res["findings"] == {} and "5 known positives" in res["skipped_findings"]["Edema"]
    assert res["mean_auroc"] is None


def test_run_skips_findings_without_prompts_and_errors_when_explicit(subset, model, tmp_path):
    prompts = {k: v for k, v in load_prompts().items() if k != "COVID-19"}
    images = FileImages(subset, model.image_size)
    res = evaluate(model, subset, tasks="zeroshot", prompts=prompts, n_boot=50, progress=False, images=images)
    zs = res["tasks"]["zeroshot"]
    assert "COVID-19" not in zs["findings"] and "no prompts" in zs["skipped_findings"]["COVID-19"]
    assert "Pneumonia" in zs["findings"]
    assert "Fracture" in zs["skipped_findings"]  # no known positives in the data
    with pytest.raises(ConfigError, match="no prompts for COVID-19"):
        evaluate(model, subset, tasks="zeroshot", prompts=prompts, findings=["COVID-19"], n_boot=50,
                 progress=False, images=images)
    # a prompts file that covers none of the scorable findings
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"Fracture": {"positive": ["rib fracture."], "negative": ["no fracture."]}}))
    with pytest.raises(ConfigError, match="none of the findings"):
        evaluate(model, subset, tasks="zeroshot", prompts=p, n_boot=50, progress=False, images=images)
    p.write_text(json.dumps({"Cardiomegly": {"positive": ["x"], "negative": ["y"]}}))
    with pytest.raises(ConfigError, match="not a canonical finding"):
        load_prompts(p)


def test_unseen_source_manifest_with_finding_columns(tmp_path, shared_data, model):
    """A user's own manifest: unknown source names, canonical finding columns, no reports."""
    base = Manifest.load(shared_data / "cxr" / "manifest.csv").table.iloc[:60]
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "image": [str(shared_data / "cxr" / p) for p in base["image"]],
        "patient_id": [f"h{i // 2}" for i in range(60)],
        "source": ["hospital-a"] * 30 + ["hospital-b"] * 30,
        "Cardiomegaly": rng.integers(0, 2, 60).astype(str),
    })
    m = Manifest.from_table(df, tmp_path)
    res = evaluate(model, m, out=tmp_path / "ev", n_boot=50, progress=False,
                   images=FileImages(m, model.image_size))
    card = res["tasks"]["zeroshot"]["findings"]["Cardiomegaly"]
    assert set(card["per_source"]) == {"hospital-a", "hospital-b"}
    assert card["within_source_auroc"] == pytest.approx(np.mean(list(card["per_source"].values())))
    assert "no row has report text" in res["tasks"]["retrieval"]["skipped"]
    on_disk = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert on_disk["tasks"]["zeroshot"]["findings"]["Cardiomegaly"]["auroc"] == pytest.approx(card["auroc"])


def test_held_out_table_by_default_and_the_template_matched_one_beside_it(subset, model):
    from cxrfm.tasks.zero_shot import TEMPLATE_PROMPTS_FILE, template_matched_line

    images = FileImages(subset, model.image_size)
    res = evaluate(model, subset, tasks="zeroshot", n_boot=50, progress=False, images=images)
    zs = res["tasks"]["zeroshot"]
    assert zs["prompt_set"].startswith("held-out") and zs["prompts"].startswith("builtin (zeroshot.json)")
    tm = zs["template_matched"]
    assert tm["label"].startswith("template-matched") and tm["prompts"] == TEMPLATE_PROMPTS_FILE.name
    assert set(tm["findings"]) == set(zs["findings"]) and tm["n_findings"] == len(tm["findings"])
    # each table is scored with its own prompt set
    labels = subset.labels()
    ctx = EvalContext(model=model, manifest=subset, images=images)
    for table, prompts in ((zs, load_prompts()), (tm, load_prompts(TEMPLATE_PROMPTS_FILE))):
        f = "Pneumonia"
        y = labels[:, FINDINGS.index(f)]
        known = ~np.isnan(y)
        s = zero_shot_scores(ctx.image_embeddings(), build_zero_shot_classifier(model, [f], prompts))[:, 0]
        assert table["findings"][f]["auroc"] == pytest.approx(roc_auc_score(y[known], s[known]))
    assert zs["findings"]["Pneumonia"]["auroc"] != pytest.approx(tm["findings"]["Pneumonia"]["auroc"])
    line = template_matched_line(zs)
    assert "template-matched" in line and "not zero-shot" in line and f"over {tm['n_findings']} finding" in line
    # user-given prompts are not called held-out
    given = evaluate(model, subset, tasks="zeroshot", prompts=load_prompts(), n_boot=50, progress=False,
                     images=images)["tasks"]["zeroshot"]
    assert not given["prompt_set"].startswith("held-out")
