"""cxrfm: chest X-ray vision-language foundation models on modest compute.

The public API, curated. Heavy modules (torch models, tasks) import lazily so that ``cxrfm --help``
and the data tools start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .data.findings import FINDINGS  # noqa: E402
from .data.schema import Manifest  # noqa: E402
from .errors import CxrfmError  # noqa: E402

_LAZY = {
    "read_image": ("cxrfm.data.images", "read_image"),
    "load_model": ("cxrfm.models.dual", "load_model"),
    "ood_score": ("cxrfm.inference.gate", "ood_score"),
    "Analyzer": ("cxrfm.inference.analyze", "Analyzer"),
    "RunDir": ("cxrfm.run", "RunDir"),
    "list_curators": ("cxrfm.train.curation", "list_curators"),
    "evaluate": ("cxrfm.tasks.suite", "evaluate"),
    "pretrain": ("cxrfm.train.loop", "pretrain"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'cxrfm' has no attribute {name!r}")


__all__ = ["FINDINGS", "Manifest", "CxrfmError", "read_image", "load_model", "ood_score", "Analyzer", "RunDir", "list_curators", "evaluate", "pretrain", "__version__"]
