"""Request bounds of the HTTP layer: stalled and oversized bodies, the in-flight byte budget, uvicorn's
connection cap, uploads kept in memory (never a temp file), and the strict in-memory form parser.

The middleware is driven directly as an ASGI callable (deterministic stalls), then through a real
uvicorn on a raw socket (what a stalled client really gets back)."""
from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from cxrfm.serve.forms import MAX_PARTS, FormError, field_text, parse_form  # noqa: E402
from cxrfm.serve.limits import BodyLimit  # noqa: E402


# ---------------------------------------------------------------- BodyLimit as an ASGI callable
class Echo:
    """An app that reads the whole body and answers 200; the first request waits for ``release`` if set."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.release: anyio.Event | None = None

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        self.bodies.append(body)
        if self.release is not None and len(self.bodies) == 1:  # only the first request is held
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(mw, chunks: list[bytes], declared: int | None, stall: bool = False, trickle_s: float = 0.0):
    """Send ``chunks`` (then stall forever if ``stall``); returns (status, headers, body) of the answer."""
    queue = list(chunks)
    sent: list[dict] = []

    async def receive():
        if not queue:
            await anyio.sleep_forever()
        if trickle_s:
            await anyio.sleep(trickle_s)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue) or stall}

    async def send(msg):
        sent.append(msg)

    headers = [(b"content-type", b"application/octet-stream")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    await mw({"type": "http", "method": "POST", "path": "/v1/analyze", "headers": headers}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_a_stalled_body_gets_408_and_frees_its_reservation():
    app = Echo()
    mw = BodyLimit(app, limit=10_000, budget=10_000, idle_s=0.2, deadline_s=30)
    t0 = time.monotonic()
    status, headers, body = anyio.run(call, mw, [b"x" * 3000], 8000, True)
    assert status == 408 and b"did not arrive" in body and headers[b"connection"] == b"close"
    assert time.monotonic() - t0 < 10  # the idle bound, not the 30 s deadline, ended it
    assert mw.in_flight == 0 and app.bodies == []  # nothing reached the app, nothing stays reserved


def test_a_trickling_body_hits_the_whole_body_deadline():
    mw = BodyLimit(Echo(), limit=10_000, budget=10_000, idle_s=5, deadline_s=0.3)
    status, _, _ = anyio.run(lambda: call(mw, [b"x"] * 100, 100, trickle_s=0.05))  # each chunk within idle_s
    assert status == 408 and mw.in_flight == 0


def test_oversized_declared_or_streamed_body_is_413_before_the_app():
    app = Echo()
    mw = BodyLimit(app, limit=1000, budget=5000)
    assert anyio.run(call, mw, [b"x" * 10], 5000)[0] == 413  # declared: refused before reading
    assert anyio.run(call, mw, [b"x" * 600, b"x" * 600], None)[0] == 413  # chunked, no Content-Length
    assert app.bodies == [] and mw.in_flight == 0


def test_malformed_content_length_is_400():
    assert anyio.run(call, BodyLimit(Echo(), 1000, 1000), [b"x"], "12abc")[0] == 400


def test_byte_budget_counts_held_requests_then_503_with_retry_after():
    """A request waiting for inference still holds its bytes: the next one over budget is 503 at once."""
    app = Echo()
    mw = BodyLimit(app, limit=1000, budget=1500, idle_s=5)
    results = {}

    async def scenario():
        app.release = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def first():
                results["first"] = await call(mw, [b"a" * 900], 900)

            tg.start_soon(first)
            while not app.bodies:  # the first body is read and held by the (waiting) app
                await anyio.sleep(0.01)
            assert mw.in_flight == 900
            results["second"] = await call(mw, [b"b" * 900], 900)  # 900 + 900 > 1500
            results["chunked"] = await call(mw, [b"c" * 700], None)  # counted as it arrives
            results["small"] = await call(mw, [b"d" * 500], 500)  # fits beside the first
            app.release.set()
        results["after"] = await call(mw, [b"e" * 900], 900)

    anyio.run(scenario)
    status, headers, body = results["second"]
    assert status == 503 and headers[b"retry-after"] == b"5" and b"retry in 5 s" in body
    assert results["chunked"][0] == 503
    assert results["first"][0] == results["small"][0] == results["after"][0] == 200
    assert mw.in_flight == 0


def test_budget_below_one_upload_is_raised_to_one_upload():
    mw = BodyLimit(Echo(), limit=1000, budget=10)
    assert mw.budget == 1000 and anyio.run(call, mw, [b"x" * 1000], 1000)[0] == 200


# ---------------------------------------------------------------- through a real uvicorn
class Uvicorn:
    """``app`` served by uvicorn (with cxrfm's connection bounds) on a free loopback port, in a thread."""

    def __init__(self, app, settings):
        import uvicorn

        from cxrfm.serve.server import bind_socket, uvicorn_config

        self.sock = bind_socket("127.0.0.1", _free_port())
        self.server = uvicorn.Server(uvicorn_config(app, self.sock, settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self.sock.getsockname()[:2]

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_upload(addr, declared: int, first: bytes) -> socket.socket:
    s = socket.create_connection(addr, timeout=15)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + first)
    return s


def _status_line(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def test_uvicorn_answers_a_stalled_upload_408_and_caps_connections():
    from cxrfm.serve.app import ServeSettings

    app = BodyLimit(Echo(), limit=4_000_000, budget=8_000_000, idle_s=0.5)
    with Uvicorn(app, ServeSettings(max_connections=2)) as addr:
        stalled = _start_upload(addr, 2_000_000, b"x" * 300_000)  # declares 2 MB, sends 0.3 MB, stops
        time.sleep(0.3)
        second = _start_upload(addr, 10, b"0123456789")  # uvicorn counts this one too: 2 >= the cap of 2
        assert _status_line(second).startswith(b"HTTP/1.1 503"), "limit_concurrency did not apply"
        second.close()
        assert _status_line(stalled).startswith(b"HTTP/1.1 408")
        assert _drained(stalled)  # and the server closes the connection
        stalled.close()
        time.sleep(0.2)  # uvicorn forgets the closed connections
        ok = _start_upload(addr, 10, b"0123456789")
        assert _status_line(ok).startswith(b"HTTP/1.1 200")
        ok.close()
    assert app.in_flight == 0


def test_connections_that_never_finish_their_headers_are_closed():
    """Slowloris: half-sent request lines must not hold the connection cap."""
    from cxrfm.serve.app import ServeSettings

    with Uvicorn(BodyLimit(Echo(), 1000, 1000), ServeSettings(max_connections=3, header_timeout_s=0.5)) as addr:
        stalled = [socket.create_connection(addr, timeout=15) for _ in range(3)]
        for s in stalled:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
        for s in stalled:
            assert _drained(s)  # closed by the server, no reply
            s.close()
        time.sleep(0.2)
        ok = _start_upload(addr, 10, b"0123456789")
        assert _status_line(ok).startswith(b"HTTP/1.1 200")
        assert _drained(ok)  # kept alive, then closed: no next request within the header timeout
        ok.close()


def _drained(s: socket.socket) -> bool:
    """True once the peer has closed (recv returns b"")."""
    while True:
        try:
            if not s.recv(65536):
                return True
        except ConnectionResetError:
            return True


# ---------------------------------------------------------------- uploads never touch the disk
class DiskSpy:
    """Replaces every tempfile entry point (and Starlette's spool) with one that records and refuses."""

    def __init__(self, monkeypatch):
        import starlette.formparsers

        self.calls: list[str] = []
        for mod, name in [(tempfile, "TemporaryFile"), (tempfile, "NamedTemporaryFile"),
                          (tempfile, "SpooledTemporaryFile"), (tempfile, "mkstemp"), (tempfile, "mkdtemp"),
                          (starlette.formparsers, "SpooledTemporaryFile")]:
            monkeypatch.setattr(mod, name, self._refuse(name))

    def _refuse(self, name):
        def refuse(*args, **kwargs):
            self.calls.append(name)
            raise OSError(f"test: {name} called while handling an upload")

        return refuse


def _big_cxr_png(shared_data: Path) -> bytes:
    """A real CXR re-saved uncompressed at 1100 px: over Starlette's 1 MiB spool threshold."""
    from PIL import Image

    src = sorted((shared_data / "cxr" / "images").glob("hmh_*.png"))[0]
    buf = io.BytesIO()
    Image.open(src).convert("L").resize((1100, 1100)).save(buf, format="PNG", compress_level=0)
    assert buf.tell() > 1024 * 1024
    return buf.getvalue()


def test_spy_catches_starlette_spooling_a_large_upload(monkeypatch):
    """The control: an UploadFile route does reach tempfile, so the spy would see a regression."""
    from fastapi import FastAPI, File, UploadFile
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.post("/u")
    async def u(file: UploadFile = File(...)):
        return {"n": len(await file.read())}

    spy = DiskSpy(monkeypatch)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.post("/u", files={"file": ("x", b"x" * (2 * 1024 * 1024), "application/octet-stream")})
    assert spy.calls


@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    from cxrfm.serve.app import ServeSettings, create_app

    with TestClient(create_app(run_dir, settings=ServeSettings(ood_reference_size=60))) as c:
        yield c


def test_large_uploads_are_analysed_without_a_temp_file(client, shared_data, monkeypatch):
    data = _big_cxr_png(shared_data)
    spy = DiskSpy(monkeypatch)
    r = client.post("/v1/analyze", files={"file": ("big.png", data, "image/png")})
    assert r.status_code in (200, 422) and "is_cxr" in r.json(), r.text
    r = client.post("/v1/embed", files={"file": ("big.png", data, "image/png")})
    assert r.status_code == 200 and r.json()["kind"] == "image", r.text
    assert spy.calls == []


def test_malformed_forms_are_4xx_with_a_message(client):
    def post(body: bytes, ctype: str):
        return client.post("/v1/analyze", content=body, headers={"content-type": ctype})

    good = _multipart({"file": b"\x89PNG not really"})
    cases = {
        "truncated": (post(good[: len(good) // 2], MP), 400, "closing boundary"),
        "no boundary": (post(good, "multipart/form-data"), 400, "boundary"),
        "json": (post(b'{"file": 1}', "application/json"), 415, "multipart/form-data"),
        "no content type": (post(good, ""), 415, "not a form"),
        "field twice": (post(_multipart({"file": b"a"}, {"file": b"b"}), MP), 400, "twice"),
        "too many parts": (post(_multipart(*({f"f{i}": b"x"} for i in range(MAX_PARTS + 1))), MP), 400, "fields"),
        "no file field": (post(_multipart({"image": b"x"}), MP), 422, "`file`"),
        "empty file": (post(_multipart({"file": b""}), MP), 400, "empty"),
    }
    for what, (r, status, words) in cases.items():
        assert r.status_code == status and words in r.json()["detail"], (what, r.status_code, r.text)
    r = client.post("/v1/embed", content=_multipart({"text": b"\xff\xfe bad"}), headers={"content-type": MP})
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]


MP = "multipart/form-data; boundary=BOUNDARY"


def _multipart(*parts: dict[str, bytes]) -> bytes:
    out = b""
    for part in parts:
        for name, value in part.items():
            out += (b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"; filename=\"x\"\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n" + value + b"\r\n")
    return out + b"--BOUNDARY--\r\n"


def test_parse_form_reads_multipart_and_urlencoded_bytes():
    body = _multipart({"file": bytes(range(256)) * 4}, {"text": "héllo".encode()})
    form = parse_form(body, MP)
    assert form["file"] == bytes(range(256)) * 4 and field_text(form, "text") == "héllo"
    assert parse_form(b"text=a+b%21", "application/x-www-form-urlencoded") == {"text": b"a b!"}
    assert parse_form(b"", "") == {}
    with pytest.raises(FormError):
        parse_form(b"text=%zz&&=", "application/x-www-form-urlencoded")
    assert field_text({}, "text") is None and np.frombuffer(form["file"], np.uint8).size == 1024
