"""The structured draft (SRRG-style): organ systems, present / absent / uncertain, a ranked impression,
sentences pointing to evidence, and the labeler reading the draft back to what it was drafted from."""
from __future__ import annotations

import numpy as np

from cxrfm.data.findings import CHEXPERT_14, FINDINGS, PNEUMONIA_SUBTYPES
from cxrfm.data.labeler import label_reports, label_sentence_findings
from cxrfm.inference.evidence import evidence_id
from cxrfm.inference.report import SYSTEMS, draft_report, structured_report
from cxrfm.tasks.report import text_for_scoring

VALUE = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}


def _expected(statuses: dict[str, str], finding: str) -> float:
    """What the labeler should read for a CheXpert column: pneumonia sub-types are read as Pneumonia, and
    positive beats uncertain beats negative (the labeler's own aggregation)."""
    group = [finding] + (list(PNEUMONIA_SUBTYPES) if finding == "Pneumonia" else [])
    vals = [VALUE[statuses[g]] for g in group if g in statuses]
    return next((v for v in (1.0, -1.0, 0.0) if v in vals), np.nan)


def _trail(probs: dict[str, float], downgrade: set[str]) -> list[dict]:
    out = []
    for f, p in probs.items():
        st = "present" if p >= 0.65 else "uncertain" if p >= 0.35 else "absent"
        out.append({"id": evidence_id(f), "finding": f, "status": "uncertain" if f in downgrade else st,
                    "downgraded": "no supporting evidence" if f in downgrade and st == "present" else None})
    return out


def test_the_labeler_reads_the_draft_back_to_the_statuses_it_was_drafted_from():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(120):
        probs = {f: float(rng.choice([0.1, 0.5, 0.9])) for f in FINDINGS if rng.random() < 0.85}
        down = {f for f, p in probs.items() if p >= 0.65 and rng.random() < 0.5} if trial % 2 else set()
        d = draft_report(probs, evidence=_trail(probs, down) if trial % 2 else None)
        assert all(d["statuses"][f] == "uncertain" for f in down)
        read = label_reports([text_for_scoring(d["text"])])[0]
        for j, f in enumerate(CHEXPERT_14):
            if f == "No Finding":
                continue
            want = _expected(d["statuses"], f)
            assert (np.isnan(want) and np.isnan(read[j])) or read[j] == want, (f, want, read[j], d["text"])
            checked += int(not np.isnan(want))
        # and sentence by sentence: every findings sentence states exactly its findings' statuses
        for sec in d["sections"]:
            for s in sec["sentences"]:
                got = label_sentence_findings(s["text"])
                for f in s["findings"]:
                    col = "Pneumonia" if f in PNEUMONIA_SUBTYPES else f
                    assert got.get(col) == VALUE[s["status"]], (s["text"], f, got)
    assert checked > 1000


def test_sections_by_organ_system_every_finding_once_with_its_evidence_pointer():
    probs = {f: 0.1 for f in FINDINGS}
    probs.update({"Pleural Effusion": 0.9, "Cardiomegaly": 0.5, "Support Devices": 0.8, "Fracture": 0.4})
    trail = _trail(probs, set())
    d = draft_report(probs, evidence=trail)
    assert [s["system"] for s in d["sections"]] == [k for k in SYSTEMS if k != "other"]
    ids = {e["id"] for e in trail}
    seen: dict[str, int] = {}
    for sec in d["sections"]:
        for s in sec["sentences"]:
            assert s["evidence"] and set(s["evidence"]) <= ids, s
            assert [evidence_id(f) for f in s["findings"]] == s["evidence"]
            for f in s["findings"]:
                seen[f] = seen.get(f, 0) + 1
                assert f in dict(SYSTEMS[sec["system"]][1]), (f, sec["system"])
    assert seen == {f: 1 for f in FINDINGS if f != "No Finding"}
    pleura = next(s for s in d["sections"] if s["system"] == "pleura")
    assert pleura["sentences"][0] == {"id": pleura["sentences"][0]["id"], "text": "Pleural effusion (p = 0.90).",
                                      "status": "present", "findings": ["Pleural Effusion"],
                                      "evidence": ["ev-pleural-effusion"]}
    assert all(s["evidence"] for s in d["impression"])
    assert len({s["id"] for sec in d["sections"] for s in sec["sentences"]} | {s["id"] for s in d["impression"]}) \
        == sum(len(sec["sentences"]) for sec in d["sections"]) + len(d["impression"])  # sentence ids are unique


def test_impression_ranks_present_first_then_urgency_then_probability():
    probs = {"Cardiomegaly": 0.95, "Pneumothorax": 0.70, "Edema": 0.60, "Atelectasis": 0.62, "Fracture": 0.1}
    d = draft_report(probs)
    assert [s["findings"][0] for s in d["impression"]] == ["Pneumothorax", "Cardiomegaly", "Edema", "Atelectasis"]
    assert d["impression"][0]["text"] == "1. Likely pneumothorax."
    assert d["impression"][2]["text"] == "3. Possible pulmonary edema."
    # a downgraded finding falls behind every present one
    d = draft_report(probs, evidence=_trail(probs, {"Pneumothorax"}))
    assert [s["findings"][0] for s in d["impression"]][:2] == ["Cardiomegaly", "Pneumothorax"]
    assert "Possible pneumothorax (p = 0.70, above 0.65 but unsupported by the image evidence)." in d["text"]
    assert "Pneumothorax (p = 0.70)." not in d["text"]


def test_normal_and_unassessed_studies_and_the_plain_text_api():
    normal = draft_report({"Pleural Effusion": 0.1, "Pneumothorax": 0.2, "No Finding": 0.9})
    assert [s["text"] for s in normal["impression"]] == ["No acute cardiopulmonary abnormality."]
    assert "No pleural effusion or pneumothorax." in normal["text"] and "Not assessed." in normal["text"]
    odd = draft_report({"Pleural Effusion": 0.1, "No Finding": 0.1})
    assert odd["impression"][0]["text"].startswith("Abnormal study without a specific finding")
    probs = {"Edema": 0.8, "Cardiomegaly": 0.2, "Made Up": 0.99, "Fracture": float("nan")}
    assert structured_report(probs) == draft_report(probs)["text"]
    assert "Made Up" not in structured_report(probs) and "fracture" not in structured_report(probs).lower()
    moved = draft_report({"Edema": 0.5}, thresholds={"likely": 0.45})
    assert moved["statuses"] == {"Edema": "present"} and moved["thresholds"] == {"possible": 0.35, "likely": 0.45}
