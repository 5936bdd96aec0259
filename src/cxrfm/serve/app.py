"""HTTP API and clinician-facing page for one trained dual encoder (FastAPI + plain HTML/JS).

A thin layer over :class:`cxrfm.inference.analyze.Analyzer` (what the model says about one image: the
OOD gate, the findings head, the draft report, neighbours, Grad-CAM), so what is served is what the
evaluation measured. ``create_app(run_dir, index_dir=None, settings=ServeSettings())``:

* ``POST /v1/analyze``  image (PNG / JPEG / DICOM, detected by content) -> OOD verdict; for a chest
  radiograph also per-finding probabilities (and which head answered), nearest training reports
  (with ``--index``), a draft structured report whose every sentence points into the evidence trail per
  finding (``evidence``: Grad-CAM peak by lung zone, concepts, CTR, neighbours, a reasoning trace; a
  finding without evidence is not stated as present), a Grad-CAM heat map of the top finding and the anatomy
  (heart and lung outlines, the cardiothoracic ratio; an optional ``view`` field, a lateral view refuses
  the ratio). A non-CXR is refused (422), not scored.
* ``POST /v1/embed``    image file or ``text`` field -> L2-normalised embedding.
* ``GET /v1/health``, ``GET /v1/model`` (config, data hash, curation summary), ``/openapi.json``, ``/``.

Safety: request bodies are bounded in bytes, in time and in bytes held at once (:mod:`.limits`) and
parsed in memory, never spooled to disk (:mod:`.forms`); images are capped in declared pixels before
decoding; every decoding failure is a 4xx with a message; inference runs in worker threads behind a
semaphore so the event loop stays responsive; a bearer token, when set, guards every route but the page;
no request value is ever used as a path; CORS is off unless origins are given; the CLI binds 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import ConfigError, CxrfmError
from ..inference.analyze import (AnalyzeSettings, Analyzer, Refused, UploadTooLarge,  # noqa: F401 - re-exported
                                 declared_pixels)
from .forms import FormError, field_text, parse_form
from .limits import BearerToken, BodyLimit
from .schemas import ANALYZE_OK

STATIC_DIR = Path(__file__).resolve().parent / "static"
FRAMING = 64 * 1024  # multipart boundaries and part headers on top of the largest upload


@dataclass(frozen=True)
class ServeSettings(AnalyzeSettings):
    """The analysis bounds (:class:`~cxrfm.inference.analyze.AnalyzeSettings`) plus the HTTP ones."""

    max_text_chars: int = 4000  # /v1/embed text field
    max_concurrency: int = 2  # inference calls at once; the rest wait (2-core laptop default)
    cors_origins: tuple[str, ...] = ()  # empty = CORS off
    token: str | None = field(default=None, repr=False)  # bearer token for every route but the page
    max_inflight_bytes: int = 128 * 1024 * 1024  # upload bytes held by all requests at once; then 503
    body_idle_s: float = 10.0  # longest silence while a body arrives; then 408 and its memory is freed
    body_deadline_s: float = 120.0  # longest time for a whole body (20 MB at ~1.4 Mbit/s)
    max_connections: int = 64  # uvicorn's limit_concurrency: connections + tasks, then 503
    header_timeout_s: float = 10.0  # a connection whose request headers take longer is closed
    keep_alive_s: int = 5  # an idle keep-alive connection closes after this


def _multipart(properties: dict, required: list[str]) -> dict:
    """The OpenAPI request body of a form route (the routes read the body themselves, see .forms)."""
    return {"requestBody": {"required": bool(required), "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}}


_FILE = {"type": "string", "contentMediaType": "application/octet-stream"}
_ERRORS = {400: {"description": "Empty or malformed request"}, 401: {"description": "Missing or wrong token"},
           408: {"description": "The body did not arrive in time"}, 413: {"description": "Upload too large"},
           415: {"description": "Not a form body"},
           422: {"description": "Unreadable image, or not a chest radiograph (refused, not scored)"},
           503: {"description": "Too many uploads in flight; retry after Retry-After seconds"}}


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

    async def read_form(request: Request) -> dict[str, bytes]:
        # the body is already in memory and bounded (BodyLimit); Starlette's UploadFile would spool it to disk
        return parse_form(await request.body(), request.headers.get("content-type", ""))

    @app.exception_handler(FormError)
    async def form_error(_request, e: FormError):
        return error(e.status, str(e))

    @app.post("/v1/analyze", responses={200: ANALYZE_OK, **_ERRORS}, summary="Analyse one chest radiograph",
              openapi_extra=_multipart(
                  {"file": {**_FILE, "description": "PNG, JPEG or DICOM (detected by content)"},
                   "view": {"type": "string", "maxLength": 40, "examples": ["PA", "AP", "LATERAL"],
                            "description": "the projection, when known: PA, AP, LATERAL (or LL, RL, LAT...). A "
                                           "lateral view refuses the cardiothoracic ratio (outlines still given); "
                                           "left out, the ratio is measured as on a frontal film. Other "
                                           "values: 422."}}, ["file"]))
    async def analyze(request: Request):
        form = await read_form(request)
        data, view = form.get("file"), field_text(form, "view")
        if data is None:
            return error(422, "the form has no `file` field; send the image as `file` (curl -F file=@scan.png)")
        try:
            return await infer(service.analyze_bytes, data, "upload", settings, view)
        except Refused as e:
            return error(422, str(e), is_cxr=False, ood=e.ood)
        except UploadTooLarge as e:
            return error(413, str(e))
        except CxrfmError as e:
            return error(400 if not data else 422, str(e))

    @app.post("/v1/embed", responses=_ERRORS, summary="Embed an image or a text", openapi_extra=_multipart(
        {"file": {**_FILE, "description": "an image (PNG, JPEG or DICOM)"},
         "text": {"type": "string", "description": "a report sentence or text"}}, []))
    async def embed(request: Request):
        form = await read_form(request)
        data, text = form.get("file"), field_text(form, "text")
        if (data is None) == (text is None):
            return error(400, "send exactly one of `file` (an image) or `text` (a string)")
        if text is not None:
            if not text.strip() or len(text) > settings.max_text_chars:
                return error(422, f"`text` must be 1..{settings.max_text_chars} non-blank characters")
            vec = await infer(service.embed_text, text)
            kind = "text"
        else:
            try:
                img = await infer(service.decode, data, "upload", settings)
            except UploadTooLarge as e:
                return error(413, str(e))
            except CxrfmError as e:
                return error(400 if not data else 422, str(e))
            vec = await infer(service.embed_image, img)
            kind = "image"
        return {"kind": kind, "dim": int(vec.shape[0]), "normalized": True, "embedding": vec.tolist()}

    @app.get("/v1/health", summary="Liveness", responses={401: _ERRORS[401]})
    async def health():
        return {"status": "ok", "model": service.run_dir.name, "version": __version__,
                "index": service.index is not None}

    @app.get("/v1/model", summary="Model config, data hash, curation summary, OOD gate", responses={401: _ERRORS[401]})
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

    # the last added runs first: CORS (so a browser can read a 401), then the token (before any body is
    # read), then the body bounds
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FRAMING, budget=settings.max_inflight_bytes,
                       idle_s=settings.body_idle_s, deadline_s=settings.body_deadline_s)
    if settings.token:
        app.add_middleware(BearerToken, token=settings.token)
        _declare_bearer(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    return app


def _declare_bearer(app) -> None:
    """Say in /openapi.json that every /v1 route needs ``Authorization: Bearer <token>`` (clients and
    generated SDKs read it there), as the BearerToken middleware enforces."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = plain()
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "the server's --token / CXRFM_TOKEN"}
            for path, ops in spec.get("paths", {}).items():
                if path.startswith("/v1"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def settings_from(**overrides) -> ServeSettings:
    """ServeSettings with plain keyword overrides (unknown names raise ConfigError)."""
    known = {f for f in ServeSettings.__dataclass_fields__}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown serve settings {sorted(unknown)}; known: {sorted(known)}")
    return ServeSettings(**overrides)


__all__ = ["Analyzer", "ServeSettings", "create_app", "declared_pixels", "settings_from"]
