"""The evidence trail per finding and its rule, in ``analyze`` and ``/v1/analyze``, and bad input.

The dual encoder is the session's tiny run and the anatomy model the tiny U-Net (tests/helpers.py). Where a
test needs the peak inside or outside the lungs for sure, the anatomy is a stand-in whose masks are drawn
around the real Grad-CAM peak; concepts and neighbours are given as data.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.helpers import HELD_OUT, natural_png, tiny_anatomy, tiny_index  # noqa: E402

ZONE = re.compile(r"^(left|right) (upper|middle|lower) zone$")
CHROMIUM = Path("/usr/bin/chromium")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def anatomy_dir(tmp_path_factory, shared_data, one_torch_thread):
    return tiny_anatomy(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def analyzer(run_dir, anatomy_dir):
    from cxrfm.inference.analyze import Analyzer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRFM_ANATOMY", str(anatomy_dir))
        return Analyzer(run_dir, tiny_index(run_dir))


@pytest.fixture(scope="module")
def cxr(analyzer, shared_data):
    """(image, bytes, analysis) of the first held-out CXR the gate accepts."""
    from cxrfm.data.images import read_image_bytes
    from cxrfm.inference.analyze import Refused

    for name in HELD_OUT:
        data = (shared_data / "cxr" / "images" / name).read_bytes()
        img = read_image_bytes(data, name=name)
        try:
            return img, data, analyzer.analyze(img, source=data)
        except Refused:
            continue
    pytest.fail("no held-out CXR passed the OOD gate")


@pytest.fixture(scope="module")
def emb(analyzer, cxr):
    return analyzer.embed_image(cxr[0])


class BoxAnatomy:
    """Stand-in anatomy: lungs and heart as boxes given in fractions of the image (top, bottom, left, right)."""

    def __init__(self, **boxes):
        self.boxes = boxes

    def structures(self, img):
        _, h, w = img.shape
        out = {}
        for name in ("left_lung", "right_lung", "heart"):
            m = np.zeros((h, w), bool)
            t, b, left, r = self.boxes.get(name, (0, 0, 0, 0))
            m[int(t * h):int(b * h), int(left * w):int(r * w)] = True
            out[name] = m
        return out


def _probs(analyzer, **high):
    p = {f: 0.05 for f in analyzer.findings}
    p.update({f.replace("_", " "): v for f, v in high.items()})
    return p


def _entry(entries, finding):
    return next(e for e in entries if e["finding"] == finding)


def _peak(analyzer, img, finding):
    from cxrfm.inference.evidence import EvidenceBuilder
    from cxrfm.inference.evidence_regions import heat_peak

    heat = EvidenceBuilder(analyzer.model, analyzer.head).heatmaps(img, [finding])[finding]
    peak = heat_peak(heat, img.shape[1], img.shape[2])
    assert peak is not None, "the tiny model's Grad-CAM map is flat: no peak to place"
    return peak


def _away(analyzer, img, *findings):
    """Lungs as two small boxes in a band of rows that holds none of the findings' Grad-CAM peaks (the tiny
    model's peaks move between machines, so the boxes follow them rather than sit in fixed corners)."""
    h = img.shape[1]
    rows = [_peak(analyzer, img, f)["y"] / h for f in findings]
    for top in (0.9, 0.0, 0.45, 0.2, 0.7):
        if not any(top - 0.01 <= r <= top + 0.11 for r in rows):
            return BoxAnatomy(right_lung=(top, top + 0.1, 0, 0.1), left_lung=(top, top + 0.1, 0.9, 1))
    pytest.fail(f"no band of rows is free of the peaks at {rows}")


# ---------------------------------------------------------------- regions (no model)
def test_zones_are_thirds_of_each_lung_and_left_is_the_patients_left():
    from cxrfm.inference.evidence_regions import locate, region_supports

    masks = BoxAnatomy(right_lung=(0.1, 0.7, 0.1, 0.45), left_lung=(0.1, 0.9, 0.55, 0.9),
                       heart=(0.5, 0.85, 0.35, 0.7)).structures(np.zeros((1, 100, 100)))
    cases = {(80, 85): "left lower zone", (20, 15): "right upper zone", (60, 25): "left upper zone",
             (20, 60): "right lower zone", (30, 40): "right middle zone"}
    for (x, y), zone in cases.items():
        place = locate({"x": x, "y": y, "value": 1.0}, masks, 100, 100)
        assert place["zone"] == zone, (x, y, place)
        assert region_supports("Consolidation", place) and not region_supports("Cardiomegaly", place)
    heart = locate({"x": 50, "y": 80, "value": 1.0}, masks, 100, 100)  # between the lungs, in the heart
    assert heart["inside"] == ["heart"] and heart["in_mediastinum"] and "cardiac silhouette" in heart["where"]
    assert region_supports("Cardiomegaly", heart) and region_supports("Enlarged Cardiomediastinum", heart)
    assert not region_supports("Consolidation", heart) and region_supports("Pleural Effusion", heart)
    outside = locate({"x": 2, "y": 98, "value": 1.0}, masks, 100, 100)
    assert not outside["in_thorax"] and outside["zone"] is None and outside["where"] == "outside the thorax"
    assert not any(region_supports(f, outside) for f in ("Consolidation", "Pleural Effusion", "Cardiomegaly"))
    scaled = locate({"x": 800, "y": 850, "value": 1.0}, masks, 1000, 1000)  # masks at another size
    assert scaled["zone"] == "left lower zone"


# ---------------------------------------------------------------- the trail in analyze
def test_analysis_has_a_trail_per_finding_and_every_sentence_points_into_it(analyzer, cxr):
    from cxrfm.data.labeler import label_reports
    from cxrfm.inference.evidence import evidence_id
    from cxrfm.tasks.report import text_for_scoring

    img, _, out = cxr
    ev = out["evidence"]
    assert [e["id"] for e in ev] == [evidence_id(f) for f in analyzer.findings]
    prob = {f["finding"]: f["probability"] for f in out["findings"]}
    ids = {e["id"] for e in ev}
    sr = out["structured_report"]
    for s in [s for sec in sr["sections"] for s in sec["sentences"]] + sr["impression"]:
        assert set(s["evidence"]) <= ids and s["text"] in out["report"]
    assert sr["statuses"] == {e["finding"]: e["status"] for e in ev}
    h, w = img.shape[1:]
    for e in ev:
        assert e["probability"] == prob[e["finding"]] and e["head"] == analyzer.head.kind_of(e["finding"])
        assert e["operating_point"]["possible"] == 0.35 and e["operating_point"]["likely"] == 0.65
        if e["drafted"] == "absent" or e["finding"] == "No Finding":
            assert e["region"] is None and e["trace"] is None and e["supported"] is None
            continue
        r = e["region"]
        if r["peak"] is not None:
            assert 0 <= r["peak"]["x"] < w and 0 <= r["peak"]["y"] < h and 0 < r["peak"]["value"] <= 1
        assert r["zone"] is None or ZONE.match(r["zone"]), r
        assert f"probability {e['probability']:.2f}" in e["trace"] and e["trace"].count(" -> ") == 2
        assert (e["status"] == "present") == (e["drafted"] == "present" and e["supported"])
        assert bool(e["downgraded"]) == (e["drafted"] == "present" and not e["supported"])
    read = label_reports([text_for_scoring(out["report"])])[0]
    for j, f in enumerate(analyzer.findings[:14]):
        want = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}[sr["statuses"][f]]
        if f not in ("No Finding", "Pneumonia"):  # Pneumonia also carries its sub-types
            assert read[j] == want, (f, read[j], out["report"])


def test_a_finding_without_evidence_is_not_stated_as_present(analyzer, cxr, emb):
    from cxrfm.data.labeler import label_sentence_findings
    from cxrfm.inference.evidence import EvidenceBuilder
    from cxrfm.inference.report import draft_report

    img = cxr[0]
    peak = _peak(analyzer, img, "Consolidation")
    px = peak["x"] / img.shape[2]
    away = _away(analyzer, img, "Consolidation")
    probs = _probs(analyzer, Consolidation=0.9)
    entries, maps = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=away).collect(img, emb, probs)
    e = _entry(entries, "Consolidation")
    assert e["drafted"] == "present" and e["status"] == "uncertain" and e["supported"] is False
    assert e["region"]["supports"] is False and "Grad-CAM peak" in e["downgraded"]
    assert "no concepts for this run" in e["downgraded"] and "no retrieval index" in e["downgraded"]
    assert set(maps) == {"Consolidation"}
    text = draft_report(probs, evidence=entries)["text"]
    assert "Possible consolidation (p = 0.90" in text and "\n  Consolidation (p = 0.90)." not in text
    sentence = next(ln for ln in text.splitlines() if "consolidation (p" in ln.lower())
    assert label_sentence_findings(sentence)["Consolidation"] == -1.0
    assert "impression: consolidation is possible, not stated as present" in e["trace"]
    # the same finding with the peak inside the right lung (the image's left half) is stated as present
    cover = BoxAnatomy(right_lung=(0, 1, 0, max(px, 0.5) + 0.01), left_lung=(0, 1, max(px, 0.5) + 0.01, 1))
    entries, _ = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=cover).collect(img, emb, probs)
    e = _entry(entries, "Consolidation")
    assert e["status"] == "present" and e["support"]["region"] and e["downgraded"] is None
    assert e["region"]["zone"].startswith("right ") and e["region"]["zone"] in e["trace"]
    assert e["trace"].endswith("-> impression: consolidation is likely")
    assert "\n  Consolidation (p = 0.90)." in draft_report(probs, evidence=entries)["text"]
    # no anatomy model: the peak cannot be placed, which is no support
    entries, _ = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=None,
                                 anatomy_note="no model here").collect(img, emb, probs)
    e = _entry(entries, "Consolidation")
    assert e["status"] == "uncertain" and "cannot be placed: no model here" in e["downgraded"]


def test_concepts_neighbours_and_the_ctr_support_or_contradict(analyzer, cxr, emb):
    from cxrfm.inference.evidence import EvidenceBuilder

    img = cxr[0]
    away = _away(analyzer, img, "Consolidation", "Pleural Effusion", "Atelectasis")

    class Concepts:  # two fired features, one enriched for consolidation
        names = [{"findings": [{"value": "Consolidation", "odds_ratio": 4.2}], "words": []},
                 {"findings": [], "words": [{"value": "effusion"}]}]

        def encode(self, e):
            return np.array([[0.7, 0.3]], np.float32)

        def name(self, k):
            return ["airspace opacity", "fluid"][k]

    probs = _probs(analyzer, Consolidation=0.9, Pleural_Effusion=0.8, Atelectasis=0.9)
    b = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=away, concepts=Concepts())
    entries, _ = b.collect(img, emb, probs)
    c = _entry(entries, "Consolidation")
    assert c["status"] == "present" and c["concepts"][0]["feature"] == 0 and "odds ratio 4.2" in c["concepts"][0]["link"]
    assert "concept #0 'airspace opacity'" in c["trace"]
    pe = _entry(entries, "Pleural Effusion")
    assert pe["status"] == "present" and pe["concepts"][0]["link"] == "enriched report word 'effusion'"
    assert _entry(entries, "Atelectasis")["status"] == "uncertain"  # no concept links to it
    near = [{"id": "a", "similarity": 0.9, "report": "FINDINGS: Right basilar atelectasis. No effusion."},
            {"id": "b", "similarity": 0.8, "report": "Bibasilar atelectasis is again noted."},
            {"id": "c", "similarity": 0.7, "report": "Normal chest."}]
    entries, _ = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=away).collect(img, emb, probs, neighbours=near)
    a = _entry(entries, "Atelectasis")
    assert a["status"] == "present" and [n["id"] for n in a["neighbours"]] == ["a", "b"]
    assert a["neighbours"][0]["sentences"] == ["Right basilar atelectasis."]
    assert _entry(entries, "Consolidation")["status"] == "uncertain"  # no neighbour states it
    one = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=away).collect(img, emb, probs, neighbours=near[:1] +
                                                                                 near[2:])[0]
    assert _entry(one, "Atelectasis")["status"] == "uncertain"  # 1 of 2 is below MIN_NEIGHBOURS
    cardio = _probs(analyzer, Cardiomegaly=0.9)
    small = {"ratio": 0.42, "enlarged": False, "refused": None, "view": "PA"}
    e = _entry(b.collect(img, emb, cardio, ctr=small)[0], "Cardiomegaly")
    assert e["status"] == "uncertain" and e["downgraded"] == "the CTR 0.42 is at or below 0.5"
    big = {"ratio": 0.61, "enlarged": True, "refused": None, "view": "PA"}
    e = _entry(b.collect(img, emb, cardio, ctr=big)[0], "Cardiomegaly")
    assert e["status"] == "present" and e["support"]["ctr"] and "CTR 0.61" in e["trace"]
    # without an anatomy entry (evaluation) the builder measures the CTR from its own masks
    wide = BoxAnatomy(right_lung=(0.1, 0.9, 0.1, 0.45), left_lung=(0.1, 0.9, 0.55, 0.9), heart=(0.5, 0.85, 0.2, 0.8))
    entries, draft = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=wide).draft(img, emb, cardio, view="PA")
    e = _entry(entries, "Cardiomegaly")
    assert e["ctr"]["ratio"] == pytest.approx(0.75, abs=0.02) and e["ctr"]["enlarged"] and e["status"] == "present"
    assert "\n  Cardiomegaly (p = 0.90)." in draft["text"] and draft["statuses"]["Cardiomegaly"] == "present"
    lateral = EvidenceBuilder(analyzer.model, analyzer.head, anatomy=away).draft(img, emb, cardio, view="LATERAL")[0]
    e = _entry(lateral, "Cardiomegaly")
    assert e["ctr"]["ratio"] is None and "lateral" in e["ctr"]["refused"] and e["status"] == "uncertain"


# ---------------------------------------------------------------- HTTP, OpenAPI, refusal
@pytest.fixture(scope="module")
def client(analyzer):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import create_app

    with TestClient(create_app(analyzer.run_dir, analyzer=analyzer)) as c:
        yield c


def test_api_returns_the_trail_and_pointers_and_openapi_documents_them(client, cxr):
    r = client.post("/v1/analyze", files={"file": ("scan.png", cxr[1], "application/octet-stream")})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["report"] == cxr[2]["report"] and j["evidence"] == cxr[2]["evidence"]
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/v1/analyze"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"evidence", "structured_report"} <= set(schema["required"])
    assert "trace" in schema["properties"]["evidence"]["items"]["required"]
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    v = jsonschema_rs.Draft202012Validator(schema)
    v.validate(j)
    assert not v.is_valid({**j, "evidence": [{**j["evidence"][0], "status": "maybe"}]})
    sr = j["structured_report"]
    assert not v.is_valid({**j, "structured_report": {**sr, "impression": [{"text": "x"}]}})


def test_an_image_the_gate_refuses_gets_the_refusal_not_a_report(client):
    r = client.post("/v1/analyze", files={"file": ("p.png", natural_png("astronaut"), "application/octet-stream")})
    assert r.status_code == 422
    j = r.json()
    assert j["is_cxr"] is False and "not look like a chest radiograph" in j["detail"]
    assert not {"report", "structured_report", "evidence"} & set(j)


# ---------------------------------------------------------------- bad references for the error metric
def test_unreadable_references_are_not_scored_and_say_why(tmp_path, capsys):
    import pandas as pd

    from cxrfm.cli import main
    from cxrfm.data.report_errors import score_reports, summarize_scores, unreadable_reference

    cand = "FINDINGS: Small right pleural effusion. No pneumothorax."
    refs = {"empty": "", "none": None, "spaces": "  \n ", "history": "INDICATION: cough. COMPARISON: none.",
            "es": "Derrame pleural derecho moderado. No hay neumotórax.", "de": "Kein Nachweis eines Pneumothorax. "
            "Herz normal groß.", "ru": "Пневмоторакс справа.", "ok": "IMPRESSION: Right pleural effusion."}
    rows = score_reports([cand] * len(refs), list(refs.values()))
    got = dict(zip(refs, rows))
    for k in ("empty", "none", "spaces"):
        assert got[k]["unscored"] == "empty reference report" and got[k]["score"] is None
    assert "no findings or impression section" in got["history"]["unscored"]
    for k in ("es", "de", "ru"):
        assert "English" in got[k]["unscored"] and got[k]["false_finding"] is None, got[k]
    assert "unscored" not in got["ok"] and got["ok"]["score"] == 1.0
    s = summarize_scores(rows)
    assert s["n"] == 1 and s["mean_score"] == 1.0 and s["n_unscored"] == 7 and s["unscored"]["empty reference report"] == 3
    assert unreadable_reference("The lungs are clear. There is no pleural effusion.") is None
    c, r, out = tmp_path / "c.csv", tmp_path / "r.csv", tmp_path / "s.csv"
    pd.DataFrame({"id": ["a", "b"], "report": [cand, cand]}).to_csv(c, index=False)
    pd.DataFrame({"id": ["a", "b"], "report": [refs["es"], refs["ok"]]}).to_csv(r, index=False)
    assert main(["score-reports", str(c), str(r), "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("id")
    assert np.isnan(table.loc["a", "score"]) and "English" in table.loc["a", "unscored"]
    assert table.loc["b", "score"] == 1.0
    printed = capsys.readouterr().out
    assert "1 scored pairs" in printed and "not scored" in printed


def test_no_real_english_report_is_taken_for_another_language(shared_data):
    import pandas as pd

    from cxrfm.data.report_errors import not_english

    iu = pd.read_csv(shared_data / "text" / "iu_xray_reports.csv")
    texts = [" ".join(x for x in (f, i) if isinstance(x, str)) for f, i in zip(iu["findings"], iu["impression"])]
    flagged = [t for t in texts[:1500] if t.strip() and not_english(t)]
    assert flagged == []
    for t in ("Consolidamento basale destro. Non versamento pleurico.", "Geen pneumothorax. Hart niet vergroot.",
              "Sem derrame pleural. Coração normal.", "右側胸水あり。"):
        assert not_english(t), t


# ---------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def evidence_server(run_dir, anatomy_dir):
    from tests.helpers import free_port, start_server, stop_server

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CXRFM_ANATOMY": str(anatomy_dir)}
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "cxrfm", "serve", "--model", str(run_dir), "--index",
                         str(tiny_index(run_dir)), "--host", "127.0.0.1", "--port", str(port)], env, url + "/v1/health")
    try:
        yield url
    finally:
        stop_server(proc)


def test_page_shows_the_evidence_of_a_sentence_on_hover_and_on_keyboard_focus(evidence_server, cxr, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    scan = tmp_path / "scan.png"
    scan.write_bytes(cxr[1])
    ev = {e["id"]: e for e in cxr[2]["evidence"]}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(evidence_server + "/")
            page.set_input_files("#file", str(scan))
            page.wait_for_selector("#results:not([hidden])", timeout=30_000)
            assert "IMPRESSION:" in page.inner_text("#report")
            sentences = page.locator("#report .sentence[data-evidence]")
            assert sentences.count() >= 6 and page.is_hidden("#evidence-box")
            first = sentences.nth(0)
            ids = first.get_attribute("data-evidence").split()
            first.hover()
            box = page.inner_text("#evidence-box")
            assert first.inner_text() in box and ev[ids[0]]["finding"] in box
            stated = [e for e in cxr[2]["evidence"] if e["trace"]]
            assert page.locator("#traces li").count() == max(1, len(stated))
            if stated:
                assert stated[0]["finding"] in page.inner_text("#traces")
            # keyboard: Tab moves from one sentence to the next and the box follows
            first.focus()
            page.keyboard.press("Tab")
            second = sentences.nth(1)
            assert page.evaluate("document.activeElement.dataset.evidence") == second.get_attribute("data-evidence")
            assert second.inner_text() in page.inner_text("#evidence-box")
            marked = [e for e in (ev[i] for i in second.get_attribute("data-evidence").split())
                      if e["region"] and e["region"]["peak"]]
            assert page.locator("#evidence-overlay circle.peak").count() == len(marked)
            page.close()
        finally:
            browser.close()
