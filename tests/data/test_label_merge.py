"""`cxrfm label` loses nothing (issue 9): source labels stay where the source knows them, every input
row stays, and a huge report is a per-row note, not a crash or a quadratic stall."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.findings import CHEXPERT_14, FINDING_INDEX, FINDINGS
from cxrfm.data.label_table import label_table_file, merge_labels
from cxrfm.data.labeler import CHUNK_CHARS, label_reports, label_reports_with_notes, split_for_labeling
from cxrfm.data.schema import Manifest
from cxrfm.errors import ReportError

IDX = {f: i for i, f in enumerate(CHEXPERT_14)}


def test_label_output_keeps_the_source_labels_on_the_real_data(cxr_manifest_path, tmp_path, capsys):
    """Used as a manifest, the labeled table once lost 94 % of the known cells (17,216 -> 662)."""
    out = tmp_path / "labeled.csv"
    assert main(["label", str(cxr_manifest_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    before = Manifest.load(cxr_manifest_path).labels(uncertain="zeros")
    after = Manifest.load(out).labels(uncertain="zeros")
    known = ~np.isnan(before)
    np.testing.assert_array_equal(after[known], before[known])  # every source cell kept as it was
    assert (~np.isnan(after)).sum() > known.sum()  # and the labeler filled some unknown ones
    pna = FINDING_INDEX["Pneumonia"]
    assert (after[:, pna] == 1).sum() >= (before[:, pna] == 1).sum() == 1237
    for f in ("COVID-19", "Bacterial pneumonia", "Viral pneumonia"):  # the sub-types survive too
        assert (after[:, FINDING_INDEX[f]] == 1).sum() == (before[:, FINDING_INDEX[f]] == 1).sum() > 200
    n_source = int(known.sum())
    assert f"source decided {n_source} (kept)" in printed and "labeler filled" in printed
    assert "disagreed on" in printed and "labeled.disagreements.csv" in printed
    dis = pd.read_csv(tmp_path / "labeled.disagreements.csv")
    assert {"row", "image", "finding", "source_value", "labeler_value"} <= set(dis.columns)
    assert (dis["source_value"] != dis["labeler_value"]).all()


def test_merge_counts():
    src = np.full((2, len(FINDINGS)), np.nan, dtype=np.float32)
    src[0, FINDING_INDEX["Pneumonia"]] = 1
    src[1, FINDING_INDEX["Edema"]] = 0
    src[1, FINDING_INDEX["COVID-19"]] = 0
    lab = np.full((2, 14), np.nan, dtype=np.float32)
    lab[0, IDX["Pneumonia"]] = 0  # disagrees: the source wins
    lab[0, IDX["Edema"]] = 1  # unknown to the source: filled
    lab[1, IDX["Edema"]] = -1  # uncertain where the source knows
    merged, c = merge_labels(src, lab)
    assert merged[0, FINDING_INDEX["Pneumonia"]] == 1 and merged[0, FINDING_INDEX["Edema"]] == 1
    assert merged[1, FINDING_INDEX["Edema"]] == 0 and merged[1, FINDING_INDEX["COVID-19"]] == 0
    assert (c.source, c.labeler, c.both, c.disagree_neg, c.disagree_pos, c.uncertain) == (3, 1, 2, 1, 0, 1)


def test_source_finding_columns_win_over_the_labeler(tmp_path):
    pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["p", "q"], "source": ["chexpert"] * 2,
                  "Edema": ["-1", ""], "Cardiomegaly": ["0", ""],
                  "report": ["Pulmonary edema. The heart is enlarged.", "The heart is enlarged."]}
                 ).to_csv(tmp_path / "m.csv", index=False)
    stats = label_table_file(tmp_path / "m.csv", tmp_path / "o.csv")
    got = pd.read_csv(tmp_path / "o.csv")
    assert got["Edema"].tolist()[0] == -1 and got["Cardiomegaly"].tolist() == [0, 1]
    assert "labeler 1 vs source 0: 1" in stats


def test_whitespace_only_report_row_is_kept(tmp_path, capsys):
    """A one-column CSV whose middle line is blanks: pandas skips that line unless told not to."""
    (tmp_path / "r.csv").write_text("report\nNo effusion.\n   \nCardiomegaly.\n", encoding="utf-8")
    assert main(["label", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o.csv")]) == 0
    assert "labeled 2 of 3 rows" in capsys.readouterr().out
    got = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    assert len(got) == 3 and got["report"].tolist()[1].strip() == ""
    assert got["label_note"].tolist() == ["", "empty report", ""]
    assert got["Cardiomegaly"].tolist()[2] == "1" and got["Pleural Effusion"].tolist()[0] == "0"


def test_output_over_the_input_is_refused(tmp_path):
    (tmp_path / "r.csv").write_text("report\nNo effusion.\n", encoding="utf-8")
    with pytest.raises(ReportError, match=r"r\.csv: is the input table.*another --out"):
        label_table_file(tmp_path / "r.csv", tmp_path / "r.csv")


def test_one_megabyte_report_is_a_per_row_note(tmp_path, capsys):
    """A 1 MB cell once crashed the whole file (spaCy's max_length) after minutes of quadratic work."""
    huge = "FINDINGS: Small left pleural effusion. " + "Stable appearance of the chest. " * 32_000
    assert len(huge) > 1_000_000
    pd.DataFrame({"report": ["Cardiomegaly.", huge, "No pneumothorax."]}).to_csv(tmp_path / "r.csv", index=False)
    assert main(["label", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o.csv")]) == 0
    printed = capsys.readouterr().out
    assert "labeled 2 of 3 rows" in printed and "over max_chars 1" in printed
    got = pd.read_csv(tmp_path / "o.csv")
    assert len(got) == 3 and got.loc[1, list(CHEXPERT_14)].isna().all()
    assert "over max_chars=20,000" in got["label_note"][1] and "--max-chars" in got["label_note"][1]
    assert got["Cardiomegaly"][0] == 1 and got["Pneumothorax"][2] == 0
    assert main(["label", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o.csv"), "--max-chars", "-1"]) == 2


def test_long_report_is_labeled_in_bounded_pieces():
    """Past CHUNK_CHARS a report is labeled in sentence-aligned pieces (linear work) with the same result."""
    short = "Small left pleural effusion. Possible pneumonia. No pneumothorax. The heart is not enlarged. "
    long = short * 400  # ~37,000 characters
    pieces = split_for_labeling(long)
    assert "".join(pieces) == long and max(map(len, pieces)) <= CHUNK_CHARS and len(pieces) > 10
    assert all(p.endswith(". ") for p in pieces[:-1])  # cut at sentence ends
    one, many = label_reports([short])[0], label_reports([long], max_chars=None)[0]
    np.testing.assert_array_equal(np.nan_to_num(many, nan=9), np.nan_to_num(one, nan=9))
    # no sentence end at all: cut at spaces, still bounded
    run_on = "opacity " * 5_000
    assert max(map(len, split_for_labeling(run_on))) <= CHUNK_CHARS and "".join(split_for_labeling(run_on)) == run_on
    _, notes = label_reports_with_notes([long])
    assert "over max_chars=20,000" in notes[0]


def test_summary_counts_unmapped_labels_and_labeler_notes(tmp_path):
    from cxrfm.data.summary import summarize

    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "patient_id": ["p", "q", "r"],
                  "source": ["covid-chestxray-dataset"] * 3, "labels": ["Bacterial", "Pneumonia/Viral/Novel", "Zzz"],
                  "report": ["", "x" * 30, "Cardiomegaly."]}).to_csv(tmp_path / "m.csv", index=False)
    label_table_file(tmp_path / "m.csv", tmp_path / "o.csv", max_chars=20)
    text = summarize(Manifest.load(tmp_path / "o.csv"))
    assert "rows the report labeler could not read: empty report 1, over max_chars 1" in text
    text = summarize(Manifest.load(tmp_path / "m.csv"))
    assert "1 row(s) carry raw labels cxrfm cannot map, unknown for those rows: 'Zzz' 1" in text


def test_control_characters_do_not_hide_sentence_ends():
    plain, nul = label_reports(["No effusion. Cardiomegaly.", "No effusion.\x00 Cardiomegaly.\x07"])
    np.testing.assert_array_equal(np.nan_to_num(nul, nan=9), np.nan_to_num(plain, nan=9))
    assert nul[IDX["Cardiomegaly"]] == 1


def test_invalid_source_cell_is_an_error_not_overwritten(tmp_path):
    pd.DataFrame({"report": ["Cardiomegaly."], "Cardiomegaly": ["yes"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ReportError, match=r"m\.csv: row 2: column 'Cardiomegaly' holds 'yes'"):
        label_table_file(tmp_path / "m.csv", tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_labeled_manifest_in_another_folder_still_finds_its_images(cxr_manifest_path, tmp_path):
    src = Manifest.load(cxr_manifest_path).subset([0, 1, 2])
    src.save(tmp_path / "m.csv")
    label_table_file(tmp_path / "m.csv", tmp_path / "sub" / "deeper" / "labeled.csv")
    out = Manifest.load(tmp_path / "sub" / "deeper" / "labeled.csv")
    assert [p.resolve() for p in out.image_paths()] == [p.resolve() for p in src.image_paths()]
    assert all(p.is_file() for p in out.image_paths())
