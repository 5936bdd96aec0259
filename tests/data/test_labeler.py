"""The rule-based CheXpert-14 labeler (cxrfm.data.labeler) and `cxrfm label`."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.findings import CHEXPERT_14, mesh_to_findings
from cxrfm.data.label_table import label_table_file
from cxrfm.data.labeler import label_reports, label_sentence_findings
from cxrfm.errors import ReportError

IDX = {f: i for i, f in enumerate(CHEXPERT_14)}


def one(text: str) -> dict[str, float]:
    row = label_reports([text])[0]
    return {f: float(row[i]) for f, i in IDX.items() if not math.isnan(row[i])}


@pytest.mark.parametrize("sentence, finding, value", [
    ("No pleural effusion.", "Pleural Effusion", 0.0),
    ("There are no XXXX of a pleural effusion.", "Pleural Effusion", 0.0),
    ("No displaced rib fractures, pneumothorax, or pleural effusion identified.", "Pneumothorax", 0.0),
    ("No displaced rib fractures, pneumothorax, or pleural effusion identified.", "Fracture", 0.0),
    ("Pneumothorax has resolved.", "Pneumothorax", 0.0),
    ("No focal consolidation to suggest pneumonia.", "Pneumonia", 0.0),
    ("Cannot exclude pneumonia.", "Pneumonia", -1.0),
    ("Pneumonia cannot be excluded.", "Pneumonia", -1.0),
    ("Right lower lobe opacity may represent atelectasis or pneumonia.", "Atelectasis", -1.0),
    ("Right lower lobe opacity may represent atelectasis or pneumonia.", "Lung Opacity", 1.0),
    ("Atelectasis versus pneumonia in the left base.", "Atelectasis", -1.0),
    ("No pneumothorax, possible small left effusion.", "Pleural Effusion", -1.0),
    ("No pneumothorax, possible small left effusion.", "Pneumothorax", 0.0),
    ("There is a small left pleural effusion.", "Pleural Effusion", 1.0),
    ("No change in the moderate left pleural effusion.", "Pleural Effusion", 1.0),
    ("Mild cardiomegaly without pulmonary edema.", "Cardiomegaly", 1.0),
    ("Mild cardiomegaly without pulmonary edema.", "Edema", 0.0),
    ("The heart is enlarged.", "Cardiomegaly", 1.0),
    ("The heart size is normal.", "Cardiomegaly", 0.0),
    ("The heart is not significantly enlarged.", "Cardiomegaly", 0.0),
    ("Borderline cardiomegaly.", "Cardiomegaly", -1.0),
    ("The cardiomediastinal silhouette is normal in size and contour.", "Enlarged Cardiomediastinum", 0.0),
    ("The mediastinum is widened.", "Enlarged Cardiomediastinum", 1.0),
    ("Mild pulmonary vascular congestion.", "Edema", -1.0),
    ("No pulmonary vascular congestion.", "Edema", 0.0),
    ("Blunting of the left costophrenic angle.", "Pleural Effusion", -1.0),
    ("Right upper lobe nodule.", "Lung Lesion", 1.0),
    ("Right IJ central venous catheter tip in the SVC.", "Support Devices", 1.0),
    ("Healed right rib fractures.", "Fracture", 1.0),
    ("Apical pleural thickening.", "Pleural Other", 1.0),
    ("Small right apical pneumothorax.", "Pneumothorax", 1.0),
    ("Bibasilar consolidation.", "Consolidation", 1.0),
])
def test_sentence_values(sentence, finding, value):
    assert one(sentence)[finding] == value
    assert label_sentence_findings(sentence)[finding] == value


def test_unmentioned_and_unmentions_are_nan():
    out = one("Calcified granuloma in the right upper lobe.")  # a calcified nodule is not a Lung Lesion
    assert "Lung Lesion" not in out and "Pleural Effusion" not in out
    assert one("Stable cardiomediastinal silhouette.").get("Enlarged Cardiomediastinum") is None


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert one("No pleural effusion. Possible small left effusion.")["Pleural Effusion"] == -1.0
    assert one("Possible small left effusion. There is a small right pleural effusion.")["Pleural Effusion"] == 1.0
    assert one("No pleural effusion. No effusion on the right.")["Pleural Effusion"] == 0.0


def test_no_finding_logic():
    assert one("FINDINGS: Lungs are clear. No effusion.\nIMPRESSION: No acute cardiopulmonary abnormality.")[
        "No Finding"] == 1.0
    # support devices do not block "No Finding" (CheXpert's rule) ...
    assert one("Right IJ catheter tip in the SVC. No acute cardiopulmonary process.") == {
        "No Finding": 1.0, "Support Devices": 1.0}
    # ... but a positive or uncertain pathology does, and so does an abnormality outside the 14
    assert one("Possible left lower lobe pneumonia.")["No Finding"] == 0.0
    assert one("Mild cardiomegaly. No acute disease.")["No Finding"] == 0.0
    assert one("Dextroscoliosis of the thoracic spine. Lungs clear.")["No Finding"] == 0.0
    assert one("No emphysema. Lungs clear.")["No Finding"] == 1.0  # a negated abnormality does not block


def test_label_sentence_findings_normal_statement():
    assert label_sentence_findings("No acute cardiopulmonary abnormality.") == {"No Finding": 1.0}
    assert label_sentence_findings("Normal chest x-XXXX.") == {"No Finding": 1.0}
    assert label_sentence_findings("The lungs are clear.") == {}
    assert label_sentence_findings("") == {}
    assert label_sentence_findings("Small left effusion.") == {"No Finding": 0.0, "Pleural Effusion": 1.0}


def test_label_reports_shape_empty_rows_and_sections():
    texts = [None, "", "   ", float("nan"), "INDICATION: r/o pneumonia", "INDICATION: r/o pneumonia\n"
             "FINDINGS: Lungs clear.\nIMPRESSION: No pneumonia."]
    out = label_reports(texts)
    assert out.shape == (6, 14) and out.dtype == np.float32
    assert np.isnan(out[:5]).all()  # empty text, or no findings/impression: all unknown
    assert out[5, IDX["Pneumonia"]] == 0.0 and out[5, IDX["No Finding"]] == 1.0  # indication not labeled


def test_pipe_in_batches_equals_one_by_one():
    texts = ["No effusion.", "Cardiomegaly.", None, "Possible pneumonia.", "Normal chest."] * 7
    batched = label_reports(texts, batch_size=4)
    single = np.stack([label_reports([t])[0] for t in texts])
    np.testing.assert_array_equal(np.nan_to_num(batched, nan=9), np.nan_to_num(single, nan=9))


def _small_table(tmp_path, suffix=".csv"):
    df = pd.DataFrame({
        "image": [f"img{i}.png" for i in range(5)],
        "patient_id": ["p3", "p1", "p2", "p1", "p9"],
        "source": ["mine"] * 5,
        "report": ["FINDINGS: Small left pleural effusion.\nIMPRESSION: Effusion.", "",
                   "No acute cardiopulmonary abnormality.", "Cannot exclude pneumonia.", "Heart size is normal."],
    })
    path = tmp_path / f"reports{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return df, path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_label_table_file_round_trip_keeps_order(tmp_path, suffix):
    df, path = _small_table(tmp_path, suffix)
    out_path = tmp_path / f"labels{suffix}"
    stats = label_table_file(path, out_path)
    assert "labeled 4 of 5 rows" in stats and "empty report 1" in stats and "reports/s" in stats
    got = pd.read_parquet(out_path) if suffix == ".parquet" else pd.read_csv(out_path)
    assert list(got["image"]) == list(df["image"]) and list(got["patient_id"]) == list(df["patient_id"])
    assert list(got.columns) == list(df.columns) + list(CHEXPERT_14) + ["label_note"]
    assert got["label_note"].iloc[1] == "empty report" and got["label_note"].drop(index=1).isna().all()
    assert got["Pleural Effusion"].iloc[0] == 1 and got["No Finding"].iloc[2] == 1
    assert got["Pneumonia"].iloc[3] == -1 and got["Cardiomegaly"].iloc[4] == 0
    assert got.loc[1, list(CHEXPERT_14)].isna().all()  # the empty report stays, all blank


def test_labeled_csv_is_a_valid_manifest(tmp_path):
    from cxrfm.data.schema import Manifest

    _, path = _small_table(tmp_path)
    label_table_file(path, tmp_path / "labels.csv")
    m = Manifest.load(tmp_path / "labels.csv")
    assert m.table["Pneumonia"].iloc[3] == -1.0 and np.isnan(m.table["Pneumonia"].iloc[1])


def test_missing_column_names_file_columns_and_flag(tmp_path):
    _, path = _small_table(tmp_path)
    with pytest.raises(ReportError, match=r"reports\.csv: no column 'text'.*columns found: image, patient_id, "
                                          r"source, report.*--column"):
        label_table_file(path, tmp_path / "out.csv", column="text")


def test_cli_label_end_to_end(tmp_path, capsys):
    _, path = _small_table(tmp_path)
    out = tmp_path / "out" / "labels.csv"
    assert main(["label", str(path), "--out", str(out)]) == 0
    assert "labeled 4 of 5 rows" in capsys.readouterr().out
    assert pd.read_csv(out)["Pleural Effusion"].iloc[0] == 1
    assert main(["label", str(path), "--out", str(out), "--column", "findings"]) == 2
    err = capsys.readouterr().err
    assert "ReportError" in err and "--column" in err and "Traceback" not in err


def test_cli_label_non_utf8_table(tmp_path, capsys):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("image,patient_id,source,report\na.png,p1,mine,Pleural effusion \xb1 edema\n".encode("latin-1"))
    assert main(["label", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_agreement_with_iu_mesh_on_300_real_reports(shared_data):
    """Macro F1 against the human MeSH terms on the first 300 usable IU reports (measured 0.88)."""
    df = pd.read_csv(shared_data / "text" / "iu_xray_reports.csv", dtype=str, keep_default_na=False)
    df = df[~df["mesh_major"].str.lower().str.contains("no indexing")]
    df = df[(df["findings"].str.strip() != "") | (df["impression"].str.strip() != "")].head(300)
    texts = [f"FINDINGS: {f}\n\nIMPRESSION: {i}" for f, i in zip(df["findings"], df["impression"])]
    labels = label_reports(texts)
    truth = np.zeros_like(labels, dtype=bool)
    for r, cell in enumerate(df["mesh_major"]):
        for term in cell.split(";"):
            for f in mesh_to_findings(term):
                truth[r, IDX[f]] = True
    pred = (labels == 1) | (labels == -1)
    pred[:, 0] = labels[:, 0] == 1
    f1s = []
    for j in range(len(CHEXPERT_14)):
        if truth[:, j].sum() >= 10:
            tp = (truth[:, j] & pred[:, j]).sum()
            f1s.append(2 * tp / (truth[:, j].sum() + pred[:, j].sum()))
    assert len(f1s) >= 7
    assert np.mean(f1s) > 0.80, f"macro F1 {np.mean(f1s):.3f} over {len(f1s)} findings"
