"""Request forms parsed from the bounded in-memory body, so an upload never touches the disk.

Starlette's ``UploadFile`` keeps each file part in a ``SpooledTemporaryFile`` that rolls over to a temp
file past 1 MiB: a patient's radiograph would be written to /tmp (and survive a crash there). Here the
body is already in memory, capped by :class:`cxrfm.serve.limits.BodyLimit`, and python-multipart's
streaming parser (the one Starlette uses) turns it into ``{field name: bytes}`` without a file object.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import CxrfmError

MAX_PARTS = 8  # the API takes at most two fields; more is a malformed or hostile body


class FormError(CxrfmError):
    """The request body is not a form this API reads; ``status`` is the HTTP answer (400 or 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_form(body: bytes, content_type: str) -> dict[str, bytes]:
    """``multipart/form-data`` or ``application/x-www-form-urlencoded`` body -> {field: raw bytes}.

    An empty body is an empty form (the route says which field is missing). A field given twice is an
    error rather than a silent choice of one of them."""
    if not body:
        return {}
    kind, params = _parse_content_type(content_type)
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise FormError("multipart/form-data body without a boundary in its Content-Type header")
        return _parse_multipart(body, boundary)
    if kind == b"application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormError(f"malformed application/x-www-form-urlencoded body ({e})") from e
        return _unique((k, v.encode("utf-8")) for k, v in pairs)
    raise FormError(f"Content-Type {content_type or '(none)'!r} is not a form; send multipart/form-data "
                    "(e.g. curl -F file=@scan.png)", status=415)


def field_text(form: dict[str, bytes], name: str) -> str | None:
    """A text field decoded as UTF-8 (None when absent)."""
    raw = form.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormError(f"field `{name}` is not UTF-8 text ({e.reason} at byte {e.start})") from e


def _parse_content_type(value: str) -> tuple[bytes, dict[bytes, bytes]]:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value or "")
    return kind.lower(), params


def _parse_multipart(body: bytes, boundary: bytes) -> dict[str, bytes]:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, MultipartState

    parts: list[tuple[str, bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    state = {"name": None, "data": None}

    def on_part_begin():
        if len(parts) >= MAX_PARTS:
            raise FormError(f"more than {MAX_PARTS} form fields; this API reads `file` and `text` only")
        state["name"], state["data"] = None, bytearray()

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        if bytes(header["field"]).lower() == b"content-disposition":
            _, params = _parse_content_type(bytes(header["value"]).decode("latin-1"))
            name = params.get(b"name")
            state["name"] = name.decode("utf-8", "replace") if name is not None else None
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data, start, end):
        state["data"] += data[start:end]

    def on_part_end():
        if state["name"] is None:
            raise FormError("a multipart part has no Content-Disposition name; name it `file` or `text`")
        parts.append((state["name"], state["data"]))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise FormError(f"malformed multipart/form-data body ({e})") from e
    except (ValueError, IndexError, UnicodeError) as e:  # hostile framing can trip the parser in other ways
        raise FormError(f"malformed multipart/form-data body ({type(e).__name__})") from e
    if parser.state not in (MultipartState.END, MultipartState.BOUNDARY_PADDING) or not parts:
        # a cut-off body would otherwise come back as its complete parts only, the file silently missing
        raise FormError("multipart/form-data body ends before its closing boundary (truncated upload?); "
                        "send the whole body")
    return _unique((name, bytes(data)) for name, data in parts)


def _unique(pairs) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in pairs:
        if name in out:
            raise FormError(f"field `{name}` is given twice; send it once")
        out[name] = value
    return out
