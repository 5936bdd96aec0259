"""The page in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Uploads a real CXR (finding bars and the heat-map overlay appear, the toggle works from the keyboard),
then a natural photo (the refusal appears), and saves screenshots into the test's tmp folder (into
docs/img/ instead with CXRFM_UPDATE_DOCS=1, which is how the README's picture is refreshed). Skips, with the reason
printed, where /usr/bin/chromium or the playwright package is missing (CI: `apt-get install -y chromium`,
`pip install playwright`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import HELD_OUT, natural_png

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "serve.png"


def _skip(reason: str):
    print(f"\nSKIP test_serve_browser: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def test_page_upload_cxr_then_refusal(browser, server, shared_data, tmp_path):
    url, _proc = server
    # a test run never rewrites tracked files unless asked to
    SCREENSHOT = DOCS_SCREENSHOT if os.environ.get("CXRFM_UPDATE_DOCS") == "1" else tmp_path / "serve.png"
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url + "/")
    page.wait_for_selector("#model-line:not(:has-text('Loading'))")
    assert "Model " in page.inner_text("#model-line")

    cxr = tmp_path / "scan.png"
    cxr.write_bytes((shared_data / "cxr" / "images" / HELD_OUT[2]).read_bytes())
    page.set_input_files("#file", str(cxr))
    page.wait_for_selector("#results:not([hidden])", timeout=30_000)
    bars = page.locator("#findings .bar-row")
    assert bars.count() >= 14
    assert page.locator("#findings [role=meter]").first.get_attribute("aria-valuenow") is not None
    src = page.get_attribute("#image", "src")
    assert src.startswith("data:image/png;base64,") and "with-heat" in page.get_attribute("#image", "class")
    assert "IMPRESSION:" in page.inner_text("#report")
    assert page.locator("#neighbours li").count() >= 1
    # keyboard: focus the toggle and press Enter -> the plain image is shown
    page.focus("#toggle-heat")
    page.keyboard.press("Enter")
    assert page.get_attribute("#toggle-heat", "aria-pressed") == "false"
    assert page.get_attribute("#image", "src") != src
    page.keyboard.press("Enter")
    assert page.get_attribute("#toggle-heat", "aria-pressed") == "true"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    photo = tmp_path / "photo.png"
    photo.write_bytes(natural_png("astronaut"))
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#refusal:not([hidden])", timeout=30_000)
    assert "not look like a chest radiograph" in page.inner_text("#refusal-text")
    assert page.is_hidden("#results")
    page.screenshot(path=str(SCREENSHOT.with_name("serve_refusal.png")))
    page.close()
