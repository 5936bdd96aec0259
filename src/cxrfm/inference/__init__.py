"""What a trained model does for one image, shared by evaluation (``tasks``) and serving (``serve``).

Layers: ``inference`` imports ``models``, ``data`` and the run folder (``cxrfm.run``); it never imports
``tasks``, ``train`` or ``serve``. Modules: :mod:`.embed` (batched embeddings, the dual-encoder contract),
:mod:`.zero_shot` (prompt-ensemble head), :mod:`.heads` (the findings head that eval fits and serve
uses), :mod:`.report` (the draft structured report), :mod:`.gate` and :mod:`.tanl` (is it a chest
radiograph?), :mod:`.index` (nearest studies), :mod:`.gradcam` (heat maps) and :mod:`.analyze`
(``Analyzer.analyze(image)``, everything at once).
"""
from __future__ import annotations

_LAZY = {
    "Analyzer": "cxrfm.inference.analyze",
    "AnalyzeSettings": "cxrfm.inference.analyze",
    "Refused": "cxrfm.inference.analyze",
    "FindingsHead": "cxrfm.inference.heads",
    "load_findings_head": "cxrfm.inference.heads",
    "OODGate": "cxrfm.inference.gate",
    "default_gate": "cxrfm.inference.gate",
    "ood_score": "cxrfm.inference.gate",
    "build_zero_shot_classifier": "cxrfm.inference.zero_shot",
    "zero_shot_scores": "cxrfm.inference.zero_shot",
    "load_prompts": "cxrfm.inference.zero_shot",
    "structured_report": "cxrfm.inference.report",
    "draft_report": "cxrfm.inference.report",
    "EvidenceBuilder": "cxrfm.inference.evidence",
    "EmbeddingIndex": "cxrfm.inference.index",
    "load_index": "cxrfm.inference.index",
    "grad_cam": "cxrfm.inference.gradcam",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrfm.inference' has no attribute {name!r}")


__all__ = sorted(_LAZY)
