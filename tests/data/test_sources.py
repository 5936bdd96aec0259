"""`cxrfm ingest` for each layout, on small trees laid out as the official docs describe them.

Pixels are real images from shared/data/cxr (JPEG-encoded where the layout ships JPEG), report
texts are real IU reports (shared/data/text), NIH rows are the real Data_Entry_2017_v2020 rows.
"""
from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrfm.cli import main
from cxrfm.data.findings import CHEXPERT_14, FINDINGS, harmonise_row, split_labels
from cxrfm.data.schema import Manifest
from cxrfm.data.sources import copy_image


@pytest.fixture(scope="module")
def cxr(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "cxr" / "manifest.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def iu_reports(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "text" / "iu_xray_reports.csv", dtype=str, keep_default_na=False)


def put_image(shared_data: Path, name: str, dst: Path) -> Path:
    """Copy shared/data/cxr/images/<name> to dst, re-encoding as JPEG when dst says .jpg/.jpeg."""
    return copy_image(shared_data / "cxr" / "images" / name, dst)


def text(v: object) -> str:
    """A table cell as text: missing (None or NaN, as pandas 3 string columns give it) -> ""."""
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def sections(findings: str, impression: str) -> str:
    """The report text ingest writes: the sections that are present, in this order."""
    parts = [f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else ""]
    return " ".join(p for p in parts if p)


def masks(m: Manifest) -> list[Path | None]:
    return [(m.root / text(v)).resolve() if text(v) else None for v in m.table["mask"]]


def ingest(src: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["ingest", str(src), "--format", fmt, "--out", str(out), *extra])


def test_manifest_ingests_shared_manifest(shared_data, tmp_path, capsys):
    src = shared_data / "cxr" / "manifest.csv"
    assert ingest(src, "manifest", tmp_path / "out") == 0
    assert "2067 rows" in capsys.readouterr().out
    a, b = Manifest.load(src), Manifest.load(tmp_path / "out" / "manifest.csv")
    assert len(b) == len(a) == 2067
    assert [p.resolve() for p in b.image_paths()] == [p.resolve() for p in a.image_paths()]
    assert masks(b) == masks(a) and sum(p is not None for p in masks(b)) == 1257
    assert [text(r) for r in b.reports()] == [text(r) for r in a.reports()]
    np.testing.assert_array_equal(b.labels(), a.labels())
    assert list(b.table["patient_id"]) == list(a.table["patient_id"])
    assert not (tmp_path / "out" / "skipped_rows.csv").exists()


def test_manifest_parquet_and_no_image_check(shared_data, tmp_path, capsys):
    rows = pd.read_csv(shared_data / "cxr" / "manifest.csv", dtype=str).head(4)
    rows["image"] = [str(shared_data / "cxr" / p) for p in rows["image"]]  # absolute paths: re-based too
    rows = rows.drop(columns=["mask", "width", "height"])
    (tmp_path / "fake.png").write_text("not a png")
    rows.loc[3, "image"] = str(tmp_path / "fake.png")
    rows.to_parquet(tmp_path / "export.parquet", index=False)
    assert ingest(tmp_path / "export.parquet", "manifest", tmp_path / "out", "--no-check-images") == 0
    m = Manifest.load(tmp_path / "out" / "manifest.csv")
    assert len(m) == 4 and "width" not in m.table.columns  # only existence was checked
    assert [p.resolve() for p in m.image_paths()] == [Path(p).resolve() for p in rows["image"]]
    assert ingest(tmp_path / "export.parquet", "manifest", tmp_path / "out2") == 0
    assert "skipped 1 rows (unreadable image 1)" in capsys.readouterr().out
    skipped = pd.read_csv(tmp_path / "out2" / "skipped_rows.csv")
    assert skipped["skip_origin"][0] == f"{tmp_path / 'export.parquet'} row 4"
    m = Manifest.load(tmp_path / "out2" / "manifest.csv")
    assert len(m) == 3
    assert [(int(w), int(h)) for w, h in zip(m.table["width"], m.table["height"])] == [
        Image.open(p).size for p in m.image_paths()]


def test_folder_kermany_layout(shared_data, cxr, tmp_path, capsys):
    # chest_xray/{train,test}/{NORMAL,PNEUMONIA}/<file>.jpeg, as Kermany et al. publish it
    src = tmp_path / "chest_xray"
    krm = cxr[cxr["source"] == "kermany-pediatric-cxr"]
    picks = pd.concat([krm[krm["labels"] == "Normal"].head(3), krm[krm["labels"] != "Normal"].head(4)])
    for k, (_, r) in enumerate(picks.iterrows()):
        cls = "NORMAL" if r["labels"] == "Normal" else "PNEUMONIA"
        sub = "nested/deeper/" if k == 1 else ""  # any depth under the class folder
        split = "train" if k % 2 else "test"
        put_image(shared_data, Path(r["image"]).name, src / split / cls / f"{sub}{r['source_image']}")
    (src / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    (src / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    assert ingest(src, "folder", out, "--patient-pattern", r"(?P<patient>IM-\d+|person\d+)") == 0
    m = Manifest.load(out / "manifest.csv")
    assert len(m) == 7 and set(m.table["source"]) == {"chest_xray"}
    by_name = {Path(p).name: i for i, p in enumerate(m.table["image"])}
    for _, r in picks.iterrows():
        i = by_name[r["source_image"]]
        assert m.image_paths()[i].is_file()
        assert "krm:" + m.table["patient_id"][i] == r["patient_id"]  # same patients as the curated set
        lab = m.labels()[i]
        if r["labels"] == "Normal":
            assert lab[FINDINGS.index("No Finding")] == 1 and lab[FINDINGS.index("Pneumonia")] == 0
        else:
            assert lab[FINDINGS.index("Pneumonia")] == 1 and lab[FINDINGS.index("No Finding")] == 0
    assert set(m.table["source_split"]) == {"train", "test"}
    assert set(m.table["finding_raw"]) == {"NORMAL", "PNEUMONIA"}


def test_folder_default_patient_and_source_option(shared_data, cxr, tmp_path):
    src = tmp_path / "covid_radiography"
    for cls, name in [("Viral Pneumonia", "a.png"), ("Lung_Opacity", "b.png"), ("Normal", "c.png")]:
        put_image(shared_data, Path(cxr["image"][0]).name, src / cls / "images" / name)
    assert ingest(src, "folder", tmp_path / "out", "--source", "my-hospital") == 0
    m = Manifest.load(tmp_path / "out" / "manifest.csv")
    assert dict(zip(m.table["patient_id"], m.table["labels"])) == {
        "a": "Pneumonia;Viral pneumonia", "b": "Lung Opacity", "c": "No Finding"}
    assert set(m.table["source"]) == {"my-hospital"}


def _mimic_tree(shared_data: Path, cxr: pd.DataFrame, iu_reports: pd.DataFrame, src: Path) -> pd.DataFrame:
    """MIMIC-CXR-JPG layout with real NIH pixels and real IU report texts; returns the studies."""
    nih = cxr[cxr["source"] == "nih-chestxray14"].head(5).reset_index(drop=True)
    meta, labels, split = [], [], []
    studies = []
    for k, r in nih.iterrows():
        subject, study = f"1{k:07d}", f"5{k:07d}"
        # two images (frontal + lateral) in the first study, one elsewhere
        dicoms = [f"{k:08x}-aaaaaaaa-bbbbbbbb-cccccccc-{j:08x}" for j in range(2 if k == 0 else 1)]
        for j, d in enumerate(dicoms):
            study_dir = src / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            put_image(shared_data, Path(r["image"]).name, study_dir / f"{d}.jpg")
            meta.append({"dicom_id": d, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": "LATERAL" if j else "PA", "Rows": 320, "Columns": 320})
            split.append({"dicom_id": d, "study_id": study, "subject_id": subject, "split": "train"})
        # study-level labels as the 14 MIMIC columns: 1.0 / 0.0 / -1.0 / blank
        vec = harmonise_row(split_labels(r["labels"]), "nih-chestxray14")
        lab = {f: ("" if np.isnan(vec[FINDINGS.index(f)]) else f"{vec[FINDINGS.index(f)]:.1f}") for f in CHEXPERT_14}
        if k == 1:
            lab["Edema"] = "-1.0"
        labels.append({"subject_id": subject, "study_id": study, **dict(sorted(lab.items()))})
        rep = iu_reports.iloc[k]
        report = (f"                                 FINAL REPORT\n FINDINGS: {rep['findings']}\n\n"
                  f" IMPRESSION: {rep['impression']}\n")
        if k != 4:  # the last study has no report file
            (src / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt").write_text(report, encoding="utf-8")
        studies.append({"subject": subject, "study": study, "dicoms": dicoms,
                        "report": report.strip() if k != 4 else "", "labels": lab})
    for name, rows in (("metadata", meta), ("chexpert", labels), ("split", split)):
        with gzip.open(src / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt") as f:
            pd.DataFrame(rows).to_csv(f, index=False)
    return pd.DataFrame(studies)


def test_mimic_cxr_layout(shared_data, cxr, iu_reports, tmp_path, capsys):
    src = tmp_path / "mimic-cxr-jpg" / "2.1.0"
    studies = _mimic_tree(shared_data, cxr, iu_reports, src)
    out = tmp_path / "out"
    assert ingest(src, "mimic-cxr", out) == 0
    printed = capsys.readouterr().out
    assert "6 rows" in printed and "1 rows kept with an empty report" in printed
    m = Manifest.load(out / "manifest.csv")
    assert len(m) == 6 and all(p.is_file() for p in m.image_paths())
    t = m.table
    for s in studies.itertuples():
        rows = np.flatnonzero((t["patient_id"] == f"mimic:{s.subject}").to_numpy())
        assert [Path(t["image"][i]).stem for i in rows] == s.dicoms
        for i in rows:
            assert text(m.reports()[i]) == s.report
            assert text(t["labels"][i]) == ";".join(f for f in CHEXPERT_14 if s.labels[f] == "1.0")
            lab = m.labels(uncertain="ones")[i]
            for f in CHEXPERT_14:
                want = {"": np.nan, "1.0": 1, "0.0": 0, "-1.0": 1}[s.labels[f]]
                np.testing.assert_equal(lab[FINDINGS.index(f)], want)
    assert list(t["view"][:2]) == ["PA", "LATERAL"]
    assert set(t["source"]) == {"mimic-cxr"} and set(t["source_split"]) == {"train"}
    assert "FINDINGS:" in m.reports()[0] and "IMPRESSION:" in m.reports()[0]


def test_chexpert_with_plus_reports(shared_data, cxr, iu_reports, tmp_path):
    src = tmp_path / "chexpert"
    ds = src / "CheXpert-v1.0-small"
    rows, plus = [], []
    names = list(cxr["image"][cxr["source"] == "nih-chestxray14"].head(6))
    for k, name in enumerate(names):
        split = "valid" if k == 5 else "train"
        view = "view2_lateral" if k == 1 else f"view{k % 2 + 1}_frontal"
        rel = f"{split}/patient{k // 2 + 1:05d}/study1/{view}.jpg"
        put_image(shared_data, Path(name).name, ds / rel)
        lab = {f: "" for f in CHEXPERT_14}
        lab.update({"No Finding": "1.0"} if k % 3 == 0 else {"Cardiomegaly": "1.0", "Edema": "-1.0", "Fracture": "0.0"})
        rows.append({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": ["Male", "Female", "Unknown"][k % 3],
                     "Age": str(40 + k), "Frontal/Lateral": "Lateral" if k == 1 else "Frontal",
                     "AP/PA": "" if k == 1 else "AP", **lab, "split": split})
        rep = iu_reports.iloc[k]
        plus.append({"path_to_image": rel, "path_to_dcm": rel.replace(".jpg", ".dcm"),
                     "frontal_lateral": "Lateral" if k == 1 else "Frontal", "ap_pa": "AP",
                     "deid_patient_id": f"patient{k // 2 + 1:05d}", "report": f"FULL {rep['findings']}",
                     "section_findings": rep["findings"], "section_impression": rep["impression"],
                     "age": 40 + k, "sex": "Male", "split": split})
    for split in ("train", "valid"):
        part = [{k: v for k, v in r.items() if k != "split"} for r in rows if r["split"] == split]
        pd.DataFrame(part).to_csv(ds / f"{split}.csv", index=False)
    pd.DataFrame(plus).to_csv(src / "df_chexpert_plus_240401.csv", index=False)
    out = tmp_path / "out"
    assert ingest(src, "chexpert", out) == 0
    m = Manifest.load(out / "manifest.csv")
    t = m.table
    assert len(m) == 6 and all(p.is_file() for p in m.image_paths())
    assert list(t["patient_id"]) == ["chexpert:patient00001"] * 2 + ["chexpert:patient00002"] * 2 + [
        "chexpert:patient00003"] * 2
    assert [text(v) for v in t["sex"][:3]] == ["M", "F", ""] and list(t["view"][:3]) == ["AP", "L", "AP"]
    assert list(t["source_split"]) == ["train"] * 5 + ["valid"]
    for k in range(6):
        rep = iu_reports.iloc[k]
        assert m.reports()[k] == sections(rep["findings"], rep["impression"])
    lab = m.labels()
    assert lab[0, FINDINGS.index("No Finding")] == 1 and np.isnan(lab[0, FINDINGS.index("Cardiomegaly")])
    assert lab[1, FINDINGS.index("Cardiomegaly")] == 1 and lab[1, FINDINGS.index("Fracture")] == 0
    assert np.isnan(lab[1, FINDINGS.index("Edema")]) and m.labels(uncertain="ones")[1, FINDINGS.index("Edema")] == 1
    assert t["labels"][1] == "Cardiomegaly"
    # the 14 columns are written under the canonical names, as 1 / 0 / -1 / blank
    header = (out / "manifest.csv").read_text().splitlines()[0].split(",")
    assert all(f in header for f in CHEXPERT_14)


def test_chexpert_plus_alone_finds_png(shared_data, cxr, iu_reports, tmp_path):
    # The Plus release ships PNGs while path_to_image keeps the .jpg name.
    src = tmp_path / "chexpert_plus"
    rel = "train/patient00007/study2/view1_frontal.jpg"
    put_image(shared_data, Path(cxr["image"][0]).name, src / "PNG" / rel.replace(".jpg", ".png"))
    rep = iu_reports.iloc[15]  # CXR16: neither findings nor impression, only the full text column
    pd.DataFrame([{"path_to_image": rel, "frontal_lateral": "Frontal", "ap_pa": "PA",
                   "deid_patient_id": "patient00007", "report": "Normal chest.", "section_findings": rep["findings"],
                   "section_impression": rep["impression"], "age": 61, "sex": "Female"}]
                 ).to_csv(src / "df_chexpert_plus_240401.csv", index=False)
    assert ingest(src, "chexpert", tmp_path / "out") == 0
    m = Manifest.load(tmp_path / "out" / "manifest.csv")
    assert m.image_paths()[0].resolve() == (src / "PNG" / rel.replace(".jpg", ".png")).resolve()
    assert m.reports() == ["Normal chest."] and list(m.table["sex"]) == ["F"] and list(m.table["view"]) == ["PA"]


def test_iu_xray_openi_layout(shared_data, cxr, iu_reports, tmp_path, capsys):
    src = tmp_path / "openi"
    xml_names = ["1.xml", "2.xml", "4.xml", "16.xml", "156.xml"]  # 16: no findings/impression; 156: no image
    with tarfile.open(shared_data / "text" / "NLMCXR_reports.tgz") as tar:
        for n in xml_names:
            data = tar.extractfile(f"ecgen-radiology/{n}").read()
            (src / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
            (src / "ecgen-radiology" / n).write_bytes(data)
    reports = iu_reports.set_index("report_file").loc[xml_names]
    image_ids = [i for ims in reports["images"] for i in ims.split(";") if i]
    pngs = list(cxr["image"][:len(image_ids)])
    for image_id, png in zip(image_ids[:-1], pngs):  # CXR16's 2nd image is absent: skipped with its path
        put_image(shared_data, Path(png).name, src / "NLMCXR_png" / f"{image_id}.png")
    out = tmp_path / "out"
    assert ingest(src, "iu-xray", out) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 rows (missing image 1)" in printed and "1 rows kept with an empty report" in printed
    assert "1 report XMLs list no image" in printed
    skipped = pd.read_csv(out / "skipped_rows.csv")
    assert skipped["image"][0].endswith(f"NLMCXR_png/{image_ids[-1]}.png")
    m = Manifest.load(out / "manifest.csv")
    assert len(m) == len(image_ids) - 1 and all(p.is_file() for p in m.image_paths())
    t = m.table.set_index("source_image")
    for rf, r in reports.iterrows():
        for image_id in [i for i in r["images"].split(";") if i and i != image_ids[-1]]:
            row = t.loc[f"{image_id}.png"]
            assert text(row["report"]) == sections(r["findings"], r["impression"])
            assert row["labels"] == r["mesh_major"] and row["patient_id"] == f"iu:{r['uid']}"
            assert row["source"] == "iu-xray-openi" and row["license"] == "CC BY-NC-ND 4.0"
    lab = m.labels()
    first = list(m.table["source_image"]).index("CXR1_1_IM-0001-3001.png")
    assert lab[first, FINDINGS.index("No Finding")] == 1  # MeSH "normal"
    second = list(m.table["source_image"]).index("CXR2_IM-0652-1001.png")
    assert lab[second, FINDINGS.index("Cardiomegaly")] == 1  # MeSH "Cardiomegaly/borderline"


def test_nih_layout_matches_curated_rows(shared_data, cxr, tmp_path, capsys):
    src = tmp_path / "ChestX-ray14"
    nih = cxr[cxr["source"] == "nih-chestxray14"].head(8).reset_index(drop=True)
    for k, r in nih.iterrows():
        put_image(shared_data, Path(r["image"]).name, src / f"images_00{1 + k % 2}" / "images" / r["source_image"])
    entries = pd.read_csv(shared_data / "text" / "Data_Entry_2017_v2020.csv.gz", dtype=str, nrows=3000)
    wanted = set(nih["source_image"]) | {"00000005_000.png", "00000005_001.png"}  # 2 rows without image files
    entries[entries["Image Index"].isin(wanted)].to_csv(src / "Data_Entry_2017_v2020.csv", index=False)
    assert set(nih["source_image"]) <= set(entries["Image Index"])
    (src / "test_list.txt").write_text(nih["source_image"][0] + "\n")
    out = tmp_path / "out"
    assert ingest(src, "nih", out) == 0
    assert "skipped 2 rows (missing image 2)" in capsys.readouterr().out
    m = Manifest.load(out / "manifest.csv")
    curated = Manifest.load(shared_data / "cxr" / "manifest.csv")
    ct = curated.table.set_index("source_image")
    curated_labels = curated.labels()
    t = m.table
    assert sorted(t["source_image"]) == sorted(nih["source_image"])
    for i, name in enumerate(t["source_image"]):
        c = ct.loc[name]
        assert m.image_paths()[i].is_file()
        for col in ("patient_id", "source", "view", "sex", "labels"):
            assert text(t[col][i]) == text(c[col]), (name, col)
        assert float(t["age"][i]) == float(c["age"])
        np.testing.assert_array_equal(m.labels()[i], curated_labels[list(curated.table["source_image"]).index(name)])
    assert t["source_split"][list(t["source_image"]).index(nih["source_image"][0])] == "test"
