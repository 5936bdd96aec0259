"""Label-efficient probe: the label-efficiency table and figure (drawn here only, see plots.label_efficiency)."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, img_bytes, num, pct, table
from ..plots import SHORTCUT_AUROC
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    fractions = [str(float(x)) for x in (r.get("fractions") or [])]
    base = ((r.get("baseline") or {}).get("findings")) or {}
    out = [f"<p>Split: {esc((r.get('split') or {}).get('how', '?'))}. {esc(r.get('classifier', ''))}.</p>"]
    if fractions and r.get("findings"):
        rows, classes = [], []
        for f, v in r["findings"].items():
            src = num(v.get("source_only_auroc"))
            cells = [esc(f) + ('<span class="badge flag">shortcut</span>' if src is not None and src >= SHORTCUT_AUROC
                              else "")]
            for k in fractions:
                w = (v.get("within_source_auroc") or {}).get(k)
                p = (v.get("auroc") or {}).get(k)
                b = ((base.get(f) or {}).get("auroc") or {}).get(k)
                cells.append(f"#{fmt(w)} / {fmt(p)}" + (f" <small>(scratch {fmt(b)})</small>" if b is not None else ""))
            cells.append("#" + fmt(src))
            rows.append(cells)
            classes.append("flag" if src is not None and src >= SHORTCUT_AUROC else "")
        out.append(table(["finding"] + [f"{pct(k)} of labels: within / pooled" for k in fractions]
                          + ["source-only AUROC"], rows, classes))
    png = plots.label_efficiency(r)
    if png:
        out.append(img_bytes(png, "label efficiency"))
        if isinstance(r.get("plot"), str):
            assets.used.add(r["plot"])  # re-drawn from the numbers above
    elif isinstance(r.get("plot"), str):
        out.append(assets.img(r["plot"], "label efficiency"))
    if r.get("baseline", {}).get("description"):
        out.append(f"<p class='note'>Baseline: {esc(r['baseline']['description'])}</p>")
    return "".join(out)


def console(r: Mapping) -> list[str]:
    base = r.get("baseline") or {}
    lines = []
    counts = {"mean_within_source_auroc": "n_findings_within_source", "mean_auroc": "n_findings"}
    for key, label in (("mean_within_source_auroc", "within-source"), ("mean_auroc", "pooled")):
        def cells(part: Mapping) -> str:
            n = part.get(counts[key]) or {}
            return "  ".join(f"{k}: {cell(v, 5)}" + (f" (n={n[k]})" if k in n else "") for k, v in (part.get(key) or {}).items())

        model_cells, base_cells = cells(r), cells(base)
        lines.append(f"probe ({label} mean AUROC by label fraction): frozen {model_cells}"
                     + (f"  | from scratch {base_cells}" if base_cells else ""))
    return lines
