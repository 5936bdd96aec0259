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

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ...errors import ManifestError

ORIGIN = "_origin"
SKIP = "_skip"

ReadRows = Callable[..., pd.DataFrame]
WriteExample = Callable[[Path, Sequence[Path]], Path]


@dataclass(frozen=True)
class Layout:
    """One registered dataset layout."""

    name: str
    read_rows: ReadRows
    # builds a tiny tree of this layout around >= 3 given PNG files and returns its SRC (the contract test's data)
    write_example: WriteExample

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options ``read_rows`` takes beyond ``src`` (``source``, ``patient_pattern``)."""
        return tuple(p for p in inspect.signature(self.read_rows).parameters if p != "src")

    @property
    def module(self) -> str:
        return self.read_rows.__module__


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, example: WriteExample) -> Callable[[ReadRows], ReadRows]:
    """Decorator registering ``read_rows`` under ``--format name``, with its example-tree writer."""
    def register(read_rows: ReadRows) -> ReadRows:
        if name in LAYOUTS and LAYOUTS[name].read_rows is not read_rows:
            raise ValueError(f"layout {name!r} is registered twice ({LAYOUTS[name].module} and "
                             f"{read_rows.__module__}); pick another name")
        LAYOUTS[name] = Layout(name, read_rows, example)
        return read_rows
    return register


def list_layouts() -> list[str]:
    """Names of every registered layout, sorted (the ``--format`` choices)."""
    return sorted(LAYOUTS)


def get_layout(name: str) -> Layout:
    layout = LAYOUTS.get(name)
    if layout is None:
        raise ManifestError(f"unknown format {name!r}; use one of {', '.join(list_layouts())}")
    return layout


def copy_image(png: Path, dst: Path) -> Path:
    """Put the PNG ``png`` at ``dst`` (re-encoded as JPEG when ``dst`` says .jpg/.jpeg): for example trees."""
    import shutil

    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix.lower() in {".jpg", ".jpeg"}:
        with Image.open(png) as im:
            im.convert("L").save(dst, "JPEG", quality=90)
    else:
        shutil.copyfile(png, dst)
    return dst


# Importing a layout module registers it; they import ORIGIN/SKIP/register_layout from above.
from . import chexpert, folder, iu_xray, manifest, mimic_cxr, nih  # noqa: E402,F401
from .ingest import MANIFEST_FILE, SKIPPED_FILE, UNMAPPED_FILE, IngestResult, ingest  # noqa: E402,F401
