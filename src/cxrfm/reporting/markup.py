"""HTML building blocks of the report: escaping, number formats, tables and the page's style sheet.

Every value from results.json reaches the page through :func:`esc` (or a number format), so a
crafted results file cannot inject markup. Table cells are already-escaped HTML.
"""
from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Mapping

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330;
font-size:14px;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:24px;margin:6px 0 4px}h2{font-size:19px;margin:0 0 8px;border-bottom:2px solid #d8dce3;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:14px 18px;margin:14px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d8dce3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.flag td{background:#fde8e8}
.meta td:first-child{font-weight:600;white-space:nowrap;width:170px}
.warn{background:#fff4e5;border:1px solid #f0a030;border-left:6px solid #e67e00;padding:8px 12px;margin:10px 0;
border-radius:4px}
.danger{background:#fdecea;border:1px solid #e57373;border-left:6px solid #c62828;padding:8px 12px;margin:10px 0;
border-radius:4px}
.skipped{color:#6b7280;font-style:italic}.note{color:#6b7280;font-size:12px}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:11px;font-weight:600;margin-left:6px;
vertical-align:middle}
.badge.flag{background:#c62828;color:#fff}.badge.skip{background:#9ca3af;color:#fff}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{flex:1 1 200px;background:#f8f9fb;border:1px solid #dde1e7;border-radius:6px;padding:8px 12px}
.card .v{font-size:22px;font-weight:700}.card .k{font-size:12px;color:#4b5563}
.card.primary{border-color:#2ca02c;background:#f0f9f0}
img.fig{max-width:100%;height:auto;display:block;margin:6px 0;border:1px solid #eee}
.overlays{display:flex;flex-wrap:wrap;gap:10px}.overlays figure{margin:0;flex:1 1 220px;max-width:360px}
.overlays img{width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:12px;color:#4b5563}
pre{white-space:pre-wrap;font-size:12px;background:#f8f9fb;border:1px solid #e5e7eb;padding:6px;margin:4px 0}
details summary{cursor:pointer;color:#374151;font-size:13px}
small{color:#6b7280}
table.examples{width:100%;table-layout:fixed}table.examples th:first-child{width:14%}
table.examples td{overflow-wrap:anywhere}
"""



def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else None


def fmt(x: object, digits: int = 3) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    v = num(x)
    return f"{v:.{digits}f}" if v is not None else "&ndash;"


def pct(fraction: object) -> str:
    return f"{float(fraction) * 100:g}%"


def ci_text(ci: object) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and num(ci[0]) is not None and num(ci[1]) is not None:
        return f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return ""


def img_bytes(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(header: Iterable[str] | None, rows: Iterable[Iterable[str]], row_classes: Iterable[str] | None = None,
           cls: str = "") -> str:
    """Cells are already-escaped HTML; a cell starting with "#" is right-aligned (numbers)."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>" if header is not None else ""
    body = []
    classes = list(row_classes) if row_classes is not None else None
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c[1:]}</td>' if c.startswith("#") else f"<td>{c}</td>" for c in row)
        rc = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{rc}>{cells}</tr>")
    return f'<table class="{cls}">{head}<tbody>{"".join(body)}</tbody></table>'


def flatten(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Scalar leaves of nested dicts/lists as (dotted key, value); long lists are summarised."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping) and depth < 6:
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in obj) and len(obj) <= 12:
            out.append((prefix, ", ".join(fmt(v) if num(v) is not None else str(v) for v in obj)))
        else:
            out.append((prefix, f"({len(obj)} items)"))
    else:
        out.append((prefix, obj))
    return out


def all_numbers(result: Mapping, limit: int = 400) -> str:
    rows = [(k, v) for k, v in flatten(result) if not (isinstance(v, str) and v.lower().endswith(".png"))]
    if not rows:
        return ""
    cells = [[esc(k), ("#" + fmt(v, 4)) if num(v) is not None else esc(v)] for k, v in rows[:limit]]
    more = f"<p class='note'>{len(rows) - limit} more values in results.json</p>" if len(rows) > limit else ""
    return (f"<details><summary>All values of this task ({len(rows)})</summary>"
            f"{table(['key', 'value'], cells)}{more}</details>")


def metric(v: Any) -> tuple[float | None, str]:
    """A metric that is a number or {mean/value, ci}."""
    if isinstance(v, Mapping):
        x = next((v[k] for k in ("mean", "value", "median") if k in v), None)
        return num(x), ci_text(v.get("ci"))
    return num(v), ""


def split_how(r: Mapping) -> str:
    how = (r.get("split") or {}).get("how") if isinstance(r.get("split"), Mapping) else None
    return f" ({how})" if how else ""


def cell(x: object, width: int = 6) -> str:
    """A console table cell: 3 decimals right-aligned, '-' for a missing value."""
    return f"{x:.3f}".rjust(width) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-".rjust(width)
