"""One contract for every registered data layout (issue 10): a layout is tested the moment it is
registered with ``@register_layout(name, example=...)``, on the tiny tree its ``write_example`` lays
out around three bundled sample PNGs. Per-layout details stay in test_sources.py."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.findings import FINDINGS
from cxrfm.data.images import read_image
from cxrfm.data.schema import REQUIRED_COLUMNS, Manifest, unmapped_labels
from cxrfm.data.sources import LAYOUTS, get_layout, list_layouts, register_layout
from cxrfm.errors import ManifestError
from cxrfm.paths import SAMPLE_DIR

PNGS = sorted((SAMPLE_DIR / "images").glob("*.png"))[:4]


def ingest(src: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["ingest", str(src), "--format", fmt, "--out", str(out), *extra])


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(params=list_layouts())
def example(request, tmp_path) -> tuple[str, Path, Path]:
    """(layout name, the example's SRC, the example's root folder)."""
    root = tmp_path / "src"
    root.mkdir()
    return request.param, get_layout(request.param).write_example(root, PNGS), root


def test_layouts_are_registered():
    assert {"manifest", "folder", "nih", "chexpert", "mimic-cxr", "iu-xray"} <= set(list_layouts())
    assert len(PNGS) >= 3


def test_example_ingests_into_a_valid_manifest(example, tmp_path, capsys):
    name, src, _ = example
    assert ingest(src, name, tmp_path / "out", "--strict") == 0, capsys.readouterr().err
    assert f"{len(PNGS)} rows" in capsys.readouterr().out
    m = Manifest.load(tmp_path / "out" / "manifest.csv")
    assert len(m) == len(PNGS)
    for col in REQUIRED_COLUMNS:
        assert m.table[col].notna().all(), col
    assert not {"_origin", "_skip"} & set(m.table.columns)
    for p in m.image_paths():  # re-based onto out/, never copied, and decodable
        assert p.is_file() and read_image(p).shape[0] == 1
    assert len(unmapped_labels(m.table)) == 0
    y = m.labels()
    assert y.shape == (len(PNGS), len(FINDINGS)) and (~np.isnan(y)).any()
    # the output is itself a manifest: re-ingesting it keeps rows and labels
    assert ingest(tmp_path / "out" / "manifest.csv", "manifest", tmp_path / "again") == 0
    again = Manifest.load(tmp_path / "again" / "manifest.csv")
    np.testing.assert_array_equal(again.labels(), y)


def test_bad_rows_are_skipped_with_every_column(example, tmp_path, capsys):
    name, src, _ = example
    assert ingest(src, name, tmp_path / "first") == 0
    first = Manifest.load(tmp_path / "first" / "manifest.csv")
    gone, cut = first.image_paths()[0].resolve(), first.image_paths()[1].resolve()
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    capsys.readouterr()
    assert ingest(src, name, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "unreadable image 1" in printed and "skipped_rows.csv" in printed
    skipped = pd.read_csv(tmp_path / "out" / "skipped_rows.csv", dtype=str, keep_default_na=False)
    assert skipped["skip_reason"].str.len().gt(0).all()
    # a table-driven layout lists the deleted image as a missing-image row; a layout that lists
    # the files themselves (folder) has no row for it
    assert sorted(skipped["skip_kind"]) in (["missing image", "unreadable image"], ["unreadable image"])
    assert set(first.table.columns) - {"width", "height"} <= set(skipped.columns)
    assert len(Manifest.load(tmp_path / "out" / "manifest.csv")) == len(PNGS) - 2


def test_output_into_the_source_folder_never_changes_an_input(example, capsys):
    name, src, root = example
    before = tree_digest(root)
    out = src if src.is_dir() else src.parent
    code = ingest(src, name, out)
    err = capsys.readouterr().err
    assert code == 0 or ("is an input of this ingest" in err and "--out" in err)
    after = tree_digest(root)
    assert {k: after[k] for k in before} == before  # new files may appear; no existing file changes


def test_registering_a_name_twice_is_an_error():
    layout = LAYOUTS["nih"]
    register_layout("nih", example=layout.write_example)(layout.read_rows)  # same function: idempotent
    with pytest.raises(ValueError, match="registered twice"):
        register_layout("nih", example=layout.write_example)(lambda src: None)
    with pytest.raises(ManifestError, match="unknown format 'dicomdir'; use one of .*nih"):
        get_layout("dicomdir")
