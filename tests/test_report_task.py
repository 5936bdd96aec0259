"""Report generation: label F1 / BLEU / ROUGE arithmetic, and the task on real rows with a stand-in model
(the evidence method, which needs a real model's Grad-CAM, is tested in test_report_evidence.py).

Metric tests use hand-made label matrices (checked against scikit-learn) and the sacrebleu /
rouge-score libraries directly. Task tests run on ~100 real rows of ``shared/data/cxr`` (the covid
rows carry case notes, the others labels only), so references are mixed; the stand-in dual encoder
from test_zero_shot answers the model contract with fixed random projections.
"""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from cxrfm.data.findings import CHEXPERT_14, CHEXPERT_5, FINDINGS
from cxrfm.data.labeler import label_reports
from cxrfm.data.reports import report_body
from cxrfm.tasks import report, report_text
from cxrfm.tasks.embed import FileImages
from cxrfm.tasks.probe import resolve_split
from cxrfm.inference.report import structured_report
from cxrfm.tasks.suite import EvalContext, _jsonable
from cxrfm.tasks.zero_shot import load_prompts

from tests.helpers import StandInModel, subset_manifest

NAN = np.nan


# ---------------------------------------------------------------- metrics
def test_label_f1_hand_made_matches_sklearn():
    gen = np.array([[1, -1, NAN, 0], [1, 1, 0, NAN]], dtype=np.float32)
    ref = np.array([[1, 0, 1, 0], [NAN, 1, -1, NAN]], dtype=np.float32)
    res = report.label_f1(gen, ref, findings=("a", "b", "c", "d"))
    g, r = report.binarize_labels(gen), report.binarize_labels(ref)
    assert g.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]  # uncertain -> 1, blank -> 0
    assert r.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0]]
    assert res["micro"] == pytest.approx(4 / 8) == pytest.approx(f1_score(r.ravel(), g.ravel()))
    # macro over findings with a reference positive (a, b, c); d has none and is left out
    assert res["macro_over"] == ["a", "b", "c"]
    assert res["macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert res["macro"] == pytest.approx(f1_score(r[:, :3], g[:, :3], average="macro", zero_division=0))
    assert res["per_finding"]["c"] == {"f1": 0.0, "tp": 0, "fp": 0, "fn": 2, "support": 2, "n_known": 2}
    assert res["per_finding"]["d"]["f1"] is None

    known = ~np.isnan(ref)  # the row-labels convention: unknown cells do not count
    res_k = report.label_f1(gen, ref, known, findings=("a", "b", "c", "d"))
    assert res_k["micro"] == pytest.approx(4 / 7)  # row 1 / a (a false positive against NaN) drops out
    assert res_k["per_finding"]["a"]["n_known"] == 1


def test_five_finding_f1_uses_the_competition_columns():
    rng = np.random.default_rng(0)
    gen = rng.choice([1.0, 0.0, -1.0, NAN], size=(40, 14)).astype(np.float32)
    ref = rng.choice([1.0, 0.0, -1.0, NAN], size=(40, 14)).astype(np.float32)
    res = report.report_label_f1(gen, ref, patient_ids=np.arange(40) // 2, rng=np.random.default_rng(1), n_boot=300)
    cols = [CHEXPERT_14.index(f) for f in CHEXPERT_5]
    g, r = report.binarize_labels(gen), report.binarize_labels(ref)
    assert res["micro_14"] == pytest.approx(f1_score(r.ravel(), g.ravel()))
    assert res["micro_5"] == pytest.approx(f1_score(r[:, cols].ravel(), g[:, cols].ravel()))
    assert res["macro_5"] == pytest.approx(f1_score(r[:, cols], g[:, cols], average="macro"))
    lo, hi = res["micro_14_ci"]
    assert lo < res["micro_14"] < hi and hi - lo < 0.3
    again = report.report_label_f1(gen, ref, patient_ids=np.arange(40) // 2, rng=np.random.default_rng(1), n_boot=300)
    assert again["micro_14_ci"] == res["micro_14_ci"]


def test_bootstrap_resamples_patients_not_rows():
    # two patients, each all-correct or all-wrong: a patient bootstrap can only give F1 1, 0 or the mix
    gen = np.array([[1.0], [1.0], [0.0], [0.0]])
    ref = np.array([[1.0], [1.0], [1.0], [1.0]])
    ci = report.micro_f1_ci(gen, ref, None, ["p", "p", "q", "q"], np.random.default_rng(0), n_boot=500)
    assert ci[0] == pytest.approx(0.0) and ci[1] == pytest.approx(1.0)
    assert report.micro_f1_ci(gen, ref, None, ["p"] * 4, np.random.default_rng(0)) is None  # one patient


def test_bleu_and_rouge_match_the_libraries():
    hyps = ["No pleural effusion. Mild cardiomegaly.", "The lungs are clear.", "Small left effusion noted."]
    refs = ["Mild cardiomegaly without pleural effusion.", "Lungs are clear bilaterally.", "Large right pneumothorax."]
    assert report.bleu4(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score / 100)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert report.rouge_l(hyps, refs) == pytest.approx(np.mean([scorer.score(r, h)["rougeL"].fmeasure
                                                                for h, r in zip(hyps, refs)]))
    assert report.bleu4(refs, refs) == pytest.approx(1.0) and report.rouge_l(refs, refs) == pytest.approx(1.0)
    assert 0 < report.rouge_l(hyps, refs) < 1


def test_labeler_f1_end_to_end_and_structured_text_cleaning():
    gen = ["Possible pulmonary edema. No pleural effusion.", "Mild cardiomegaly. No pneumothorax."]
    ref = ["FINDINGS: Pulmonary edema and small bilateral pleural effusions.", "IMPRESSION: Cardiomegaly."]
    res = report.label_f1(label_reports(gen), label_reports(ref))
    pf = res["per_finding"]
    assert pf["Edema"]["tp"] == 1  # "possible" is uncertain, counted positive
    assert pf["Pleural Effusion"]["fn"] == 1 and pf["Cardiomegaly"]["tp"] == 1
    # the structured draft's section headers are not findings: "LINES AND TUBES:" is no device
    draft = structured_report({"Edema": 0.8, "Cardiomegaly": 0.1})
    assert "Not assessed" in draft
    raw = label_reports([draft])[0]
    clean = label_reports([report.text_for_scoring(draft)])[0]
    sd = CHEXPERT_14.index("Support Devices")
    assert raw[sd] == 1 and np.isnan(clean[sd])
    assert clean[CHEXPERT_14.index("Edema")] in (1, -1) and clean[CHEXPERT_14.index("Cardiomegaly")] == 0


def test_radeval_is_skipped_with_the_reason(monkeypatch):
    real = report_text.importlib.util.find_spec
    monkeypatch.setattr(report_text.importlib.util, "find_spec",
                        lambda name, *a: None if name == "RadEval" else real(name, *a))
    assert "not installed" in report_text.radeval_status()["skipped"]
    assert "never downloads" in report_text.radeval_status()["skipped"]
    # installed but without cached weights: a skip naming the error, and the offline switch is restored
    fake = types.ModuleType("RadEval")

    def _no_weights(**kw):
        raise OSError("We couldn't connect to the Hub (offline mode)")

    fake.RadEval = _no_weights
    monkeypatch.setitem(sys.modules, "RadEval", fake)
    monkeypatch.setattr(report_text.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    status = report_text.radeval_status()
    assert "do not load offline" in status["skipped"] and "OSError" in status["skipped"]
    assert "HF_HUB_OFFLINE" not in report_text.os.environ


# ---------------------------------------------------------------- the task on real rows
@pytest.fixture(scope="module")
def model():
    return StandInModel()


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path, per_source=25)


def _context(manifest, model):
    return EvalContext(model=model, manifest=manifest, images=FileImages(manifest, model.image_size),
                       prompts=load_prompts(), n_boot=200)


@pytest.fixture(scope="module")
def result(subset, model):
    return report.run(_context(subset, model))


def test_run_result_contract_and_mixed_reference(result, subset):
    for part in (result, result["retrieval"], result["structured"]):
        assert set(part["label_f1"]) >= {"micro_14", "macro_14", "micro_5", "macro_5", "micro_14_ci"}
        assert "bleu4" in part and "rouge_l" in part
    ref = result["reference"]
    assert ref["kind"] == "mixed" and ref["report_text"] > 0 and ref["row_labels"] > 0
    assert ref["report_text"] + ref["row_labels"] == result["n"]
    # the stand-in has no feature maps: no Grad-CAM, so no evidence trail; the headline falls back as fixed in code
    assert "Grad-CAM" in result["evidence"]["skipped"] and report.HEADLINE_METHOD == "evidence"
    assert result["headline_method"] == report.HEADLINE_FALLBACK[0] == "structured"
    assert "fallback fixed in code" in result["headline_rule"] and "Grad-CAM" in result["headline_rule"]
    assert "skipped" in result["evidence_vs_retrieval"]
    assert all("evidence" not in e and "evidence_trail" not in e for e in result["examples"])
    assert result["label_f1"] == result["structured"]["label_f1"]
    # the clinical-error metric scores every pair with reference text, the same function as score-reports
    ce = result["clinical_errors"]
    assert ce == result["structured"]["clinical_errors"] and ce["n"] == result["structured"]["n_text_pairs"] > 0
    assert 0.0 <= ce["mean_score"] <= 1.0 and set(ce) >= {"false_finding", "missed_finding", "wrong_location"}
    assert 0 <= result["bleu4"] <= 1 and 0 <= result["rouge_l"] <= 1
    assert result["retrieval"]["n_text_pairs"] == ref["report_text"]
    lo, hi = result["label_f1"]["micro_14_ci"]
    assert lo <= result["label_f1"]["micro_14"] <= hi
    assert "skipped" in result["radeval"]
    json.dumps(_jsonable(result), allow_nan=False)  # results.json-ready


def test_retrieval_returns_the_nearest_training_report(subset, model):
    ctx = _context(subset, model)
    split = resolve_split(ctx)
    eval_emb = ctx.image_embeddings(split.eval_rows)
    generated, info = report.retrieval_reports(ctx, split, eval_emb)
    texts = subset.reports()
    cand = [i for i in split.train_rows if texts[i] and report_body(texts[i]).strip()]
    assert info["n_candidates"] == len(cand)
    train_emb = ctx.image_embeddings(np.asarray(cand))
    nearest = np.argmax(eval_emb @ train_emb.T, axis=1)  # brute-force cosine (embeddings are unit length)
    assert generated == [report_body(texts[cand[j]]) for j in nearest]
    train_pids = set(subset.table["patient_id"].to_numpy()[split.train_rows])
    assert not train_pids & set(subset.table["patient_id"].to_numpy()[split.eval_rows])


def test_row_labels_fallback_without_report_text(subset, model):
    table = subset.table.drop(columns=["report"])
    from cxrfm.data.schema import Manifest

    no_text = Manifest(table, subset.root, None)
    res = report.run(_context(no_text, model))
    assert res["reference"] == {**res["reference"], "kind": "row_labels", "report_text": 0}
    assert res["bleu4"] is None and res["rouge_l"] is None and "no evaluation row" in res["text_metrics_skipped"]
    assert "pseudo-reports" in res["retrieval"]["corpus"]
    # only the rows' known labels count
    split = resolve_split(_context(no_text, model))
    labels = no_text.labels()[split.eval_rows][:, [FINDINGS.index(f) for f in CHEXPERT_14]]
    rows = ~np.isnan(labels).all(axis=1)
    n_known = {f: int((~np.isnan(labels[rows, j])).sum()) for j, f in enumerate(CHEXPERT_14)}
    assert {f: v["n_known"] for f, v in res["label_f1"]["per_finding"].items()} == n_known
    assert res["n"] == int(rows.sum())
