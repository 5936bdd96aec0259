"""Label harmonisation (cxrfm.data.findings): per-source exhaustive sets, NaN vs 0, the Pneumonia-parent rule."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrfm.data.findings import FINDING_INDEX, FINDINGS, harmonise_row, split_labels, unknown_labels
from cxrfm.data.schema import Manifest, unmapped_labels, validate_table
from cxrfm.errors import ManifestError


def v(row: np.ndarray, finding: str) -> float:
    return float(row[FINDING_INDEX[finding]])


@pytest.fixture(scope="module")
def real(cxr_manifest_path):
    m = Manifest.load(cxr_manifest_path)
    return m, m.labels()


def _raw_has(table: pd.DataFrame, name: str) -> np.ndarray:
    return np.array([name.lower() in {s.lower() for s in split_labels(x)} for x in table["labels"]])


def test_kermany_is_exhaustive_for_pneumonia_and_its_types(real):
    m, y = real
    rows = (m.table["source"] == "kermany-pediatric-cxr").to_numpy()
    k, t = y[rows], m.table[rows]
    for f in ("No Finding", "Pneumonia", "Bacterial pneumonia", "Viral pneumonia", "COVID-19"):
        assert not np.isnan(k[:, FINDING_INDEX[f]]).any(), f
    assert (k[:, FINDING_INDEX["COVID-19"]] == 0).all()  # collected before 2019
    assert (k[:, FINDING_INDEX["Pneumonia"]] == 1).sum() == (~_raw_has(t, "Normal")).sum()
    assert (k[:, FINDING_INDEX["Bacterial pneumonia"]] == 1).sum() == _raw_has(t, "Bacterial pneumonia").sum()
    assert (k[:, FINDING_INDEX["Viral pneumonia"]] == 1).sum() == _raw_has(t, "Viral pneumonia").sum()
    assert (k[:, FINDING_INDEX["No Finding"]] == 1).sum() == _raw_has(t, "Normal").sum() > 100
    # Kermany says nothing about effusions in pneumonia cases: unknown, not negative
    pna = k[:, FINDING_INDEX["Pneumonia"]] == 1
    assert np.isnan(k[pna, FINDING_INDEX["Pleural Effusion"]]).all()
    # "Normal" negates only what Kermany labels exhaustively (issue 9 item 10): the graders judged
    # pneumonia, so devices, fractures or effusions on a "Normal" film stay unknown
    assert (k[~pna] == 0).sum(1).tolist() == [4] * int((~pna).sum())
    assert np.isnan(k[~pna, FINDING_INDEX["Support Devices"]]).all()
    assert np.isnan(k[~pna, FINDING_INDEX["Fracture"]]).all()


def test_nih_labels_fourteen_findings_exhaustively(real):
    m, y = real
    rows = (m.table["source"] == "nih-chestxray14").to_numpy()
    n, t = y[rows], m.table[rows]
    for f in ("Cardiomegaly", "Pleural Effusion", "Atelectasis", "Pneumothorax", "Edema", "Consolidation"):
        assert not np.isnan(n[:, FINDING_INDEX[f]]).any(), f
    assert (n[:, FINDING_INDEX["Pleural Effusion"]] == 1).sum() == _raw_has(t, "Effusion").sum() > 10
    assert (n[:, FINDING_INDEX["Lung Lesion"]] == 1).sum() == (_raw_has(t, "Mass") | _raw_has(t, "Nodule")).sum()
    # Lung Opacity is only partly covered by "Infiltration": absence is unknown outside "No Finding" rows
    nf = n[:, FINDING_INDEX["No Finding"]] == 1
    lo = n[:, FINDING_INDEX["Lung Opacity"]]
    assert np.isnan(lo[~nf & ~_raw_has(t, "Infiltration")]).all()
    assert np.isnan(lo[nf]).all()  # "No Finding" negates only NIH's exhaustive findings
    assert (n[nf, FINDING_INDEX["Cardiomegaly"]] == 0).all()
    # findings NIH never labels stay unknown on abnormal rows
    assert np.isnan(n[~nf, FINDING_INDEX["Support Devices"]]).all()


def test_nih_covid_is_a_known_negative_without_pneumonia(real):
    m, y = real
    rows = (m.table["source"] == "nih-chestxray14").to_numpy()
    pna = y[rows, FINDING_INDEX["Pneumonia"]] == 1
    assert (y[rows][~pna, FINDING_INDEX["COVID-19"]] == 0).all()


def test_nih_covid_stays_negative_on_pneumonia_rows(real):
    """NIH predates COVID-19: the Pneumonia-parent rule must not turn its COVID-19 = 0 into unknown."""
    m, y = real
    rows = (m.table["source"] == "nih-chestxray14").to_numpy()
    assert (y[rows, FINDING_INDEX["COVID-19"]] == 0).all()


def test_covid_set_pneumonia_parent_rule(real):
    m, y = real
    t = m.table
    only_pna = ((t["source"] == "covid-chestxray-dataset") & (t["labels"].str.lower() == "pneumonia")).to_numpy()
    assert only_pna.sum() > 0
    for f in ("Bacterial pneumonia", "Viral pneumonia", "COVID-19"):
        assert np.isnan(y[only_pna, FINDING_INDEX[f]]).all(), f
    assert (y[only_pna, FINDING_INDEX["Pneumonia"]] == 1).all()
    assert (y[only_pna, FINDING_INDEX["No Finding"]] == 0).all()
    covid = (t["source"].isin(["covid-chestxray-dataset", "hannover-covid-19-image-repository"])
             & _raw_has(t, "COVID-19")).to_numpy()
    assert covid.sum() > 100
    assert (y[covid, FINDING_INDEX["COVID-19"]] == 1).all()
    assert (y[covid, FINDING_INDEX["Pneumonia"]] == 1).all()
    assert (y[covid, FINDING_INDEX["Bacterial pneumonia"]] == 0).all()
    # a case collection says nothing about devices or effusions
    assert np.isnan(y[covid, FINDING_INDEX["Support Devices"]]).all()


def test_unlabelled_rows_are_all_unknown(real):
    m, y = real
    empty = m.table["labels"].isna().to_numpy()
    assert empty.sum() > 0
    assert np.isnan(y[empty]).all()


@pytest.mark.parametrize("raw,source,expect", [
    ("Streptococcus", "covid-chestxray-dataset",
     {"Pneumonia": 1, "Bacterial pneumonia": 1, "Viral pneumonia": 0, "COVID-19": 0, "No Finding": 0, "Edema": None}),
    ("Pneumonia;Viral pneumonia", "kermany-pediatric-cxr",
     {"Pneumonia": 1, "Viral pneumonia": 1, "Bacterial pneumonia": 0, "COVID-19": 0, "Cardiomegaly": None}),
    ("No Finding", "nih-chestxray14",
     {"No Finding": 1, "Cardiomegaly": 0, "Pneumonia": 0, "Lung Lesion": 0, "COVID-19": 0,
      "Support Devices": None, "Fracture": None, "Lung Opacity": None, "Enlarged Cardiomediastinum": None}),
    ("Normal", "kermany-pediatric-cxr",
     {"No Finding": 1, "Pneumonia": 0, "Bacterial pneumonia": 0, "COVID-19": 0, "Support Devices": None,
      "Fracture": None, "Cardiomegaly": None}),
    ("No Finding", "covid-chestxray-dataset",
     {"No Finding": 1, "Pneumonia": 0, "COVID-19": 0, "Support Devices": None, "Fracture": None}),
    ("No Finding", "my-hospital", {"No Finding": 1, "Support Devices": None, "Fracture": None, "Pneumonia": None}),
    ("Effusion;Emphysema", "nih-chestxray14",
     {"Pleural Effusion": 1, "Cardiomegaly": 0, "No Finding": 0, "Lung Opacity": None, "Fracture": None}),
    ("Cardiomegaly;effusion", "my-hospital",
     {"Cardiomegaly": 1, "Pleural Effusion": 1, "No Finding": 0, "Edema": None, "Pneumonia": None}),
    ("Opacity/lung/base/left/mild;Cardiomegaly/mild", "iu-xray-openi",
     {"Lung Opacity": 1, "Cardiomegaly": 1, "No Finding": 0, "Pleural Effusion": None}),
])
def test_harmonise_row(raw, source, expect):
    row = harmonise_row(split_labels(raw), source)
    for f, want in expect.items():
        got = v(row, f)
        assert (np.isnan(got) if want is None else got == want), (f, got, want)


def test_unknown_label_names_raise_only_when_strict(tmp_path):
    with pytest.raises(ManifestError, match="'Pneumonitis'.*canonical findings.*--strict"):
        harmonise_row(["Pneumonitis"], "my-hospital", strict=True)
    assert np.isnan(harmonise_row(["Pneumonitis"], "my-hospital")).all()
    df = pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["p", "q"], "source": ["x", "x"],
                       "labels": ["Edema", "Edema;Bronchiectasis"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match=r"m\.csv: row 3.*'Bronchiectasis'"):
        validate_table(pd.read_csv(tmp_path / "m.csv"), where=str(tmp_path / "m.csv"), strict=True)
    m = Manifest.load(tmp_path / "m.csv")  # the default keeps the row: one unknown name does not stop the load
    assert m.labels()[:, FINDING_INDEX["Edema"]].tolist() == [1, 1]
    assert unmapped_labels(m.table).to_dict("records") == [{"row": 1, "source": "x", "label": "Bronchiectasis"}]


def test_unknown_name_in_a_known_source_keeps_the_row_without_exhaustive_negatives():
    y = harmonise_row(["Cardiomegaly", "Pulmonary_Thing"], "nih-chestxray14")
    assert y[FINDING_INDEX["Cardiomegaly"]] == 1 and y[FINDING_INDEX["No Finding"]] == 0
    # the unknown name might be one of NIH's exhaustive findings: no negatives are invented
    assert np.isnan(y[FINDING_INDEX["Pneumonia"]]) and np.isnan(y[FINDING_INDEX["Edema"]])
    assert y[FINDING_INDEX["COVID-19"]] == 0  # absent from the source whatever the row says
    assert unknown_labels(["Cardiomegaly", "Pulmonary_Thing"], "nih-chestxray14") == ["Pulmonary_Thing"]


C = "covid-chestxray-dataset"


@pytest.mark.parametrize("raw,expect", [
    # the bare leaf a real held-out slice carries, and partial paths
    ("Bacterial", {"Pneumonia": 1, "Bacterial pneumonia": 1, "Viral pneumonia": 0, "COVID-19": 0}),
    ("Pneumonia/Viral", {"Pneumonia": 1, "Viral pneumonia": 1, "Bacterial pneumonia": 0, "COVID-19": 0}),
    ("Pneumonia/Viral/COVID-19", {"Pneumonia": 1, "Viral pneumonia": 1, "COVID-19": 1, "Bacterial pneumonia": 0}),
    ("Pneumonia/Bacterial/Staphylococcus/MRSA", {"Pneumonia": 1, "Bacterial pneumonia": 1, "Viral pneumonia": 0}),
    ("Pneumonia/Bacterial/Nocardia", {"Pneumonia": 1, "Bacterial pneumonia": 1}),
    ("Pneumonia/Viral/Influenza/H1N1", {"Viral pneumonia": 1, "Bacterial pneumonia": 0}),
    ("Pneumonia/Fungal/Pneumocystis", {"Pneumonia": 1, "Bacterial pneumonia": 0, "Viral pneumonia": 0}),
    ("Pneumonia/Fungal/Aspergillosis", {"Pneumonia": 1, "Bacterial pneumonia": 0, "COVID-19": 0}),
    ("Pneumonia/Lipoid", {"Pneumonia": 1, "Bacterial pneumonia": 0, "Viral pneumonia": 0}),
    ("Pneumonia/Aspiration", {"Pneumonia": 1, "Bacterial pneumonia": None, "Viral pneumonia": None}),
    ("Pneumonia", {"Pneumonia": 1, "Bacterial pneumonia": None, "COVID-19": None}),
    # a leaf we do not list under a known parent: the parent still holds
    ("Pneumonia/Bacterial/Some-New-Organism", {"Pneumonia": 1, "Bacterial pneumonia": 1}),
    ("Tuberculosis", {"Pneumonia": 0, "No Finding": 0}),
    ("COVID-19, ARDS", {"COVID-19": 1, "Pneumonia": 1, "Bacterial pneumonia": 0}),  # 2020 snapshots
    ("ARDS", {"Pneumonia": 0, "No Finding": 0}),
    ("No Finding", {"No Finding": 1, "Pneumonia": 0, "Support Devices": None}),
    ("todo", {f: None for f in FINDINGS}),
    ("Unknown", {f: None for f in FINDINGS}),
])
def test_covid_chestxray_taxonomy(raw, expect):
    row = harmonise_row(split_labels(raw), C, strict=True)  # every published name maps without error
    for f, want in expect.items():
        got = v(row, f)
        assert (np.isnan(got) if want is None else got == want), (raw, f, got, want)


def test_kermany_published_folder_names_map():
    y = harmonise_row(["PNEUMONIA/bacteria"], "kermany-pediatric-cxr", strict=True)
    assert y[FINDING_INDEX["Bacterial pneumonia"]] == 1 and y[FINDING_INDEX["Viral pneumonia"]] == 0
    assert harmonise_row(["NORMAL"], "kermany-pediatric-cxr", strict=True)[FINDING_INDEX["No Finding"]] == 1


def test_finding_columns_win_and_uncertain_policy(tmp_path):
    df = pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["p", "q"], "source": ["x", "x"],
                       "labels": ["Edema", "Edema"], "Edema": ["-1", None], "Cardiomegaly": ["1", "0"]})
    m = Manifest.from_table(df, tmp_path)
    y = m.labels()
    assert np.isnan(y[0, FINDING_INDEX["Edema"]]) and np.isnan(y[1, FINDING_INDEX["Edema"]])
    assert y[:, FINDING_INDEX["Cardiomegaly"]].tolist() == [1, 0]
    assert m.labels(uncertain="ones")[0, FINDING_INDEX["Edema"]] == 1
    assert m.labels(uncertain="zeros")[0, FINDING_INDEX["Edema"]] == 0
    assert np.isnan(y[:, FINDING_INDEX["Pneumonia"]]).all()  # columns absent -> unknown, labels ignored


def test_unmapped_only_labels_leave_the_row_unknown():
    from cxrfm.data.findings import harmonise_row

    assert np.isnan(harmonise_row(["todo"], "covid-chestxray-dataset")).all()
    assert np.isnan(harmonise_row(["unknown"], "covid-chestxray-dataset")).all()
    # a real finding outside the list still makes the row labelled: exhaustive negatives hold
    y = harmonise_row(["Emphysema"], "nih-chestxray14")
    assert y[FINDING_INDEX["Cardiomegaly"]] == 0 and y[FINDING_INDEX["No Finding"]] == 0


def test_fungal_pneumonia_is_known_not_bacterial_or_viral():
    from cxrfm.data.findings import harmonise_row

    y = harmonise_row(["Pneumocystis"], "covid-chestxray-dataset")
    assert y[FINDING_INDEX["Pneumonia"]] == 1
    for f in ("Bacterial pneumonia", "Viral pneumonia", "COVID-19"):
        assert y[FINDING_INDEX[f]] == 0, f
