"""Who may use the server and how it starts: the bearer token, binding beyond loopback, bad --port /
--host / --model / --index, and the banner; then the real CLI in a subprocess with CXRFM_TOKEN, driven
over HTTP and (where Chromium and Playwright exist) through the page, which asks for the token."""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cxrfm.cli import main  # noqa: E402
from cxrfm.serve.limits import BearerToken  # noqa: E402
from cxrfm.serve.server import check_exposure, is_loopback  # noqa: E402
from tests.helpers import start_server, stop_server  # noqa: E402

TOKEN = "s3cret-token-for-tests"


# ---------------------------------------------------------------- the token on the app
@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import ServeSettings, create_app

    with TestClient(create_app(run_dir, settings=ServeSettings(token=TOKEN, ood_reference_size=60))) as c:
        yield c


def test_every_api_route_needs_the_token_the_page_does_not(client):
    for path in ("/", "/static/app.js", "/static/style.css", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    for method, path in (("GET", "/v1/health"), ("GET", "/v1/model"), ("POST", "/v1/analyze"),
                         ("POST", "/v1/embed"), ("GET", "/v1/unknown"), ("GET", "/V1/health")):
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == 'Bearer realm="cxrfm"' and "Bearer" in r.json()["detail"]
    for header in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        r = client.get("/v1/health", headers={"Authorization": header})
        assert r.status_code == 401, header
    r = client.get("/v1/health", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert 'error="invalid_token"' in r.headers["www-authenticate"] and "wrong token" in r.json()["detail"]
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer   {TOKEN} "):
        assert client.get("/v1/health", headers={"Authorization": header}).json()["status"] == "ok", header
    r = client.post("/v1/embed", data={"text": "Small effusion."}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["kind"] == "text"


def test_token_is_checked_before_the_body_is_read(client):
    r = client.post("/v1/analyze", content=b"x" * (30 * 1024 * 1024),  # over the 20 MB limit: 413 if read
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 401
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent = []

    async def send(msg):
        sent.append(msg)

    async def never(scope, receive, send):
        raise AssertionError("the app ran without a token")

    scope = {"type": "http", "method": "POST", "path": "/v1/analyze", "headers": []}
    anyio.run(BearerToken(never, TOKEN), scope, receive, send)
    assert sent[0]["status"] == 401 and reads == []


def test_the_token_does_not_show_in_settings_repr():
    from cxrfm.serve.app import ServeSettings

    assert TOKEN not in repr(ServeSettings(token=TOKEN))


def test_loopback_and_exposure_rules():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host) and check_exposure(host, None, False) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "myhost.example"):
        assert not is_loopback(host), host
        with pytest.raises(Exception, match="--insecure"):
            check_exposure(host, None, False)
        assert "TLS" in check_exposure(host, TOKEN, False)
        assert "WITHOUT A TOKEN" in check_exposure(host, None, True)


# ---------------------------------------------------------------- the CLI's start-up errors
def _serve(capsys, *args: str) -> tuple[int, str, str]:
    try:
        rc = main(["serve", *args])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("port, words", [("abc", "not a port number"), ("0", "outside 1-65535"),
                                         ("65536", "outside 1-65535"), ("-5", "outside 1-65535"),
                                         ("80.5", "not a port number"), ("", "not a port number")])
def test_bad_port_is_a_usage_error(capsys, tmp_path, port, words):
    rc, _, err = _serve(capsys, "--model", str(tmp_path), "--port", port)
    assert rc == 2 and words in err and "Traceback" not in err


def test_port_in_use_fails_before_the_model_loads(capsys, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        t0 = time.monotonic()
        rc, _, err = _serve(capsys, "--model", str(tmp_path / "nope"), "--port", str(port))
    assert rc == 2 and "already in use" in err and "--port" in err
    assert "RunDirError" not in err  # the port is checked first, so the error comes at once


def test_beyond_loopback_needs_a_token_or_insecure(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("CXRFM_TOKEN", raising=False)
    port = str(_free_port())
    rc, _, err = _serve(capsys, "--model", str(tmp_path / "nope"), "--host", "0.0.0.0", "--port", port)
    assert rc == 2 and "--insecure" in err and "CXRFM_TOKEN" in err
    rc, _, err = _serve(capsys, "--model", str(tmp_path / "nope"), "--host", "0.0.0.0", "--port", port, "--insecure")
    assert rc == 2 and "WITHOUT A TOKEN" in err and "no such run dir" in err  # got past the check, to the model
    monkeypatch.setenv("CXRFM_TOKEN", "   ")
    rc, _, err = _serve(capsys, "--model", str(tmp_path), "--port", port)
    assert rc == 2 and "empty" in err
    rc, _, err = _serve(capsys, "--model", str(tmp_path), "--host", "no-such-host.invalid", "--port", port,
                        "--token", TOKEN)
    assert rc == 2 and "cannot resolve" in err


def test_bad_model_and_index_folders_are_clear_errors(capsys, tmp_path, run_dir):
    port = str(_free_port())
    rc, _, err = _serve(capsys, "--model", str(tmp_path / "missing"), "--port", port)
    assert rc == 2 and "no such run dir" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _serve(capsys, "--model", str(empty), "--port", port)
    assert rc == 2 and "empty" in err and "Traceback" not in err
    rc, _, err = _serve(capsys, "--model", str(run_dir), "--index", str(tmp_path / "no-index"), "--port", port)
    assert rc == 2 and "not an index folder" in err and "cxrfm index" in err
    rc, _, err = _serve(capsys, "--model", str(run_dir), "--port", port, "--concurrency", "0")
    assert rc == 2 and "--concurrency" in err
    rc, _, err = _serve(capsys, "--model", str(run_dir), "--port", port, "--ood-reference", str(tmp_path / "x.csv"))
    assert rc == 2 and "--ood-reference" in err and "no such manifest" in err


def test_banner_points_to_the_page_and_the_spec_and_settings_reach_the_server(capsys, run_dir, monkeypatch):
    import cxrfm.serve.server as server

    seen = {}

    def fake_run(app, sock, settings):
        seen.update(app=app, addr=sock.getsockname(), settings=settings)
        sock.close()

    monkeypatch.setattr(server, "run_server", fake_run)
    monkeypatch.setenv("CXRFM_TOKEN", TOKEN)
    port = _free_port()
    rc, out, _ = _serve(capsys, "--model", str(run_dir), "--port", str(port), "--max-connections", "7",
                        "--max-inflight-mb", "64", "--body-timeout", "3")
    assert rc == 0
    assert f"http://127.0.0.1:{port}/openapi.json" in out and "/docs" not in out and "token" in out
    s = seen["settings"]
    assert seen["addr"] == ("127.0.0.1", port) and s.token == TOKEN and s.max_connections == 7
    assert s.max_inflight_bytes == 64 * 1024 * 1024 and s.body_idle_s == 3


# ---------------------------------------------------------------- the real server with CXRFM_TOKEN
@pytest.fixture(scope="module")
def token_server(run_dir):
    port = _free_port()
    env = {**os.environ, "CXRFM_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "cxrfm", "serve", "--model", str(run_dir), "--port", str(port)], env,
                        url + "/")
    try:
        yield url
    finally:
        stop_server(proc)


def test_cli_server_takes_the_token_from_the_environment(token_server):
    assert httpx.get(token_server + "/v1/health").status_code == 401
    r = httpx.get(token_server + "/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_page_asks_for_the_token_then_shows_which_head_answered(token_server, shared_data, tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} not found (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(token_server + "/")
            page.wait_for_selector("#token-form:not([hidden])")
            page.fill("#token", "wrong")
            page.click("#token-form button")
            page.wait_for_selector("#token-error:has-text('wrong token')")
            page.fill("#token", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("#model-line:has-text('Model ')")
            assert page.is_hidden("#token-form")
            scan = tmp_path / "scan.png"
            scan.write_bytes((shared_data / "cxr" / "images" / "hmh_7b68340a.png").read_bytes())  # held out
            page.set_input_files("#file", str(scan))
            page.wait_for_selector("#results:not([hidden])", timeout=60_000)
            assert page.inner_text("#head-line").startswith("Answered by: zero-shot for ")
            assert page.is_hidden("#head-note")  # the tiny run has no saved head, so none was passed over
        finally:
            browser.close()


def test_openapi_declares_the_bearer_scheme_on_every_v1_route(client):
    spec = client.get("/openapi.json").json()  # the spec itself is open: clients read it to learn the scheme
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    v1 = {p: ops for p, ops in spec["paths"].items() if p.startswith("/v1")}
    assert v1 and all(op["security"] == [{"bearer": []}] for ops in v1.values() for op in ops.values())
