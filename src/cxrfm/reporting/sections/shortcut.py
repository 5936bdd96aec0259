"""Shortcut audit: attributes predictable from the embedding, and error clusters."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, img_bytes, num, table
from ..plots import SHORTCUT_AUROC
from .. import plots


def _attribute_aurocs(r: Mapping) -> dict[str, float | None]:
    for key in ("attributes", "attribute_auroc", "attribute_aurocs"):
        v = r.get(key)
        if isinstance(v, Mapping):
            return {k: (num(x.get("auroc")) if isinstance(x, Mapping) else num(x)) for k, x in v.items()}
    return {}


def html(r: Mapping, assets: Assets) -> str:
    att = _attribute_aurocs(r)
    out = []
    high = {k: v for k, v in att.items() if v is not None and v >= SHORTCUT_AUROC}
    if high:
        out.append(f'<div class="danger"><b>Warning:</b> the image embedding predicts '
                   f"{', '.join(f'<b>{esc(k)}</b> (AUROC {fmt(v)})' for k, v in high.items())}; a classifier on it can "
                   f"use these attributes instead of the disease.</div>")
    if att:
        out.append(table(["attribute", "AUROC from the image embedding"],
                          [[esc(k), "#" + fmt(v)] for k, v in att.items()],
                          ["flag" if k in high else "" for k in att]))
        out.append(img_bytes(plots.paired_bars("Attributes predictable from the image embedding",
                                                {k: {"": v} for k, v in att.items()}, "AUROC",
                                                ref_line=SHORTCUT_AUROC), "attribute aurocs"))
    clusters = next((r[k] for k in ("error_clusters", "clusters") if isinstance(r.get(k), list)), None)
    if clusters:
        keys = list(dict.fromkeys(k for c in clusters if isinstance(c, Mapping) for k in c
                                  if not isinstance(c[k], (Mapping, list))))[:8]
        out.append("<h3>Error clusters</h3>" + table(
            [esc(k) for k in keys], [[("#" + fmt(c.get(k))) if num(c.get(k)) is not None else esc(c.get(k, ""))
                                     for k in keys] for c in clusters if isinstance(c, Mapping)]))
    return "".join(out)


def console(r: Mapping) -> list[str]:
    attrs = "  ".join(f"{k} {cell(v.get('auroc'), 5)}" for k, v in (r.get("attributes") or {}).items()
                      if isinstance(v, Mapping))
    lines = [f"shortcut (attribute AUROC from frozen embeddings): {attrs}"]
    lines += [f"  warning: {w}" for w in (r.get("warnings") or [])[:3]]
    return lines
