"""The layout registry and what every layout module shares (ORIGIN / SKIP columns, copy_image).

Layout modules import from here, and the package ``__init__`` imports the layout modules: the
imports point one way.
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
