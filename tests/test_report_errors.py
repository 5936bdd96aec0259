"""The clinical-error metric: each error kind on a real-style report, paraphrases, the CLI, bad input."""
from __future__ import annotations

import pandas as pd
import pytest

from cxrfm.cli import main
from cxrfm.data.report_errors import ERROR_KINDS, score_reports

REF = ("FINDINGS: The heart is normal in size. There is a small right pleural effusion. There is patchy "
       "opacity in the left lower lobe. No pneumothorax.\nIMPRESSION: Small right pleural effusion. Left lower "
       "lobe opacity, possibly atelectasis.")


def _one(candidate: str, reference: str = REF) -> dict:
    return score_reports([candidate], [reference])[0]


@pytest.mark.parametrize("kind,candidate", [
    ("wrong_location", REF.replace("right", "left_").replace("left", "right").replace("right_", "left")),
    ("missed_finding", REF.replace("There is a small right pleural effusion.", "No pleural effusion.")
                          .replace("Small right pleural effusion. ", "")),
    ("false_finding", REF + " There is a moderate right pneumothorax."),
    ("wrong_severity", REF.replace("small", "large").replace("Small", "Large")),
    ("false_comparison", REF + " The effusion has increased since the prior radiograph."),
    ("device_error", REF + " Endotracheal tube tip is 4 cm above the carina."),
])
def test_each_injected_error_is_counted_as_its_kind(kind, candidate):
    s = _one(candidate)
    assert s[kind] >= 1, s
    assert s["score"] < 1.0


def test_identical_and_paraphrased_reports_have_no_error():
    assert _one(REF)["errors"] == 0 and _one(REF)["score"] == 1.0
    para = ("FINDINGS: Left lower lobe patchy opacity. Small right pleural fluid collection. No pneumothorax. Normal "
            "heart size.\nIMPRESSION: Left lower lobe opacity, possibly atelectasis. Small right pleural effusion.")
    s = _one(para)
    assert s["errors"] == 0, s
    assert s["matched"] >= 2


def test_normal_reports_match_and_empty_or_foreign_candidates_miss_findings():
    normal = "FINDINGS: The lungs are clear. Heart size is normal.\nIMPRESSION: No acute cardiopulmonary disease."
    assert _one("No acute cardiopulmonary abnormality.", normal) == {**{k: 0 for k in ERROR_KINDS}, "matched": 1,
                                                                      "errors": 0, "score": 1.0}
    for cand in ("", "Épanchement pleural droit de faible abondance.", None):
        s = _one(cand)
        assert s["missed_finding"] >= 2 and s["score"] == 0.0


def test_reference_without_findings_section_is_read_from_its_impression():
    s = _one("Small right pleural effusion.", "IMPRESSION: Small right pleural effusion.")
    assert s["errors"] == 0 and s["matched"] == 1


def test_score_reports_cli_joins_on_id_and_writes_every_kind(tmp_path, capsys):
    cand, ref, out = tmp_path / "c.csv", tmp_path / "r.csv", tmp_path / "s.csv"
    pd.DataFrame({"id": ["a", "b", "x"], "report": [REF, REF + " There is a large left pneumothorax.", "x"]}).to_csv(cand, index=False)
    pd.DataFrame({"id": ["b", "a", "y"], "report": [REF, REF, "y"]}).to_csv(ref, index=False)
    assert main(["score-reports", str(cand), str(ref), "--out", str(out)]) == 0
    got = pd.read_csv(out).set_index("id")
    assert list(got.columns) == [*ERROR_KINDS, "matched", "errors", "score"]
    assert sorted(got.index) == ["a", "b"]
    assert got.loc["a", "score"] == 1.0 and got.loc["b", "false_finding"] == 1
    assert "1 ids only in" in capsys.readouterr().out


def test_score_reports_cli_bad_tables_are_clear_errors(tmp_path, capsys):
    good, bad, dup = tmp_path / "g.csv", tmp_path / "b.csv", tmp_path / "d.csv"
    pd.DataFrame({"id": ["a"], "report": [REF]}).to_csv(good, index=False)
    pd.DataFrame({"id": ["a"], "text": [REF]}).to_csv(bad, index=False)
    pd.DataFrame({"id": ["a", "a"], "report": [REF, REF]}).to_csv(dup, index=False)
    for args, words in (([str(bad), str(good)], "'report'"), ([str(dup), str(good)], "more than once"),
                        ([str(tmp_path / "none.csv"), str(good)], "no such file")):
        assert main(["score-reports", *args, "--out", str(tmp_path / "o.csv")]) == 2
        assert words in capsys.readouterr().err
