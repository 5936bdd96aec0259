"""Report generation without a language model; three generators scored the same way on the same rows:

* ``retrieval``: the report of the nearest *training* image by cosine similarity of image embeddings
  (exact search, FAISS ``IndexFlatIP``), the retrieval baseline of X-REM (Jeong et al., MIDL 2023) and
  CXR-RePaiR (Endo et al., ML4H 2021). Training rows without text contribute a template pseudo-report
  of their labels (:func:`cxrfm.data.pseudo_reports.template_report`) only when no training row has text.
* ``structured``: the findings head's probabilities (CheXzero prompts, Platt-scaled on the training rows
  where a finding has enough known labels, else the raw softmax; a probe where one was trained) turned
  into the organ-system draft of :func:`cxrfm.inference.report.structured_report`.
* ``evidence`` (the headline, fixed in code before scoring): the same probabilities drafted with each
  finding's evidence trail (:mod:`cxrfm.tasks.report_evidence`); a finding drafted present without support
  is written as possible. ``evidence_vs_retrieval``: the paired patient-bootstrap difference in micro-F1.

Metrics follow the report-generation literature (Miura et al., NAACL 2021; RadEval, Xu et al. 2025):

* clinical label F1 in the F1-CheXbert convention: the labeler (:mod:`cxrfm.data.labeler`, rule-based,
  standing in for CheXbert) labels generated and reference text; uncertain (-1) counts as positive,
  not mentioned (blank) as negative; micro and macro F1 over the 14 CheXpert findings and over the 5
  competition findings (:data:`~cxrfm.data.findings.CHEXPERT_5`). Macro F1 averages the findings with
  at least one reference positive (a finding nobody has has no recall to average).
* BLEU-4 (Papineni et al. 2002, sacrebleu ``corpus_bleu``, lower-cased, as a fraction in [0, 1]),
  ROUGE-L (Lin 2004, ``rouge-score``, stemmed, mean F-measure) on report bodies (findings + impression)
  and the clinical-error score (:mod:`cxrfm.data.report_errors`, ``clinical_errors``).

Reference text is scarce in open CXR data, so a row without report text but with source labels is
scored against those labels (1 / 0 known, NaN left out) instead: ``reference`` in the result says how
many rows used which. Lexical metrics need text references and are null with the reason otherwise.
The micro-F1 interval resamples patients (cluster bootstrap, as :func:`cxrfm.metrics.bootstrap_ci`).
RadEval's model-based metrics (F1-CheXbert, RadGraph F1, GREEN) run only when the ``RadEval``
package imports and its weights are already on disk: nothing is downloaded.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..data.findings import CHEXPERT_14, CHEXPERT_5, FINDINGS
from ..data.report_errors import score_reports, summarize_scores
from ..data.reports import report_body
from .report_evidence import _train_embeddings, training_corpus  # noqa: F401 - re-exported
from .report_text import bleu4, radeval_scores, radeval_status, rouge_l  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from .suite import EvalContext

METHODS: tuple[str, ...] = ("retrieval", "structured", "evidence")
# Fixed before scoring: picking the better method on the evaluation rows would be optimistic. When the
# headline cannot run (a model without Grad-CAM), the first of HEADLINE_FALLBACK that ran is the headline.
HEADLINE_METHOD = "evidence"
HEADLINE_FALLBACK: tuple[str, ...] = ("structured", "retrieval")
N_EXAMPLES = 3

_IDX14 = [FINDINGS.index(f) for f in CHEXPERT_14]  # CHEXPERT_14 columns of a FINDINGS-ordered label matrix
_IDX5 = [CHEXPERT_14.index(f) for f in CHEXPERT_5]  # CHEXPERT_5 columns of a CHEXPERT_14-ordered matrix
# Lines of the structured draft that carry no clinical statement but mention finding words
# (a "LINES AND TUBES:" header reads as a device mention to a labeler).
_HEADER_LINE = re.compile(r"^\s*[A-Z][A-Z ,/&-]*:\s*$")
_NON_FINDING_LINE = re.compile(r"^\s*(not assessed\.?|draft generated automatically.*)\s*$", re.IGNORECASE)


# ---------------------------------------------------------------- label F1 (F1-CheXbert convention)
def binarize_labels(values: np.ndarray) -> np.ndarray:
    """Labeler output (1 / 0 / -1 / NaN) to 1 / 0: uncertain (-1) is positive, blank (NaN) negative."""
    v = np.asarray(values, dtype=np.float32)
    return ((v == 1) | (v == -1)).astype(np.int64)


def _f1(tp: float, fp: float, fn: float) -> float | None:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else None


def label_f1(generated: np.ndarray, reference: np.ndarray, known: np.ndarray | None = None,
             findings: Sequence[str] = CHEXPERT_14) -> dict:
    """Micro / macro F1 of generated against reference labels, both (N, F) of 1 / 0 / -1 / NaN.

    Both sides are binarised by :func:`binarize_labels`. ``known`` (N, F) bool marks the cells that
    count (default: all; pass ``~isnan(row_labels)`` when the reference is a row's source labels).
    Micro F1 pools true/false positives over all counted cells; macro F1 averages per-finding F1 over
    the findings with at least one reference positive (``macro_over`` lists them). None = undefined.
    """
    pred = binarize_labels(generated)
    ref = binarize_labels(reference)
    if pred.shape != ref.shape or pred.shape[1] != len(findings):
        raise ValueError(f"label_f1: generated {pred.shape}, reference {ref.shape} and {len(findings)} findings "
                         f"do not line up")
    mask = np.ones(pred.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    tp = ((pred == 1) & (ref == 1) & mask).sum(axis=0)
    fp = ((pred == 1) & (ref == 0) & mask).sum(axis=0)
    fn = ((pred == 0) & (ref == 1) & mask).sum(axis=0)
    per_finding = {f: {"f1": _f1(tp[j], fp[j], fn[j]), "tp": int(tp[j]), "fp": int(fp[j]), "fn": int(fn[j]),
                       "support": int(tp[j] + fn[j]), "n_known": int(mask[:, j].sum())}
                   for j, f in enumerate(findings)}
    macro_over = [f for f, r in per_finding.items() if r["support"] > 0]
    return {
        "micro": _f1(tp.sum(), fp.sum(), fn.sum()),
        "macro": float(np.mean([per_finding[f]["f1"] for f in macro_over])) if macro_over else None,
        "macro_over": macro_over,
        "per_finding": per_finding,
    }


def micro_f1_ci(generated: np.ndarray, reference: np.ndarray, known: np.ndarray | None, patient_ids: Sequence,
                rng: np.random.Generator, n_boot: int = 1000, alpha: float = 0.05) -> list[float] | None:
    """Percentile CI of micro F1 resampling patients with replacement (all rows of a drawn patient kept).

    Every resample is scored at once from per-patient counts of true / false positives and false
    negatives. None when there are no positives at all (F1 undefined) or fewer than two patients.
    """
    import pandas as pd

    pred, ref = binarize_labels(generated), binarize_labels(reference)
    mask = np.ones(pred.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    counts = np.stack([((pred == 1) & (ref == 1) & mask).sum(1), ((pred == 1) & (ref == 0) & mask).sum(1),
                       ((pred == 0) & (ref == 1) & mask).sum(1)], axis=1).astype(np.float64)  # (N, 3)
    inv, uniques = pd.factorize(pd.Series([str(p) for p in patient_ids]))
    n_groups = len(uniques)
    if n_groups < 2 or counts[:, [0, 2]].sum() + counts[:, 1].sum() == 0:
        return None
    per_patient = np.zeros((n_groups, 3))
    np.add.at(per_patient, inv, counts)  # (G, 3)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))  # (B, G)
    weights = np.stack([np.bincount(d, minlength=n_groups) for d in draws])  # (B, G)
    tp, fp, fn = (weights @ per_patient).T  # each (B,)
    denom = 2 * tp + fp + fn
    ok = denom > 0
    if not ok.any():
        return None
    values = 2 * tp[ok] / denom[ok]
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def report_label_f1(generated: np.ndarray, reference: np.ndarray, known: np.ndarray | None = None,
                    patient_ids: Sequence | None = None, rng: np.random.Generator | None = None,
                    n_boot: int = 1000) -> dict:
    """The ``label_f1`` block: micro/macro F1 over CHEXPERT_14 and CHEXPERT_5, with patient-bootstrap
    CIs of the micro F1s when ``patient_ids`` and ``rng`` are given. Inputs are (N, 14) in CHEXPERT_14 order."""
    generated, reference = np.asarray(generated), np.asarray(reference)
    known = np.ones(generated.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    f14 = label_f1(generated, reference, known, CHEXPERT_14)
    f5 = label_f1(generated[:, _IDX5], reference[:, _IDX5], known[:, _IDX5], CHEXPERT_5)
    out = {"micro_14": f14["micro"], "macro_14": f14["macro"], "micro_5": f5["micro"], "macro_5": f5["macro"],
           "macro_14_over": f14["macro_over"], "macro_5_over": f5["macro_over"],
           "per_finding": f14["per_finding"]}
    if patient_ids is not None and rng is not None:
        out["micro_14_ci"] = micro_f1_ci(generated, reference, known, patient_ids, rng, n_boot)
        out["micro_5_ci"] = micro_f1_ci(generated[:, _IDX5], reference[:, _IDX5], known[:, _IDX5], patient_ids,
                                        rng, n_boot)
    return out


# ---------------------------------------------------------------- lexical metrics
def text_for_scoring(report: str) -> str:
    """The clinical statements of a report: findings + impression, without structural lines.

    Section headers, "Not assessed." and the draft disclaimer of the structured report are dropped so
    that a header such as "LINES AND TUBES:" is not read as a device mention.
    """
    kept = [ln.strip() for ln in str(report).splitlines()
            if ln.strip() and not _HEADER_LINE.match(ln) and not _NON_FINDING_LINE.match(ln)]
    text = "\n".join(kept)
    return report_body(text) if text else ""


def _unique_label(texts: Sequence[str]) -> np.ndarray:
    """Labeler output (N, 14) for ``texts``, labelling each distinct text once."""
    from ..data.labeler import label_reports

    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return np.full((0, len(CHEXPERT_14)), np.nan, dtype=np.float32)
    labels = label_reports(distinct)
    where = {t: i for i, t in enumerate(distinct)}
    return labels[[where[t] for t in texts]]


# ---------------------------------------------------------------- the suite task
def _score_method(generated: list[str], ref_labels: np.ndarray, ref_known: np.ndarray, ref_texts: list[str | None],
                  pids: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[dict, np.ndarray]:
    """(the method's scores, its labeler output (N, 14) on the drafts)."""
    scored = [text_for_scoring(g) for g in generated]
    gen_labels = _unique_label(scored)
    out: dict = {"label_f1": report_label_f1(gen_labels, ref_labels, ref_known, pids, rng, n_boot)}
    # a finding stated (present or possible) on every row earns its recall without looking at the image
    pos = binarize_labels(gen_labels)
    out["stated_on_every_row"] = [f for j, f in enumerate(CHEXPERT_14) if len(pos) > 1 and pos[:, j].all()]
    pairs = [(h, r) for h, r in zip(scored, ref_texts) if r]
    if pairs:
        hyps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        out.update({"bleu4": bleu4(hyps, refs), "rouge_l": rouge_l(hyps, refs), "n_text_pairs": len(pairs),
                    "clinical_errors": summarize_scores(score_reports(hyps, refs))})
    else:
        out.update({"bleu4": None, "rouge_l": None, "n_text_pairs": 0, "clinical_errors": None,
                    "text_metrics_skipped": "no evaluation row has reference report text (BLEU/ROUGE compare texts; "
                                            "label F1 used the rows' source labels)"})
    return out, gen_labels


def _references(manifest, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
    """Per eval row: reference labels (R, 14), the counted cells, reference body text or None, and its kind."""
    from .embed import report_texts

    texts = report_texts(manifest)
    bodies = [report_body(texts[i]) if texts[i] else "" for i in rows]
    row_labels = manifest.labels()[rows][:, _IDX14]  # (R, 14) 1 / 0 / NaN
    text_rows = [k for k, b in enumerate(bodies) if b.strip()]
    ref = row_labels.copy()
    known = ~np.isnan(row_labels)
    kinds = ["row_labels"] * len(rows)
    if text_rows:
        labelled = _unique_label([bodies[k] for k in text_rows])
        ref[text_rows] = labelled
        known[text_rows] = True  # blank = negative in the F1-CheXbert convention
        for k in text_rows:
            kinds[k] = "report_text"
    ref_texts = [b if b.strip() else None for b in bodies]
    return ref, known, ref_texts, kinds


def retrieval_reports(context: "EvalContext", split, eval_emb: np.ndarray, corpus=None) -> tuple[list[str], dict]:
    """The nearest training report of each eval image, and how the corpus was built (``corpus``: the
    result of :func:`training_corpus`, built here when None)."""
    index, texts, how = corpus if corpus is not None else training_corpus(context, split)
    sims, nn = index.search(eval_emb, k=1)  # (M, 1) each
    generated = [texts[int(j)] for j in nn[:, 0]]
    info = {**how, "mean_similarity": float(np.mean(sims[:, 0])),
            "index": "faiss.IndexFlatIP on L2-normalised image embeddings (exact cosine)"}
    return generated, info


def fit_head(context: "EvalContext", split) -> tuple[object, dict]:
    """The findings head ``serve`` answers with (:mod:`cxrfm.inference.heads`), fitted on the training part.

    The head's zero-shot scores are Platt-calibrated on the training part's known labels; with a run
    folder, the fitted head is saved there so that ``serve`` answers with exactly what was evaluated."""
    from ..inference.heads import MIN_CALIBRATION_LABELS, FindingsHead, load_findings_head
    from ..inference.report import DEFAULT_THRESHOLDS
    from .suite import TaskSkipped

    findings = [f for f in FINDINGS if f in context.prompts]
    if not findings:
        raise TaskSkipped(f"no finding has prompts in {context.prompts_source}")
    head = FindingsHead.zero_shot(context.model, findings, context.prompts, context.logit_scale)
    train_hash = split.train.content_hash()
    if context.run_dir is not None:  # keep the probe the probe task fitted on this same training part
        saved, _ = load_findings_head(context.run_dir, context.model, findings, context.prompts, context.logit_scale)
        if saved.probe and saved.fitted_on.get("data_hash") == train_hash:
            head.probe = dict(saved.probe)
    cols = [FINDINGS.index(f) for f in findings]
    train_labels = split.train.labels()[split.train_rows][:, cols]  # (N, F)
    labelled = np.flatnonzero(~np.isnan(train_labels).all(axis=1))
    if len(labelled):
        head.fit_calibration(_train_embeddings(context, split, labelled), train_labels[labelled])
    head.fitted_on = {"data_hash": train_hash, "n_rows": int(len(labelled)),
                      "split": split.describe()}
    info = {"findings": findings, "thresholds": dict(DEFAULT_THRESHOLDS), "head": head.describe(),
            "calibrated": sorted(head.calibration), "uncalibrated": [f for f in findings if f not in head.calibration],
            "calibration": f"Platt scaling on the training rows' known labels (>= {MIN_CALIBRATION_LABELS} "
                           f"positives and negatives per finding); others keep the raw prompt softmax"}
    if context.run_dir is not None:
        info["head_file"] = str(head.save(context.run_dir))
    return head, info


def structured_reports(context: "EvalContext", split, eval_emb: np.ndarray, fitted=None) -> tuple[list[str], dict]:
    """A structured draft per eval image from the findings head (``fitted``: :func:`fit_head`'s result),
    with the draft function ``serve`` uses (:func:`cxrfm.inference.report.structured_report`)."""
    from ..inference.report import structured_report

    head, info = fitted if fitted is not None else fit_head(context, split)
    probs = head.predict(eval_emb)  # (M, F)
    return [structured_report(dict(zip(head.findings, row))) for row in probs], info


def generate_drafts(context: "EvalContext", split, manifest, rows: np.ndarray, eval_emb: np.ndarray,
                    out: dict) -> tuple[dict[str, list[str]], list[list[dict]] | None]:
    """Each method's drafts of the report task (method -> texts; a method that cannot run is recorded as
    skipped in ``out``), and the evidence trails per row (None when the evidence method did not run)."""
    from .report_evidence import evidence_reports
    from .suite import TaskSkipped

    generated: dict[str, list[str]] = {}
    trails = None
    corpus = fitted = None
    try:
        corpus = training_corpus(context, split)
        generated["retrieval"], out["retrieval"] = retrieval_reports(context, split, eval_emb, corpus)
    except TaskSkipped as e:
        out["retrieval"] = {"skipped": str(e)}
    try:
        fitted = fit_head(context, split)
        generated["structured"], out["structured"] = structured_reports(context, split, eval_emb, fitted)
    except TaskSkipped as e:
        out["structured"] = {"skipped": str(e)}
    if fitted is None:
        out["evidence"] = {"skipped": f"no findings head: {out['structured']['skipped']}"}
        return generated, trails
    try:
        head = fitted[0]
        texts, trails, info = evidence_reports(context, manifest, rows, eval_emb, head, head.predict(eval_emb),
                                               index=corpus[0] if corpus is not None else None)
        generated["evidence"], out["evidence"] = texts, {**info, "head": fitted[1]["head"]}
    except TaskSkipped as e:
        out["evidence"] = {"skipped": str(e)}
        trails = None
    return generated, trails


def run(context: "EvalContext") -> dict:
    """The ``report`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .report_evidence import evidence_vs_retrieval, make_examples
    from .split import resolve_split
    from .suite import TaskSkipped

    split = resolve_split(context)
    manifest = context.manifest
    texts = manifest.reports()
    labels14 = manifest.labels()[:, _IDX14]
    has_ref = np.asarray([bool(texts[i] and report_body(texts[i]).strip()) or not np.isnan(labels14[i]).all()
                          for i in split.eval_rows])
    rows = split.eval_rows[has_ref]
    if not len(rows):
        raise TaskSkipped(f"no evaluation row has report text or a known CheXpert finding to compare with "
                          f"({split.how}; {len(split.eval_rows)} eval rows)")
    ref_labels, ref_known, ref_texts, kinds = _references(manifest, rows)
    pids = manifest.table["patient_id"].to_numpy()[rows]
    eval_emb = context.image_embeddings(rows)  # (M, D)
    rng = context.rng("report")
    n_text = kinds.count("report_text")
    n_lab = kinds.count("row_labels")
    reference = {"kind": "report_text" if n_lab == 0 else "row_labels" if n_text == 0 else "mixed",
                 "report_text": n_text, "row_labels": n_lab,
                 "note": "report_text: the labeler on the row's report body (blank = negative); row_labels: the "
                         "source's known labels (unknown findings left out)"}
    out: dict = {"split": split.describe(), "n": int(len(rows)), "n_patients": int(len(set(pids))),
                 "reference": reference, "n_boot": context.n_boot}
    generated, trails = generate_drafts(context, split, manifest, rows, eval_emb, out)
    if not generated:
        raise TaskSkipped("no generator could run: " + "; ".join(f"{m}: {out[m]['skipped']}" for m in METHODS))
    labels: dict[str, np.ndarray] = {}
    for name in METHODS:  # scored in a fixed order, so each method's bootstrap draws do not depend on the others'
        if name in generated:
            scores, labels[name] = _score_method(generated[name], ref_labels, ref_known, ref_texts, pids, rng,
                                                 context.n_boot)
            out[name] = {**scores, **out[name]}
    head = next(m for m in (HEADLINE_METHOD, *HEADLINE_FALLBACK) if m in generated)
    out["headline_method"] = head
    out["headline_rule"] = (f"{HEADLINE_METHOD} is the headline, fixed before scoring (choosing the better method on "
                            f"the evaluation rows would be optimistic)" if head == HEADLINE_METHOD else
                            f"{head}: the fallback fixed in code, because {HEADLINE_METHOD} did not run "
                            f"({out[HEADLINE_METHOD].get('skipped')})")
    for key in ("label_f1", "bleu4", "rouge_l", "clinical_errors"):
        out[key] = out[head][key]
    if "text_metrics_skipped" in out[head]:
        out["text_metrics_skipped"] = out[head]["text_metrics_skipped"]
    if "evidence" in labels and "retrieval" in labels:
        out["evidence_vs_retrieval"] = evidence_vs_retrieval(
            {m: binarize_labels(labels[m]) for m in ("evidence", "retrieval")}, binarize_labels(ref_labels),
            ref_known, pids, context.rng("report/paired"), context.n_boot, _IDX5)
    else:
        out["evidence_vs_retrieval"] = {"skipped": "needs both the evidence and the retrieval drafts"}
    pairs = [(g, r) for g, r in zip(generated.get(head, []), ref_texts) if r]
    if pairs:
        out["radeval"] = radeval_scores([text_for_scoring(g) for g, _ in pairs], [r for _, r in pairs])
    else:
        status = radeval_status()
        out["radeval"] = status if "skipped" in status else {"skipped": "no evaluation row has reference report text"}
    out["examples"] = make_examples(manifest, rows, kinds, ref_texts, generated, trails, N_EXAMPLES)
    return out


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="report", run=run, title="Report generation", needs=(),
    result_keys=("n", "reference", "headline_method", "label_f1", "evidence_vs_retrieval"),
    console="cxrfm.reporting.sections.report:console", html="cxrfm.reporting.sections.report:html",
    default=False, order=50, summary="draft reports (nearest training report, structured, structured with an evidence trail) "
            "scored by label F1, and BLEU/ROUGE and clinical errors where report text exists"))
