"""Anatomy in /v1/analyze and on the page: heart and lung outlines and the cardiothoracic ratio.

The anatomy model is a tiny U-Net (32 px, widths 4/8) trained for a few seconds on 12 rows of the real
anatomy data and saved with ``save_anatomy`` into a tmp folder that ``CXRFM_ANATOMY`` names (the shipped
weights come later; ``tiny_anatomy`` in tests/helpers.py); the dual encoder is the session's tiny run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.helpers import HELD_OUT, natural_png, tiny_anatomy  # noqa: E402

STRUCTURES = {"left_lung", "right_lung", "heart"}
CHROMIUM = Path("/usr/bin/chromium")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def anatomy_dir(tmp_path_factory, shared_data, one_torch_thread):
    """A tiny U-Net trained 60 steps on 12 training-split rows of the anatomy data (tests/helpers.py)."""
    return tiny_anatomy(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def analyzer(run_dir, anatomy_dir):
    from cxrfm.serve.app import Analyzer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRFM_ANATOMY", str(anatomy_dir))
        return Analyzer(run_dir)


@pytest.fixture(scope="module")
def client(analyzer):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import create_app

    with TestClient(create_app(analyzer.run_dir, analyzer=analyzer)) as c:
        yield c


def post(client, data: bytes, **fields):
    return client.post("/v1/analyze", files={"file": ("scan.png", data, "application/octet-stream")}, data=fields)


@pytest.fixture(scope="module")
def cxr(client, shared_data):
    """(bytes, first answer) of the first held-out CXR the tiny run's OOD gate accepts."""
    for name in HELD_OUT:
        data = (shared_data / "cxr" / "images" / name).read_bytes()
        r = post(client, data)
        if r.status_code == 200:
            return data, r.json()
    pytest.fail("no held-out CXR passed the OOD gate")


def _points(anatomy: dict, structure: str) -> np.ndarray:
    polys = anatomy["structures"][structure]["outline"]
    return np.concatenate([np.asarray(p, dtype=float) for p in polys]) if polys else np.zeros((0, 2))


# ---------------------------------------------------------------- the API
def test_analyze_returns_outlines_in_bounds_and_a_ctr_consistent_with_them(cxr, anatomy_dir):
    from cxrfm.data.images import read_image_bytes
    from cxrfm.inference.anatomy import Anatomy

    data, j = cxr
    a = j["anatomy"]
    assert a["available"] is True and a["note"] is None
    assert a["model"]["origin"] == "CXRFM_ANATOMY" and a["model"]["folder"] == anatomy_dir.name
    assert set(a["structures"]) == STRUCTURES
    h, w = j["image_size"]["height"], j["image_size"]["width"]
    assert a["image_size"] == {"height": h, "width": w}
    for s in STRUCTURES:
        polys = a["structures"][s]["outline"]
        assert polys, f"no outline for {s}"
        assert all(len(p) >= 3 for p in polys)
        pts = _points(a, s)
        assert len(pts) <= 300
        assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] >= 0).all() and (pts[:, 1] <= h).all()
    c = a["ctr"]
    assert c["refused"] is None, c["refused"]
    assert c["ratio"] == pytest.approx(c["heart_width"] / c["thorax_width"])
    assert c["enlarged"] == (c["ratio"] > 0.5)
    # the drawn widths span the outlines' horizontal extents (outline x is in pixel edges, lines in indices)
    heart, lungs = _points(a, "heart"), np.concatenate([_points(a, "left_lung"), _points(a, "right_lung")])
    for line, pts in ((c["heart_line"], heart), (c["thorax_line"], lungs)):
        row, x0, x1 = line
        assert 0 <= row < h and 0 <= x0 <= x1 < w
        assert x0 == pytest.approx(pts[:, 0].min(), abs=1.0) and x1 + 1 == pytest.approx(pts[:, 0].max(), abs=1.0)
    assert c["heart_width"] == c["heart_line"][2] - c["heart_line"][1] + 1
    assert a["summary"].startswith(f"CTR {c['ratio']:.2f} (")
    assert ("enlarged cardiac silhouette" in a["summary"]) == c["enlarged"]
    # the one inference path: the same numbers as cxrfm.inference.anatomy.Anatomy on the same pixels
    img = read_image_bytes(data, name="scan")
    masks, ctr = Anatomy(model_dir=anatomy_dir).measure(img)
    assert ctr.ratio == pytest.approx(c["ratio"]) and list(ctr.heart_line) == list(c["heart_line"])
    for s in STRUCTURES:
        assert a["structures"][s]["area_fraction"] == pytest.approx(masks[s].mean(), abs=1e-4)


def test_lateral_view_refuses_the_ctr_with_its_reason_and_keeps_the_outlines(client, cxr):
    data, frontal = cxr
    j = post(client, data, view="lateral")
    assert j.status_code == 200, j.text
    a = j.json()["anatomy"]
    assert a["view"] == "LATERAL"
    assert a["ctr"]["ratio"] is None and a["ctr"]["heart_line"] is None
    assert "lateral" in a["ctr"]["refused"] and "frontal" in a["ctr"]["refused"]
    assert a["summary"].startswith("CTR not measured: ") and "lateral" in a["summary"]
    assert a["structures"] == frontal["anatomy"]["structures"]  # the outlines do not depend on the view
    pa = post(client, data, view="PA").json()["anatomy"]
    assert pa["view"] == "PA" and pa["ctr"]["ratio"] == pytest.approx(frontal["anatomy"]["ctr"]["ratio"])
    bad = post(client, data, view="oblique")
    assert bad.status_code == 422 and "oblique" in bad.json()["detail"] and "LATERAL" in bad.json()["detail"]


def test_ood_refusal_has_no_anatomy(client):
    r = post(client, natural_png("astronaut"))
    assert r.status_code == 422
    j = r.json()
    assert j["is_cxr"] is False and "anatomy" not in j and "not look like a chest radiograph" in j["detail"]


def test_no_anatomy_model_is_a_note_not_a_crash(analyzer, cxr, tmp_path, monkeypatch):
    from cxrfm.data.images import read_image_bytes
    from cxrfm.inference.anatomy_outlines import load_served_anatomy

    monkeypatch.setenv("CXRFM_ANATOMY", str(tmp_path / "nowhere"))
    served = load_served_anatomy(analyzer.run_dir)
    assert served.anatomy is None and "nowhere" in served.note and "CXRFM_ANATOMY" in served.note
    kept = analyzer.anatomy
    analyzer.anatomy = served
    try:
        out = analyzer.analyze(read_image_bytes(cxr[0], name="scan"))
    finally:
        analyzer.anatomy = kept
    assert out["findings"] and out["anatomy"]["available"] is False and out["anatomy"]["structures"] == {}
    assert out["anatomy"]["summary"].startswith("Anatomy unavailable: ") and "nowhere" in out["anatomy"]["note"]


def test_the_runs_own_anatomy_folder_comes_first(anatomy_dir, tmp_path, monkeypatch):
    import shutil

    from cxrfm.inference.anatomy_outlines import load_served_anatomy

    monkeypatch.setenv("CXRFM_ANATOMY", str(tmp_path / "nowhere"))
    run = tmp_path / "run"
    shutil.copytree(anatomy_dir, run / "anatomy")
    served = load_served_anatomy(run)
    assert served.anatomy is not None and (served.origin, served.folder) == ("run", "anatomy")
    (run / "anatomy" / "unet.safetensors").write_bytes(b"damaged")
    broken = load_served_anatomy(run)
    assert broken.anatomy is None and "run's anatomy folder" in broken.note and "unet.safetensors" in broken.note


def test_openapi_documents_the_anatomy_entry_and_the_view_field(client, cxr):
    model = client.get("/v1/model").json()["anatomy"]
    assert model["available"] is True and set(model["structures"]) == STRUCTURES and model["note"] is None
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/analyze"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "view" in form["properties"] and form["required"] == ["file"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    anatomy = schema["properties"]["anatomy"]
    assert {"available", "structures", "ctr", "summary"} <= set(anatomy["required"])
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.Draft202012Validator(schema)
    validator.validate(cxr[1])
    broken = {**cxr[1], "anatomy": {**cxr[1]["anatomy"], "ctr": {"ratio": "wide"}}}
    assert not validator.is_valid(broken)


# ---------------------------------------------------------------- outlines and scaling
def test_outline_extents_holes_specks_and_point_budget():
    from cxrfm.inference.anatomy_outlines import outline

    m = np.zeros((100, 120), bool)
    m[10:60, 20:50] = True  # columns 20..49 -> x from 20 to 50
    m[30:40, 30:40] = False  # a hole: its own ring
    m[0:20, 100:120] = True  # touching the border: still closed, inside the bounds
    m[90, 5] = True  # a one-pixel speck: dropped
    polys = [np.asarray(p) for p in outline(m)]
    assert len(polys) == 3
    boxes = sorted((p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()) for p in polys)
    assert boxes[0] == pytest.approx((20, 50, 10, 60), abs=0.5)
    assert boxes[2] == pytest.approx((100, 120, 0, 20), abs=0.5)
    big = np.hypot(*np.mgrid[-400:400, -400:400]) < 350
    (ring,) = outline(big, sy=2.0, sx=3.0, max_points=60)
    ring = np.asarray(ring)
    assert len(ring) <= 60
    assert ring[:, 0].min() == pytest.approx(150, abs=12) and ring[:, 1].max() == pytest.approx(1500, abs=8)
    assert outline(np.zeros((10, 10), bool)) == []


def test_large_images_are_measured_downscaled_and_scaled_back(anatomy_dir, shared_data, monkeypatch, one_torch_thread):
    from cxrfm.data.images import read_image
    from cxrfm.inference import anatomy_outlines as ao
    from cxrfm.inference.anatomy import Anatomy

    img = read_image(next(iter(sorted((shared_data / "anatomy" / "images").glob("*.png")))))
    model = Anatomy(model_dir=anatomy_dir)
    full = ao.measure(model, img, None)
    monkeypatch.setattr(ao, "ANATOMY_SIDE", img.shape[-1] // 2)
    half = ao.measure(model, img, None)
    assert half["working_size"]["width"] == img.shape[-1] // 2 and half["image_size"] == full["image_size"]
    if full["ctr"]["ratio"] is None or half["ctr"]["ratio"] is None:
        pytest.fail(f"the tiny model measured no CTR: {full['ctr']['refused']} / {half['ctr']['refused']}")
    assert half["ctr"]["heart_width"] == pytest.approx(full["ctr"]["heart_width"], abs=6)
    assert half["ctr"]["thorax_width"] == pytest.approx(full["ctr"]["thorax_width"], abs=6)
    assert half["ctr"]["ratio"] == pytest.approx(full["ctr"]["ratio"], abs=0.05)
    w = img.shape[-1]
    for s in STRUCTURES:
        pts = _points(half, s)
        assert pts[:, 0].max() <= w and pts[:, 0].max() > w / 4  # scaled back to the original's pixels


# ---------------------------------------------------------------- the page in a browser
@pytest.fixture(scope="module")
def anatomy_server(run_dir, anatomy_dir):
    from tests.helpers import free_port, start_server, stop_server

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CXRFM_ANATOMY": str(anatomy_dir)}
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "cxrfm", "serve", "--model", str(run_dir), "--host", "127.0.0.1",
                         "--port", str(port)], env, url + "/v1/health")
    try:
        yield url
    finally:
        stop_server(proc)


def test_page_draws_outlines_and_ctr_with_an_anatomy_toggle(anatomy_server, cxr, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    shot = (Path(__file__).resolve().parents[1] / "docs" / "img" / "serve_anatomy.png"
            if os.environ.get("CXRFM_UPDATE_DOCS") == "1" else tmp_path / "serve_anatomy.png")
    scan = tmp_path / "scan.png"
    scan.write_bytes(cxr[0])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(anatomy_server + "/")
            toggle = page.locator("#toggle-anatomy")
            assert toggle.get_attribute("type") == "checkbox" and "Anatomy" in page.inner_text("label.check")
            page.wait_for_selector("#model-line:has-text('anatomy model')")
            page.set_input_files("#file", str(scan))
            page.wait_for_selector("#results:not([hidden])", timeout=30_000)
            for s in STRUCTURES:
                assert page.locator(f"#anatomy-overlay polygon.{s}").count() >= 1
            assert page.locator("#anatomy-overlay line.width:not(.tick)").count() == 2
            box = page.locator("#anatomy-overlay").bounding_box()
            img = page.locator("#image").bounding_box()
            assert box["width"] == pytest.approx(img["width"], abs=1)
            assert box["height"] == pytest.approx(img["height"], abs=1)
            ratio = cxr[1]["anatomy"]["ctr"]["ratio"]
            assert page.inner_text("#ctr-line").startswith(f"CTR {ratio:.2f} (")
            assert toggle.is_checked() and toggle.is_enabled() and page.is_visible("#anatomy-overlay")
            page.focus("#toggle-anatomy")
            page.keyboard.press("Space")
            assert not toggle.is_checked() and page.is_hidden("#anatomy-overlay")
            page.keyboard.press("Space")
            assert page.is_visible("#anatomy-overlay")
            page.screenshot(path=str(shot), full_page=True)
            page.select_option("#view", "LATERAL")  # re-analysed: the ratio is refused, outlines stay
            page.wait_for_selector("#ctr-line:has-text('CTR not measured')", timeout=30_000)  # no eval: the CSP
            assert "lateral" in page.inner_text("#ctr-line")
            assert page.locator("#anatomy-overlay polygon.heart").count() >= 1
            assert page.locator("#anatomy-overlay line.width").count() == 0
            page.close()
        finally:
            browser.close()
