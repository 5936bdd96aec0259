"""HTTP API and clinician-facing page for one trained dual encoder (FastAPI + plain HTML/JS).

A thin layer over :class:`cxrfm.inference.analyze.Analyzer` (what the model says about one image: the
OOD gate, the findings head, the draft report, neighbours, Grad-CAM), so what is served is what the
evaluation measured. ``create_app(run_dir, index_dir=None, settings=ServeSettings())``:

* ``POST /v1/analyze``  image (PNG / JPEG / DICOM, detected by content) -> OOD verdict; for a chest
  radiograph also per-finding probabilities (and which head answered), nearest training reports
  (with ``--index``), a draft structured report and a Grad-CAM heat map of the top finding. A non-CXR
  is refused (422), not scored.
* ``POST /v1/embed``    image file or ``text`` field -> L2-normalised embedding.
* ``GET /v1/health``, ``GET /v1/model`` (config, data hash, curation summary), ``/openapi.json``, ``/``.

Safety: request bodies are capped in bytes before parsing and images in declared pixels before decoding;
every decoding failure is a 4xx with a message; inference runs in worker threads behind a semaphore so
the event loop stays responsive; no request value is ever used as a path; CORS is off unless origins
are given; the CLI binds 127.0.0.1 by default.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import ConfigError, CxrfmError
from ..inference.analyze import (AnalyzeSettings, Analyzer, Refused, UploadTooLarge,  # noqa: F401 - re-exported
                                 declared_pixels)

log = logging.getLogger("cxrfm.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class ServeSettings(AnalyzeSettings):
    """The analysis bounds (:class:`~cxrfm.inference.analyze.AnalyzeSettings`) plus the HTTP ones."""

    max_text_chars: int = 4000  # /v1/embed text field
    max_concurrency: int = 2  # inference calls at once; the rest wait (2-core laptop default)
    cors_origins: tuple[str, ...] = ()  # empty = CORS off


# ---------------------------------------------------------------- HTTP layer
class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 before anything parses them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await self._too_large(send)
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        msg = json.dumps({"detail": f"request body over the limit of {self.limit} bytes; "
                                    "downsample or compress the image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(msg)).encode())]})
        await send({"type": "http.response.body", "body": msg})


def create_app(run_dir: str | Path, index_dir: str | Path | None = None,
               settings: ServeSettings | None = None, analyzer: Analyzer | None = None):
    """The FastAPI app for one run dir (model loaded once, here). ``analyzer`` reuses a loaded one."""
    if settings is None and analyzer is not None:  # an Analyzer's own bounds, with the HTTP defaults
        given = analyzer.settings
        settings = given if isinstance(given, ServeSettings) else ServeSettings(**dataclasses.asdict(given))
    settings = settings or ServeSettings()
    service = analyzer or Analyzer(run_dir, index_dir, settings)
    limiter = anyio.CapacityLimiter(settings.max_concurrency)

    # no /docs or /redoc: FastAPI's Swagger UI and ReDoc pages fetch their scripts from a CDN, which an
    # air-gapped hospital network cannot reach; the spec itself is at /openapi.json
    app = FastAPI(title="cxrfm", version=__version__, docs_url=None, redoc_url=None,
                  description="Chest X-ray vision-language model: findings, retrieval, draft report, heat map. "
                              "Research software, not a medical device.")
    app.state.analyzer = service

    async def infer(fn, *args):
        async with limiter:  # bounded concurrency; waiting requests do not block the event loop
            return await run_in_threadpool(fn, *args)

    def error(status: int, detail: str, **extra) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=status)

    bad = {400: {"description": "Empty or malformed request"}, 413: {"description": "Upload too large"},
           422: {"description": "Unreadable image, or not a chest radiograph (refused, not scored)"}}

    @app.post("/v1/analyze", responses=bad, summary="Analyse one chest radiograph")
    async def analyze(file: UploadFile = File(..., description="PNG, JPEG or DICOM (detected by content)")):
        data = await file.read(settings.max_upload_bytes + 1)
        try:
            return await infer(service.analyze_bytes, data, "upload", settings)
        except Refused as e:
            return error(422, str(e), is_cxr=False, ood=e.ood)
        except UploadTooLarge as e:
            return error(413, str(e))
        except CxrfmError as e:
            return error(400 if not data else 422, str(e))

    @app.post("/v1/embed", responses=bad, summary="Embed an image or a text")
    async def embed(file: UploadFile | None = File(None, description="an image (PNG, JPEG or DICOM)"),
                    text: str | None = Form(None, description="a report sentence or text")):
        if (file is None) == (text is None):
            return error(400, "send exactly one of `file` (an image) or `text` (a string)")
        if text is not None:
            if not text.strip() or len(text) > settings.max_text_chars:
                return error(422, f"`text` must be 1..{settings.max_text_chars} non-blank characters")
            vec = await infer(service.embed_text, text)
            kind = "text"
        else:
            data = await file.read(settings.max_upload_bytes + 1)
            try:
                img = await infer(service.decode, data, "upload", settings)
            except UploadTooLarge as e:
                return error(413, str(e))
            except CxrfmError as e:
                return error(400 if not data else 422, str(e))
            vec = await infer(service.embed_image, img)
            kind = "image"
        return {"kind": kind, "dim": int(vec.shape[0]), "normalized": True, "embedding": vec.tolist()}

    @app.get("/v1/health", summary="Liveness")
    async def health():
        return {"status": "ok", "model": service.run_dir.name, "version": __version__,
                "index": service.index is not None}

    @app.get("/v1/model", summary="Model config, data hash, curation summary, OOD gate")
    async def model_info():
        return service.describe()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        return response

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 64 * 1024)  # + multipart framing
    return app


def settings_from(**overrides) -> ServeSettings:
    """ServeSettings with plain keyword overrides (unknown names raise ConfigError)."""
    known = {f for f in ServeSettings.__dataclass_fields__}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown serve settings {sorted(unknown)}; known: {sorted(known)}")
    return ServeSettings(**overrides)


__all__ = ["Analyzer", "ServeSettings", "create_app", "declared_pixels", "settings_from"]
