"""The ``evidence`` method of ``eval --tasks report``: its scores beside retrieval and structured, the paired
difference against retrieval, the no-evidence rule on the evaluation drafts, and the examples' trails.

The model is a copy of the session's tiny run (the task saves its findings head into the run folder, and the
shared one must stay as other modules expect it) and the anatomy model the tiny U-Net (tests/helpers.py);
the data are ~12 real rows per source, of which the patient split holds a quarter out.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from cxrfm.data.findings import CHEXPERT_14, FINDINGS
from tests.helpers import subset_manifest, tiny_anatomy

ZONE = re.compile(r"^(left|right) (upper|middle|lower) zone$")


@pytest.fixture(scope="module")
def run_copy(run_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("report_evidence") / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("heads", "state"))
    return dst


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path, per_source=12)


@pytest.fixture(scope="module")
def evaluated(run_copy, subset, tmp_path_factory, shared_data, one_torch_thread):
    from cxrfm.tasks.suite import evaluate

    anatomy = tiny_anatomy(tmp_path_factory, shared_data)
    out = tmp_path_factory.mktemp("report_eval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRFM_ANATOMY", str(anatomy))
        res = evaluate(run_copy, subset, tasks="report", out=out, n_boot=200, progress=False)
    return res["tasks"]["report"], out


def test_evidence_method_is_scored_beside_retrieval_with_the_paired_difference(evaluated):
    r, _ = evaluated
    assert "skipped" not in r["evidence"], r["evidence"]
    for m in ("retrieval", "structured", "evidence"):
        lf = r[m]["label_f1"]
        assert {"micro_14", "micro_5", "macro_14", "macro_5", "micro_14_ci", "micro_5_ci"} <= set(lf), m
        assert {"bleu4", "rouge_l", "clinical_errors", "n_text_pairs"} <= set(r[m]), m
        assert r[m]["n_text_pairs"] == r["reference"]["report_text"] > 0
        ce = r[m]["clinical_errors"]
        assert ce["n"] + ce.get("n_unscored", 0) == r[m]["n_text_pairs"]
        pf = lf["per_finding"]
        for f in pf:  # a finding stated on every row is a positive on every counted cell
            assert (f in r[m]["stated_on_every_row"]) <= (pf[f]["tp"] + pf[f]["fp"] == pf[f]["n_known"]), (m, f)
        assert set(r[m]["stated_on_every_row"]) <= set(CHEXPERT_14)
    assert r["headline_method"] == "evidence" and "fixed before scoring" in r["headline_rule"]
    assert r["label_f1"] == r["evidence"]["label_f1"] and r["clinical_errors"] == r["evidence"]["clinical_errors"]
    d = r["evidence_vs_retrieval"]
    for k in ("micro_14", "micro_5"):
        assert d[k]["a"] == pytest.approx(r["evidence"]["label_f1"][k])
        assert d[k]["b"] == pytest.approx(r["retrieval"]["label_f1"][k])
        assert d[k]["difference"] == pytest.approx(d[k]["a"] - d[k]["b"])
        lo, hi = d[k]["ci"]
        assert -1 <= lo <= hi <= 1
    assert d["meets_goal"] == (d["micro_14"]["difference"] >= 0.05)
    ev = r["evidence"]
    assert "CXRFM_ANATOMY" in ev["anatomy"] and ev["concepts"].startswith("none")
    assert ev["counts"]["images"] == r["n"]
    assert ev["counts"]["stated_present"] + ev["counts"]["downgraded"] == ev["counts"]["drafted_present"]


def test_paired_difference_is_zero_for_identical_drafts_and_pairs_the_draws():
    from cxrfm.tasks.report_evidence import paired_f1_difference

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, size=(30, 4))
    a = ref.copy()
    a[:10] = 1 - a[:10]  # A wrong on the first 10 rows
    known = np.ones_like(ref, dtype=bool)
    pids = np.arange(30) // 3
    same = paired_f1_difference(a, a, ref, known, pids, np.random.default_rng(1), n_boot=200)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]  # paired: every draw gives 0
    d = paired_f1_difference(ref, a, ref, known, pids, np.random.default_rng(1), n_boot=500)
    from sklearn.metrics import f1_score

    assert d["a"] == pytest.approx(1.0) and d["b"] == pytest.approx(f1_score(ref.ravel(), a.ravel()))
    assert d["ci"][0] > 0 and d["ci"][0] <= d["difference"] <= d["ci"][1]


def test_a_finding_without_evidence_is_not_stated_present_in_the_eval_drafts(run_copy, subset, one_torch_thread):
    """Every finding pushed to 0.9 with no anatomy, concepts or neighbours: nothing supports any of them, so
    each is drafted present and written as possible; the labeler reads none of them back as present."""
    from cxrfm.data.labeler import label_reports
    from cxrfm.inference.evidence import EvidenceBuilder
    from cxrfm.inference.heads import FindingsHead
    from cxrfm.models.dual import load_model
    from cxrfm.tasks.embed import FileImages
    from cxrfm.tasks.report import text_for_scoring
    from cxrfm.tasks.report_evidence import evidence_reports
    from cxrfm.tasks.suite import EvalContext
    from cxrfm.tasks.zero_shot import load_prompts

    model = load_model(run_copy)
    prompts = load_prompts()
    ctx = EvalContext(model=model, manifest=subset, images=FileImages(subset, model.image_size), prompts=prompts)
    rows = np.arange(6)
    emb = ctx.image_embeddings(rows)
    findings = [f for f in FINDINGS if f in prompts]
    head = FindingsHead.zero_shot(model, findings, prompts, ctx.logit_scale)
    probs = np.full((len(rows), len(head.findings)), 0.9)
    probs[:, head.findings.index("No Finding")] = 0.05
    bare = EvidenceBuilder(model, head, anatomy=None, anatomy_note="no anatomy model in this test")
    texts, trails, info = evidence_reports(ctx, subset, rows, emb, head, probs, index=None, builder=bare)
    assert info["counts"]["drafted_present"] == len(rows) * (len(head.findings) - 1)
    assert info["counts"]["stated_present"] == 0 and info["counts"]["downgraded"] == info["counts"]["drafted_present"]
    read = label_reports([text_for_scoring(t) for t in texts])
    stated = [j for j, f in enumerate(CHEXPERT_14) if f != "No Finding"]
    assert not (read[:, stated] == 1).any(), texts[0]
    assert (read[:, CHEXPERT_14.index("Edema")] == -1).all()  # written as possible, not dropped
    for entries in trails:
        for e in entries:
            if e["finding"] != "No Finding":
                assert e["status"] == "uncertain" and "no supporting evidence" in e["downgraded"]
                assert "not stated as present" in e["trace"]


def test_examples_carry_their_evidence_trail_beside_the_reference_in_the_page(evaluated):
    import html as htmllib

    r, out = evaluated
    ex = r["examples"]
    assert len(ex) == 3 and all(e["reference_kind"] == "report_text" and e["reference"] for e in ex)
    for e in ex:
        assert e["evidence"] and "IMPRESSION:" in e["evidence"] and "retrieval" in e
        for t in e["evidence_trail"]:
            assert t["status"] in ("present", "uncertain") and t["trace"].count(" -> ") == 2
            assert t["status"] != "present" or t["supported"]
            assert t["zone"] is None or ZONE.match(t["zone"])
    trails = [t for e in ex for t in e["evidence_trail"]]
    assert trails, "no example states any finding: nothing to show the trail of"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "evidence trail" in page and "Evidence - retrieval" in page and "clinical-error score" in page
    assert htmllib.escape(trails[0]["trace"], quote=True) in page
    assert htmllib.escape(ex[0]["reference"].splitlines()[0], quote=True) in page
