"""`cxrfm ingest` loses nothing (issue 9, "Nothing is lost"): it never writes over an input, a
skipped row keeps every column it had, and an image that does not decode is caught at ingest."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.schema import Manifest


def ingest(src: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["ingest", str(src), "--format", fmt, "--out", str(out), *extra])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def export(shared_data, tmp_path) -> Path:
    """Four real rows of shared/data/cxr (labels, report, mask column) copied into D/ with their images."""
    rows = pd.read_csv(shared_data / "cxr" / "manifest.csv", dtype=str, keep_default_na=False)
    rows = pd.concat([rows[rows["report"] != ""].head(2), rows[rows["source"] == "nih-chestxray14"].head(2)],
                     ignore_index=True)
    rows["mask"] = ""
    rows["my_notes"] = ["keep me", "and me", "", "x"]  # a column no schema knows: must survive a skip
    root = tmp_path / "D"
    (root / "images").mkdir(parents=True)
    for img in rows["image"]:
        shutil.copyfile(shared_data / "cxr" / img, root / img)
    rows.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.parametrize("src_is_folder", [False, True])
def test_ingest_refuses_to_overwrite_its_own_input(export, capsys, src_is_folder):
    """`cxrfm ingest D/manifest.csv --format manifest --out D/` used to replace D/manifest.csv."""
    before = digest(export)
    src = export.parent if src_is_folder else export
    (export.parent / "images" / pd.read_csv(export)["image"][0].split("/")[-1]).unlink()  # would be dropped
    assert ingest(src, "manifest", export.parent) == 2
    err = capsys.readouterr().err
    assert f"{export}: is an input of this ingest" in err and "choose another --out folder" in err
    assert digest(export) == before and len(pd.read_csv(export)) == 4
    assert not (export.parent / "skipped_rows.csv").exists()  # nothing at all was written


def test_reingesting_the_skipped_rows_file_in_place_is_refused(export, tmp_path, capsys):
    (export.parent / "images" / pd.read_csv(export)["image"][1].split("/")[-1]).unlink()
    out = tmp_path / "out"
    assert ingest(export, "manifest", out) == 0
    skipped = out / "skipped_rows.csv"
    before = digest(skipped)
    assert ingest(skipped, "manifest", out) == 2
    assert "skipped_rows.csv: is an input of this ingest" in capsys.readouterr().err
    assert digest(skipped) == before


def test_skipped_row_keeps_every_column(export, tmp_path, capsys):
    src = pd.read_csv(export, dtype=str, keep_default_na=False)
    (export.parent / src["image"][1]).unlink()
    out = tmp_path / "out"
    assert ingest(export, "manifest", out) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 rows (missing image 1)" in printed and str(out / "skipped_rows.csv") in printed
    skipped = pd.read_csv(out / "skipped_rows.csv", dtype=str, keep_default_na=False)
    assert len(skipped) == 1
    row = skipped.iloc[0]
    for col in src.columns:  # every column of the source row, values unchanged (paths re-based onto out/)
        assert col in skipped.columns, col
        if col != "image":
            assert row[col] == src[col][1], col
    assert row["report"] and row["labels"] and row["my_notes"] == "and me"
    assert (out / row["image"]).resolve() == (export.parent / src["image"][1]).resolve()
    assert row["skip_kind"] == "missing image" and "no such image file" in row["skip_reason"]
    assert row["skip_origin"].endswith("manifest.csv line 3")
    # once the image is back, the skipped-rows file is itself a manifest to ingest
    shutil.copyfile(export.parent / src["image"][0], export.parent / src["image"][1])
    assert ingest(out / "skipped_rows.csv", "manifest", tmp_path / "again") == 0
    again = Manifest.load(tmp_path / "again" / "manifest.csv")
    assert len(again) == 1 and again.table["my_notes"][0] == "and me"


def test_truncated_png_is_caught_at_ingest(export, tmp_path, capsys):
    """A PNG cut in half has a valid header: only a decode finds it."""
    src = pd.read_csv(export)
    img = export.parent / src["image"][2]
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    assert ingest(export, "manifest", tmp_path / "out") == 0
    assert "skipped 1 rows (unreadable image 1)" in capsys.readouterr().out
    skipped = pd.read_csv(tmp_path / "out" / "skipped_rows.csv")
    assert skipped["skip_kind"][0] == "unreadable image"
    assert "truncated or corrupt" in skipped["skip_reason"][0] and img.name in skipped["skip_reason"][0]
    assert len(Manifest.load(tmp_path / "out" / "manifest.csv")) == 3
    # the header-only check lets it through, and the summary says what was not checked
    assert ingest(export, "manifest", tmp_path / "quick", "--check-images", "header") == 0
    printed = capsys.readouterr().out
    assert "4 rows" in printed and "truncated pixel data was not checked" in printed
    assert ingest(export, "manifest", tmp_path / "none", "--no-check-images") == 0
    assert "not whether they decode" in capsys.readouterr().out


def test_out_that_is_a_file_is_a_clear_error(export, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert ingest(export, "manifest", tmp_path / "afile") == 2
    err = capsys.readouterr().err
    assert "afile: --out is a file, not a folder" in err and "Traceback" not in err


def test_empty_cell_spellings_are_unlabelled_not_unmapped(export, tmp_path, capsys):
    df = pd.read_csv(export, dtype=str, keep_default_na=False)
    df["labels"] = ["nan", "N/A", "None", "null"]
    df.to_csv(export, index=False)
    assert ingest(export, "manifest", tmp_path / "out", "--strict") == 0
    assert "cannot map" not in capsys.readouterr().out


def test_semicolon_separated_export_says_so(export, tmp_path, capsys):
    export.write_text(export.read_text(encoding="utf-8").replace(",", ";"), encoding="utf-8")
    assert ingest(export, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "missing required column(s) image" in err and "looks semicolon-separated" in err


def test_output_reached_through_a_symlink_is_still_the_input(export, tmp_path, capsys):
    out = tmp_path / "linked"
    out.mkdir()
    (out / "manifest.csv").symlink_to(export)
    before = digest(export)
    assert ingest(export, "manifest", out) == 2
    assert "is an input of this ingest" in capsys.readouterr().err and digest(export) == before


def test_missing_mask_path_is_kept_on_record(export, tmp_path, capsys):
    df = pd.read_csv(export, dtype=str, keep_default_na=False)
    df.loc[0, "mask"] = "masks/gone.png"
    df.to_csv(export, index=False)
    assert ingest(export, "manifest", tmp_path / "out") == 0
    assert "1 mask paths pointed at missing files: cleared from `mask`, kept in `mask_missing`" in \
        capsys.readouterr().out
    m = Manifest.load(tmp_path / "out" / "manifest.csv")
    assert m.mask_paths()[0] is None
    assert (tmp_path / "out" / m.table["mask_missing"][0]).resolve() == (export.parent / "masks/gone.png").resolve()
