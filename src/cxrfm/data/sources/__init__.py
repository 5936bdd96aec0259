"""Dataset layouts -> one validated manifest (``cxrfm ingest SRC --format F --out DIR``).

Each module here maps one published layout to rows of the manifest schema
(:mod:`cxrfm.data.schema`) and nothing else, and registers itself (timm's ``@register_model``)::

    @register_layout("nih", example=write_example)
    def read_rows(src: Path) -> pd.DataFrame: ...

``read_rows(src)`` returns a DataFrame with ``image`` (and ``mask``) relative to the *source root*
(SRC, or the folder of SRC when SRC is a table); ``write_example(root, images)`` lays out a tiny tree
of that layout around the given PNG files and returns its SRC, so that the one contract test
(tests/data/test_layout_contract.py, parametrised over :func:`list_layouts`) runs every layout the
moment it is registered. Bookkeeping columns that never reach the manifest:

* ``_origin``: where the row came from (``Data_Entry_2017.csv line 14``, ``files/p10/.../s5.txt``),
  used in every error and in ``skipped_rows.csv``;
* ``_skip``: a reason when the reader already knows the row is unusable (a report that is not UTF-8),
  else empty.

and one in ``DataFrame.attrs``: ``inputs``, the files the reader read (ingest refuses to write over
any of them), beside ``notes`` (lines for the summary). The shared part (duplicates, checks,
skipped rows, writing) is :func:`cxrfm.data.sources.ingest.ingest`.
"""
from __future__ import annotations

from .registry import (LAYOUTS, ORIGIN, SKIP, Layout, copy_image, get_layout, list_layouts,  # noqa: F401 - public
                       register_layout)

# Importing a layout module registers it (each imports register_layout from .registry).
from . import chexpert, folder, iu_xray, manifest, mimic_cxr, nih  # noqa: E402,F401
from .ingest import MANIFEST_FILE, SKIPPED_FILE, UNMAPPED_FILE, IngestResult, ingest  # noqa: E402,F401
