"""Bad input to `cxrfm ingest`: each case ends in an error or a counted per-row skip that names
the file/row and the fix (issue "Foundation", Bad input)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.findings import FINDING_INDEX
from cxrfm.data.schema import Manifest


def ingest(src: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["ingest", str(src), "--format", fmt, "--out", str(out), *extra])


@pytest.fixture()
def small_manifest(shared_data, tmp_path) -> Path:
    """Five real rows of shared/data/cxr/manifest.csv with their images copied beside the table."""
    rows = pd.read_csv(shared_data / "cxr" / "manifest.csv", dtype=str, keep_default_na=False)
    rows = pd.concat([rows[rows["source"] == s].head(2) for s in ("kermany-pediatric-cxr", "nih-chestxray14")]
                     + [rows[rows["report"] != ""].head(1)], ignore_index=True)
    rows = rows.drop(columns=["mask"])
    root = tmp_path / "export"
    (root / "images").mkdir(parents=True)
    for img in rows["image"]:
        shutil.copyfile(shared_data / "cxr" / img, root / img)
    rows.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def edit(path: Path, fn) -> Path:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)
    return path


def test_missing_image_is_skipped_with_count_and_file(small_manifest, tmp_path, capsys):
    gone = small_manifest.parent / "images" / pd.read_csv(small_manifest)["image"][1].split("/")[-1]
    gone.unlink()
    out = tmp_path / "out"
    assert ingest(small_manifest, "manifest", out) == 0
    printed = capsys.readouterr().out
    assert "4 rows" in printed and "skipped 1 rows (missing image 1)" in printed and "skipped_rows.csv" in printed
    skipped = pd.read_csv(out / "skipped_rows.csv")
    assert list(skipped["skip_kind"]) == ["missing image"]
    assert skipped["skip_origin"][0].endswith("manifest.csv line 3")  # the table's own line number
    assert str(gone) in skipped["skip_reason"][0] and "put it there or drop the row" in skipped["skip_reason"][0]
    assert len(Manifest.load(out / "manifest.csv")) == 4


def test_non_image_with_image_extension_is_skipped(small_manifest, tmp_path, capsys):
    img = small_manifest.parent / pd.read_csv(small_manifest)["image"][0]
    img.write_text("<html>this is a web page saved as .png</html>")
    out = tmp_path / "out"
    assert ingest(small_manifest, "manifest", out) == 0
    assert "skipped 1 rows (unreadable image 1)" in capsys.readouterr().out
    skipped = pd.read_csv(out / "skipped_rows.csv")
    assert skipped["skip_kind"][0] == "unreadable image" and img.name in skipped["skip_reason"][0]
    # re-running after the fix removes the stale list
    shutil.copyfile(small_manifest.parent / pd.read_csv(small_manifest)["image"][1], img)
    assert ingest(small_manifest, "manifest", out) == 0
    assert not (out / "skipped_rows.csv").exists()


def test_all_rows_skipped_is_an_error(small_manifest, tmp_path, capsys):
    shutil.rmtree(small_manifest.parent / "images")
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "all 5 rows were skipped" in err and "skipped_rows.csv" in err
    assert len(pd.read_csv(tmp_path / "out" / "skipped_rows.csv")) == 5
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_exact_duplicate_rows_are_dropped_with_count(small_manifest, tmp_path, capsys):
    edit(small_manifest, lambda df: pd.concat([df, df.iloc[[2]]], ignore_index=True))
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 0
    assert "skipped 1 rows (exact duplicate 1)" in capsys.readouterr().out
    skipped = pd.read_csv(tmp_path / "out" / "skipped_rows.csv")
    assert skipped["skip_origin"][0].endswith("line 7") and "identical to" in skipped["skip_reason"][0]
    assert skipped["skip_reason"][0].split("identical to ")[1].startswith(str(small_manifest) + " line 4")
    assert len(Manifest.load(tmp_path / "out" / "manifest.csv")) == 5


def test_conflicting_duplicate_rows_are_an_error_naming_both(small_manifest, tmp_path, capsys):
    def dup(df):
        extra = df.iloc[[2]].copy()
        extra["labels"] = "No Finding"
        return pd.concat([df, extra], ignore_index=True)
    edit(small_manifest, dup)
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "line 7" in err and "also listed at" in err and "line 4" in err and "'labels'" in err
    assert "keep one row per image" in err


def test_unknown_label_name_keeps_the_row_and_lists_it(small_manifest, tmp_path, capsys):
    def bad(df):
        df.loc[1, "labels"] = "Pneumonia;Banana"
        df.loc[1, "source"] = "my-hospital"
        return df
    edit(small_manifest, bad)
    out = tmp_path / "out"
    assert ingest(small_manifest, "manifest", out) == 0
    printed = capsys.readouterr().out
    assert "5 rows" in printed and "1 rows kept with 1 raw label name(s) cxrfm cannot map ('Banana' 1)" in printed
    assert str(out / "unmapped_labels.csv") in printed and "--strict" in printed
    listed = pd.read_csv(out / "unmapped_labels.csv")
    assert listed[["source", "label"]].values.tolist() == [["my-hospital", "Banana"]]
    assert listed["origin"][0].endswith("manifest.csv line 3")
    m = Manifest.load(out / "manifest.csv")
    assert m.labels()[1, FINDING_INDEX["Pneumonia"]] == 1  # the row keeps what it does know
    # --strict turns it into an error naming the row; a clean re-run removes the stale list
    assert ingest(small_manifest, "manifest", tmp_path / "strict", "--strict") == 2
    err = capsys.readouterr().err
    assert "manifest.csv line 3" in err and "'Banana'" in err and "use one of the canonical findings" in err
    edit(small_manifest, lambda df: df.assign(labels=df["labels"].str.replace(";Banana", "")))
    assert ingest(small_manifest, "manifest", out) == 0
    assert not (out / "unmapped_labels.csv").exists()


def test_covid_chestxray_bare_leaf_and_paths_ingest(small_manifest, tmp_path, capsys):
    """A held-out covid-chestxray-dataset slice carries `Bacterial`; later releases carry paths."""
    raw = ["Bacterial", "Pneumonia/Viral/COVID-19", "Pneumonia/Fungal/Pneumocystis", "todo", "Tuberculosis"]
    edit(small_manifest, lambda df: df.assign(source="covid-chestxray-dataset", labels=raw))
    assert ingest(small_manifest, "manifest", tmp_path / "out", "--strict") == 0
    assert "cannot map" not in capsys.readouterr().out
    y = Manifest.load(tmp_path / "out" / "manifest.csv").labels()
    assert y[0, FINDING_INDEX["Bacterial pneumonia"]] == 1 and y[1, FINDING_INDEX["COVID-19"]] == 1
    assert y[2, FINDING_INDEX["Viral pneumonia"]] == 0 and np.isnan(y[3]).all()


def test_bad_finding_column_value_names_the_row(small_manifest, tmp_path, capsys):
    edit(small_manifest, lambda df: df.assign(Cardiomegaly=["1", "0", "yes", "", "-1"]))
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "line 4" in err and "'Cardiomegaly'" in err and "1, 0, -1 or blank" in err


def test_manifest_missing_columns(small_manifest, tmp_path, capsys):
    edit(small_manifest, lambda df: df.drop(columns=["patient_id", "source"]))
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(small_manifest) in err and "missing required column(s) patient_id, source" in err
    assert "a manifest needs image, patient_id, source" in err


def test_empty_required_value_names_the_row(small_manifest, tmp_path, capsys):
    edit(small_manifest, lambda df: df.assign(patient_id=["a", "b", "c", "", "e"]))
    assert ingest(small_manifest, "manifest", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "line 5" in err and "empty 'patient_id'" in err and "fill it in or drop the row" in err


def test_missing_src(tmp_path, capsys):
    assert ingest(tmp_path / "nowhere", "nih", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "nowhere: no such file or folder" in err and "dataset root folder" in err


@pytest.mark.parametrize("fmt, needs", [
    ("nih", "Data_Entry_2017.csv"),
    ("mimic-cxr", "mimic-cxr-2.0.0-metadata.csv.gz"),
    ("chexpert", "train.csv/valid.csv"),
    ("iu-xray", "NLMCXR_reports.tgz"),
    ("manifest", "manifest.csv or manifest.parquet"),
])
def test_required_table_missing_names_it(fmt, needs, tmp_path, capsys):
    src = tmp_path / "dataset"
    (src / "images").mkdir(parents=True)
    assert ingest(src, fmt, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(src) in err and needs in err


def test_nih_table_with_wrong_header(tmp_path, capsys):
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017.csv").write_text("Image,Labels\n00000001_000.png,Cardiomegaly\n")
    assert ingest(tmp_path / "nih", "nih", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Data_Entry_2017.csv: missing column(s) Image Index, Finding Labels" in err


def test_option_for_another_format_is_refused(tmp_path, capsys):
    (tmp_path / "nih").mkdir()
    assert ingest(tmp_path / "nih", "nih", tmp_path / "out", "--patient-pattern", "(\\d+)") == 2
    assert "--patient-pattern does not apply to --format nih" in capsys.readouterr().err


def test_folder_with_unknown_class_names_the_folder(shared_data, tmp_path, capsys):
    for cls in ("NORMAL", "TUBERCULOSIS"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        shutil.copyfile(shared_data / "cxr" / "images" / "ccx_000001.png", tmp_path / "set" / cls / "a.png")
    assert ingest(tmp_path / "set", "folder", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "TUBERCULOSIS" in err and "NORMAL" not in err.split("rename")[0] and "rename each to one of" in err


def test_patient_pattern_that_does_not_match(shared_data, tmp_path, capsys):
    (tmp_path / "set" / "NORMAL").mkdir(parents=True)
    shutil.copyfile(shared_data / "cxr" / "images" / "ccx_000001.png", tmp_path / "set" / "NORMAL" / "IM-1.png")
    assert ingest(tmp_path / "set", "folder", tmp_path / "out", "--patient-pattern", r"(person\d+)") == 2
    err = capsys.readouterr().err
    assert "NORMAL/IM-1.png" in err and "fix the pattern" in err


def _mimic_one_study(shared_data: Path, src: Path, report: bytes | None) -> None:
    study = src / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    from PIL import Image
    with Image.open(shared_data / "cxr" / "images" / "ccx_000001.png") as im:
        im.convert("L").save(study / "d1.jpg", "JPEG")
    shutil.copyfile(study / "d1.jpg", study / "d2.jpg")
    if report is not None:
        (study.parent / "s50000001.txt").write_bytes(report)
    with gzip.open(src / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        f.write("dicom_id,subject_id,study_id,ViewPosition\nd1,10000001,50000001,PA\nd2,10000001,50000001,LATERAL\n")


def test_non_utf8_report_skips_its_rows_with_reason(shared_data, iu_text, tmp_path, capsys):
    src = tmp_path / "mimic"
    _mimic_one_study(shared_data, src, ("FINDINGS: " + iu_text + " Pleural effusion \xe9valu\xe9e.").encode("latin-1"))
    assert ingest(src, "mimic-cxr", tmp_path / "out") == 2  # both rows of the study skipped -> nothing left
    err = capsys.readouterr().err
    assert "all 2 rows were skipped" in err
    skipped = pd.read_csv(tmp_path / "out" / "skipped_rows.csv")
    assert list(skipped["skip_kind"]) == ["bad report"] * 2
    reason = skipped["skip_reason"][0]
    assert "s50000001.txt: report is not UTF-8" in reason and "re-save it as UTF-8" in reason


def test_empty_report_keeps_the_rows_and_counts_them(shared_data, tmp_path, capsys):
    src = tmp_path / "mimic"
    _mimic_one_study(shared_data, src, b"   \n")
    assert ingest(src, "mimic-cxr", tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "2 rows" in printed and "2 rows kept with an empty report" in printed
    assert "no mimic-cxr-2.0.0-chexpert.csv(.gz) in SRC: rows have no labels" in printed


def test_iu_xml_not_utf8_is_skipped(shared_data, tmp_path, capsys):
    import tarfile
    src = tmp_path / "openi"
    (src / "ecgen-radiology").mkdir(parents=True)
    with tarfile.open(shared_data / "text" / "NLMCXR_reports.tgz") as tar:
        good = tar.extractfile("ecgen-radiology/1.xml").read()
    (src / "ecgen-radiology" / "1.xml").write_bytes(good)
    (src / "ecgen-radiology" / "2.xml").write_bytes(good.replace(b"Positive TB test", b"Positive TB t\xe9st"))
    for image_id in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"):
        (src / "NLMCXR_png").mkdir(exist_ok=True)
        shutil.copyfile(shared_data / "cxr" / "images" / "ccx_000001.png", src / "NLMCXR_png" / f"{image_id}.png")
    assert ingest(src, "iu-xray", tmp_path / "out") == 0
    assert "skipped 1 rows (bad report 1)" in capsys.readouterr().out
    skipped = pd.read_csv(tmp_path / "out" / "skipped_rows.csv")
    assert skipped["skip_origin"][0] == "ecgen-radiology/2.xml"
    assert "not a well-formed UTF-8 report XML" in skipped["skip_reason"][0] and "re-extract it" in skipped["skip_reason"][0]


@pytest.fixture()
def iu_text(shared_data) -> str:
    return pd.read_csv(shared_data / "text" / "iu_xray_reports.csv", dtype=str, nrows=1)["findings"][0]
