"""ASGI middleware that bounds what a request may cost before any route sees it: bytes, time, access.

Uvicorn has no request-body timeout and buffers a body for as long as the app waits for it, so 50 clients
that each declared a 10 MB upload and then stalled held ~460 MB of a laptop's memory. :class:`BodyLimit`
caps each body, all bodies held at once (a byte budget, answered 503 + Retry-After when spent) and the time
a body may take (408, memory released). :class:`BearerToken` checks a shared secret in constant time on
every route except the page and its static files, before any body is read.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import anyio

OPEN_PATHS = ("/", "/openapi.json", "/favicon.ico")  # the page must load to ask for the token
OPEN_PREFIXES = ("/static/",)


async def send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A complete JSON response from middleware, closing the connection (the unread body is abandoned)."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Read each request body into memory within bounds, then hand the app a replay of it.

    ``limit``: bytes per body (413). ``budget``: bytes held by all requests in flight together, counted
    from the declared Content-Length before reading (or as chunks arrive without one) and released when
    the request finishes, so queued uploads count too (503 + Retry-After). ``idle_s``: longest wait for
    the next chunk; ``deadline_s``: longest time for the whole body (408 either way)."""

    def __init__(self, app, limit: int, budget: int, idle_s: float = 10.0, deadline_s: float = 60.0,
                 retry_after_s: int = 5):
        self.app, self.limit, self.budget = app, limit, max(budget, limit)  # one largest upload always fits
        self.idle_s, self.deadline_s, self.retry_after_s = idle_s, deadline_s, retry_after_s
        self.in_flight = 0  # bytes reserved; one event loop, so no lock is needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared == -1:
            return await send_json(send, 400, "Content-Length header is not a non-negative integer")
        if declared is not None and declared > self.limit:
            return await self._too_large(send)
        held = 0

        def reserve(n: int) -> bool:
            nonlocal held
            if self.in_flight + n > self.budget:
                return False
            self.in_flight += n
            held += n
            return True

        try:
            if declared is not None and not reserve(declared):
                return await self._busy(send)
            chunks, total, more = [], 0, True
            deadline = time.monotonic() + self.deadline_s
            while more:
                wait = min(self.idle_s, deadline - time.monotonic())
                msg = None
                with anyio.move_on_after(max(wait, 0.0)):
                    msg = await receive()
                if msg is None:  # the client stopped sending (or is too slow): free what it sent
                    chunks.clear()
                    return await send_json(send, 408, f"the request body did not arrive within {self.idle_s:g} s "
                                                      f"of silence / {self.deadline_s:g} s in all; send it again")
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                total += len(chunk)
                if total > self.limit:
                    return await self._too_large(send)
                if declared is None and not reserve(len(chunk)):
                    return await self._busy(send)
                chunks.append(chunk)
                more = msg.get("more_body", False)
            body, sent = b"".join(chunks), False
            chunks.clear()

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        finally:
            self.in_flight -= held

    async def _too_large(self, send):
        await send_json(send, 413, f"request body over the limit of {self.limit} bytes; "
                                   "downsample or compress the image")

    async def _busy(self, send):
        await send_json(send, 503, f"the server is holding its limit of {self.budget} upload bytes; "
                                   f"retry in {self.retry_after_s} s", {"Retry-After": str(self.retry_after_s)})


def _content_length(scope) -> int | None:
    """The declared body size; None when absent, -1 when malformed."""
    for key, value in scope.get("headers") or []:
        if key == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


class BearerToken:
    """``Authorization: Bearer <token>`` on every route but the page; 401 with WWW-Authenticate otherwise.

    Both sides are hashed before the constant-time compare so that not even the token's length leaks
    through timing. CORS preflights (OPTIONS) pass: browsers never attach credentials to them."""

    def __init__(self, app, token: str):
        if not token or not token.strip():
            raise ValueError("the bearer token is empty")
        self.app, self._digest = app, hashlib.sha256(token.encode("utf-8")).digest()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _is_open(scope["path"]):
            return await self.app(scope, receive, send)
        given = None
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = rest.strip()
        if given is None:
            return await send_json(send, 401, "this server needs a token: send the header "
                                              "`Authorization: Bearer <token>` (the page asks for it)",
                                   {"WWW-Authenticate": 'Bearer realm="cxrfm"'})
        if not hmac.compare_digest(hashlib.sha256(given).digest(), self._digest):
            return await send_json(send, 401, "wrong token; ask whoever started the server for it",
                                   {"WWW-Authenticate": 'Bearer realm="cxrfm", error="invalid_token"'})
        return await self.app(scope, receive, send)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIXES) and ".." not in path)

