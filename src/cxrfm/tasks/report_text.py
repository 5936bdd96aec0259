"""Text-overlap scores of generated reports: BLEU-4 (sacrebleu), ROUGE-L (rouge-score) and RadEval's
model-based metrics when that package is installed and works offline (it is never made to download).

These count shared words; the clinical-error metric (:mod:`cxrfm.data.report_errors`) counts what a
radiologist would call an error. The report task reports both.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import numpy as np

ROUGE_STEMMER = True


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, lower-cased, 13a tokenizer) as a fraction in [0, 1]."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score / 100.0)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, Porter-stemmed) over hypothesis/reference pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=ROUGE_STEMMER)
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]))


def radeval_status() -> dict:
    """``{"skipped": why}`` unless the RadEval package imports and its models load from disk alone.

    The check forces the Hugging Face Hub offline, so a missing weight file is a skip, never a download.
    """
    if importlib.util.find_spec("RadEval") is None:
        return {"skipped": "the RadEval package is not installed (F1-CheXbert, RadGraph F1 and GREEN need it and "
                           "its model weights from the Hugging Face Hub; cxrfm never downloads at run time — "
                           "install RadEval and cache its weights to enable these metrics)"}
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from RadEval import RadEval  # noqa: N813 - the package's own name

        RadEval(do_chexbert=True, do_radgraph=True)
    except Exception as e:  # noqa: BLE001 - any failure to load is a reason to skip, recorded verbatim
        return {"skipped": f"RadEval is installed but its models do not load offline "
                           f"({type(e).__name__}: {str(e)[:200]}); cache its weights to enable it"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"available": True}


def radeval_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """RadEval's F1-CheXbert and RadGraph F1 where available (see :func:`radeval_status`)."""
    status = radeval_status()
    if "skipped" in status:
        return status
    try:
        from RadEval import RadEval

        return dict(RadEval(do_chexbert=True, do_radgraph=True)(refs=list(references), hyps=list(hypotheses)))
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"RadEval failed: {type(e).__name__}: {str(e)[:200]}"}


# ---------------------------------------------------------------- generators
