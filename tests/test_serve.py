"""The HTTP API on a tiny model trained here on real CXRs: analysis, OOD refusal, hostile uploads.

The shared helpers (``tiny_run``, ``tiny_index``, ``png_bytes``...) live in tests/helpers.py; the tiny
run is trained once per session (cached under pytest's basetemp).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.helpers import (  # noqa: E402
    HELD_OUT, TRAIN_ROWS, bomb_png, dicom_without_pixels, natural_png, png_bytes, tiny_index,
)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def index_dir(run_dir):
    return tiny_index(run_dir)


@pytest.fixture(scope="module")
def analyzer(run_dir, index_dir):
    from cxrfm.serve.app import Analyzer

    return Analyzer(run_dir, index_dir)


@pytest.fixture(scope="module")
def client(analyzer):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import create_app

    with TestClient(create_app(analyzer.run_dir, analyzer=analyzer)) as c:
        yield c


def post_image(client, data: bytes, name: str = "x.png", url: str = "/v1/analyze"):
    return client.post(url, files={"file": (name, data, "application/octet-stream")})


# ---------------------------------------------------------------- analysis
def test_analyze_real_cxrs_returns_findings_heatmap_report_neighbours(client, shared_data, analyzer):
    passed = 0
    for name in HELD_OUT:
        r = post_image(client, (shared_data / "cxr" / "images" / name).read_bytes(), name="scan.bin")
        assert r.status_code in (200, 422), r.text
        if r.status_code == 422:  # the gate lets ~95 % of real CXRs through by construction
            assert r.json()["is_cxr"] is False
            continue
        passed += 1
        j = r.json()
        assert j["is_cxr"] is True and j["ood"]["score"] >= j["ood"]["threshold"]
        names = [f["finding"] for f in j["findings"]]
        assert names == analyzer.findings and "Cardiomegaly" in names
        assert all(0.0 <= f["probability"] <= 1.0 for f in j["findings"])
        assert j["heatmap"]["finding"] == j["top_finding"] != "No Finding"
        assert j["heatmap"]["overlay_png"].startswith("data:image/png;base64,")
        assert j["heatmap"]["overlay_png"] != j["image_png"]
        assert "LUNGS:" in j["report"] and "IMPRESSION:" in j["report"]
        assert len(j["neighbours"]) == 5
        sims = [n["similarity"] for n in j["neighbours"]]
        assert sims == sorted(sims, reverse=True) and all(-1.01 <= s <= 1.01 for s in sims)
    assert passed >= 4, f"only {passed}/5 held-out CXRs passed the OOD gate"


def test_analyze_accepts_jpeg_and_dicom_by_content(client, shared_data):
    from PIL import Image

    img = Image.open(shared_data / "cxr" / "images" / HELD_OUT[2])
    buf = io.BytesIO()
    img.convert("L").save(buf, format="JPEG", quality=90)
    r = post_image(client, buf.getvalue(), name="scan.png")  # wrong extension on purpose
    assert r.status_code in (200, 422) and "is_cxr" in r.json(), r.text
    dcm = shared_data / "dicom" / "RG1_J2KI.dcm"
    if dcm.exists():
        r = post_image(client, dcm.read_bytes(), name="film.txt")
        assert 200 <= r.status_code < 500, r.text  # a JPEG 2000 DICOM: analysed, refused or unreadable, never 5xx


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_natural_images_are_refused_not_scored(client, name):
    r = post_image(client, natural_png(name))
    assert r.status_code == 422, r.text
    j = r.json()
    assert j["is_cxr"] is False and "not look like a chest radiograph" in j["detail"]
    assert j["ood"]["score"] < j["ood"]["threshold"]
    assert "findings" not in j and "report" not in j


def test_other_modality_dicom_is_refused(client):
    from cxrfm.tasks.ood import pydicom_data_dir

    d = pydicom_data_dir()
    if d is None:
        pytest.skip("pydicom-data not installed")
    r = post_image(client, (d / "MR2_UNCR.dcm").read_bytes(), name="mr.dcm")
    assert r.status_code == 422 and r.json()["is_cxr"] is False, r.text


# ---------------------------------------------------------------- hostile / broken uploads
def _bad_uploads(shared_data) -> dict[str, bytes]:
    good = (shared_data / "cxr" / "images" / HELD_OUT[0]).read_bytes()
    return {
        "empty": b"",
        "random bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated png": good[: len(good) // 2],
        "png header only": good[:40],
        "decompression bomb": bomb_png(),
        "dicom without pixels": dicom_without_pixels(),
        "text": b"hello, I am not an image\n" * 20,
        "multi-frame dicom": _pydicom_file("emri_small.dcm"),
    }


def _pydicom_file(name: str) -> bytes:
    from cxrfm.tasks.ood import pydicom_data_dir

    d = pydicom_data_dir()
    return (d / name).read_bytes() if d else b"DICM"


def test_every_bad_upload_is_a_4xx_with_a_message(client, shared_data):
    for what, data in _bad_uploads(shared_data).items():
        for url in ("/v1/analyze", "/v1/embed"):
            r = post_image(client, data, url=url)
            assert 400 <= r.status_code < 500, (what, url, r.status_code, r.text)
            assert isinstance(r.json()["detail"], str) and len(r.json()["detail"]) > 10, (what, r.text)
    r = post_image(client, bomb_png())
    assert r.status_code == 413 and "pixels" in r.json()["detail"]


def test_missing_file_field_and_wrong_method(client):
    assert client.post("/v1/analyze").status_code == 422
    assert client.post("/v1/analyze", data={"file": "not a file"}).status_code in (400, 422)
    assert client.get("/v1/analyze").status_code == 405


def test_byte_and_pixel_limits_are_configurable(analyzer, shared_data):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import ServeSettings, create_app

    small = ServeSettings(max_upload_bytes=10_000, max_pixels=10_000)
    with TestClient(create_app(analyzer.run_dir, settings=small, analyzer=analyzer)) as c:
        big = (shared_data / "cxr" / "images" / HELD_OUT[0]).read_bytes()
        assert len(big) > 10_000
        r = post_image(c, big)
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = post_image(c, png_bytes(np.zeros((200, 200))))  # small file, 40,000 pixels
        assert r.status_code == 413 and "pixels" in r.json()["detail"]


def test_no_request_reaches_the_filesystem_and_cors_is_off(client):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/../../etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404 or "def create_app" not in r.text, path
    r = client.get("/v1/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


# ---------------------------------------------------------------- other endpoints
def test_health_model_openapi_and_page(client, run_dir):
    assert client.get("/v1/health").json()["status"] == "ok"
    m = client.get("/v1/model").json()
    assert m["config"] == json.loads((run_dir / "config.json").read_text())
    assert m["config"]["model"]["image_size"] == m["image_size"]
    if (run_dir / "curation.json").exists():
        assert isinstance(m["curation"], dict)
    assert 0 < m["ood_gate"]["n_reference"] and m["ood_gate"]["tpr"] == 0.95
    assert m["index"]["n"] == TRAIN_ROWS
    spec = client.get("/openapi.json").json()
    assert {"/v1/analyze", "/v1/embed", "/v1/health", "/v1/model"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and '<input type="file"' in page.text and "label for=\"file\"" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_embed_text_and_image(client, analyzer, shared_data):
    t = client.post("/v1/embed", data={"text": "Small left pleural effusion."}).json()
    assert t["kind"] == "text" and t["dim"] == analyzer.model.embed_dim
    assert abs(np.linalg.norm(t["embedding"]) - 1) < 1e-4
    i = post_image(client, (shared_data / "cxr" / "images" / HELD_OUT[1]).read_bytes(), url="/v1/embed").json()
    assert i["kind"] == "image" and len(i["embedding"]) == t["dim"]
    assert abs(np.linalg.norm(i["embedding"]) - 1) < 1e-4
    assert client.post("/v1/embed").status_code == 400
    assert client.post("/v1/embed", data={"text": "   "}).status_code == 422
    assert client.post("/v1/embed", data={"text": "x" * 5000}).status_code == 422


# ---------------------------------------------------------------- report and heat map pieces
def test_structured_report_wording_bands_and_sections():
    from cxrfm.inference.report import structured_report

    text = structured_report({"Pleural Effusion": 0.9, "Cardiomegaly": 0.5, "Pneumothorax": 0.05,
                              "Fracture": 0.1, "Made Up": 0.99, "Edema": float("nan")})
    assert "Likely pleural effusion" in text and "Possible cardiomegaly" in text
    assert "No pneumothorax" in text and "Made Up" not in text and "edema" not in text.lower()
    for section in ("LUNGS:", "PLEURA:", "HEART AND MEDIASTINUM:", "BONES:", "LINES AND TUBES:", "IMPRESSION:"):
        assert section in text
    assert text.index("1. Likely pleural effusion") < text.index("2. Possible cardiomegaly")
    normal = structured_report({"Pleural Effusion": 0.1, "No Finding": 0.9})
    assert "No acute cardiopulmonary abnormality" in normal
    assert "Possible pleural effusion" in structured_report({"Pleural Effusion": 0.2}, {"possible": 0.15})


def test_heatmap_is_in_unit_range_and_depends_on_the_finding(analyzer, shared_data):
    from cxrfm.data.images import read_image
    from cxrfm.inference.gradcam import finding_heatmap, heatmap_png_data_url

    img = read_image(shared_data / "cxr" / "images" / HELD_OUT[2])
    x = analyzer._prepare(img)
    maps = [finding_heatmap(analyzer.model, x, analyzer.classifier, analyzer.findings.index(f))
            for f in ("Cardiomegaly", "Pneumothorax")]
    for h in maps:
        assert h.shape == (analyzer.model.image_size,) * 2 and h.min() >= 0 and h.max() <= 1
        assert h.max() == 1.0 or h.max() == 0.0
    assert not np.allclose(maps[0], maps[1])
    url = heatmap_png_data_url(img, maps[0])
    assert url.startswith("data:image/png;base64,") and len(url) > 1000


def test_no_page_needs_the_network(client):
    """Swagger UI / ReDoc load scripts from a CDN: they are off, and the page references only its own files."""
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page
    assert client.get("/openapi.json").status_code == 200
