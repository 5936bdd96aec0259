"""cxrfm: chest X-ray vision-language foundation models on modest compute.

The public API, curated. Heavy modules (torch models, tasks) import lazily so that ``cxrfm --help``
and the data tools start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .data.findings import FINDINGS  # noqa: E402
from .data.schema import Manifest  # noqa: E402
from .errors import CxrfmError  # noqa: E402

_LAZY = {  # name -> module; imported on first use
    "read_image": ("cxrfm.data.images", "read_image"),
    "read_image_bytes": ("cxrfm.data.images", "read_image_bytes"),
    "letterbox": ("cxrfm.data.images", "letterbox"),
    "ImageCache": ("cxrfm.data.cache", "ImageCache"),
    "read_table": ("cxrfm.data.schema", "read_table"),
    "train_eval_split": ("cxrfm.data.splits", "train_eval_split"),
    "split_patients": ("cxrfm.data.splits", "split_patients"),
    "training_texts": ("cxrfm.data.pseudo_reports", "training_texts"),
    "label_reports": ("cxrfm.data.labeler", "label_reports"),
    "score_reports": ("cxrfm.data.report_errors", "score_reports"),
    "write_shards": ("cxrfm.data.shards", "write_shards"),
    "ShardSet": ("cxrfm.data.shards", "ShardSet"),
    "shared_data_dir": ("cxrfm.paths", "shared_data_dir"),
    "load_config": ("cxrfm.config", "load_config"),
    "build_model": ("cxrfm.models.factory", "build_model"),
    "load_model": ("cxrfm.models.dual", "load_model"),
    "RunDir": ("cxrfm.run", "RunDir"),
    "pretrain": ("cxrfm.train.loop", "pretrain"),
    "list_curators": ("cxrfm.train.curation", "list_curators"),
    "build_curator": ("cxrfm.train.curation", "build_curator"),
    "Analyzer": ("cxrfm.inference.analyze", "Analyzer"),
    "Refused": ("cxrfm.inference.analyze", "Refused"),
    "ood_score": ("cxrfm.inference.gate", "ood_score"),
    "load_prompts": ("cxrfm.inference.zero_shot", "load_prompts"),
    "build_zero_shot_classifier": ("cxrfm.inference.zero_shot", "build_zero_shot_classifier"),
    "zero_shot_scores": ("cxrfm.inference.zero_shot", "zero_shot_scores"),
    "build_index": ("cxrfm.inference.index", "build_index"),
    "save_index": ("cxrfm.inference.index", "save_index"),
    "load_index": ("cxrfm.inference.index", "load_index"),
    "evaluate": ("cxrfm.tasks.suite", "evaluate"),
    "embed_manifest": ("cxrfm.tasks.embed", "embed_manifest"),
    "auroc": ("cxrfm.metrics", "auroc"),
    "bootstrap_ci": ("cxrfm.metrics", "bootstrap_ci"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'cxrfm' has no attribute {name!r}")


__all__ = ["FINDINGS", "Manifest", "CxrfmError", "__version__", *_LAZY]
