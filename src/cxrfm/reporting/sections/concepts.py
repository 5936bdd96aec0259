"""Concepts (sparse autoencoder): reconstruction, the bottleneck probe, shortcut suspects, a feature grid.

Reads only the task's result dict (``tasks.concepts`` of results.json)."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, num, table


def _evidence(entry: Mapping) -> str:
    parts = []
    for kind in ("findings", "metadata", "words"):
        for e in (entry.get(kind) or [])[:2]:
            if isinstance(e, Mapping):
                ci = e.get("ci") or [None, None]
                parts.append(f"{esc(e.get('value'))} (OR {fmt(e.get('odds_ratio'), 2)}, CI {fmt(ci[0], 2)}-"
                             f"{fmt(ci[1], 2)}, {e.get('n_top')}/{e.get('n_top_known')} top images)")
    return "; ".join(parts) or "nothing enriched"


def html(r: Mapping, assets: Assets) -> str:
    out = [f"<p>Reconstruction R² on held-out patients <b>{fmt(r.get('r2'))}</b>, dead features "
           f"<b>{fmt(num(r.get('dead_fraction')) * 100 if num(r.get('dead_fraction')) is not None else None, 1)} %"
           f"</b>, {fmt(r.get('mean_active'), 1)} active per image ({esc((r.get('sae') or {}).get('how', ''))}).</p>"]
    if r.get("naming_fallback"):
        out.append(f'<div class="note">Naming: {esc(r["naming_fallback"])}.</div>')
    bn = r.get("bottleneck") or {}
    if bn:
        out.append(f"<h3>Concept bottleneck: {esc(r.get('bottleneck_k', 10))} features per finding vs the dense probe</h3>")
        out.append(table(["finding", "AUROC (features)", "AUROC (dense)", "ratio", "within source", "features"],
                         [[esc(f), "#" + fmt(b.get("auroc")), "#" + fmt(b.get("dense_auroc")), "#" + fmt(b.get("ratio")),
                           "yes" if b.get("within_source") else "pooled",
                           esc(", ".join(f"#{f} {n}" for f, n in zip(b.get("features") or [],
                                                                     (b.get("feature_names") or [])[:3])))]
                          for f, b in bn.items() if isinstance(b, Mapping)]))
    sc = [s for s in (r.get("shortcuts") or []) if isinstance(s, Mapping)]
    if sc:
        out.append("<h3>Shortcut suspects</h3><p>Features that predict a nuisance attribute and on which a finding's "
                   "zero-shot errors load (RaVL-like), most suspicious first.</p>")
        out.append(table(["feature", "name", "attribute", "AUROC", "finding", "error AUROC", "score"],
                         [[f"#{s.get('feature')}", esc(s.get("name")), esc(f"{s.get('attribute')}={s.get('value')}"),
                           "#" + fmt(s.get("auroc")), esc(s.get("finding")), "#" + fmt(s.get("error_auroc")),
                           "#" + fmt(s.get("score"))] for s in sc[:10]]))
    grid = [g for g in (r.get("features") or []) if isinstance(g, Mapping)]
    if grid:
        cards = []
        for g in grid:
            thumbs = assets.img(g["thumbnails_png"], f"feature {g.get('feature')}", cls="") \
                if g.get("thumbnails_png") else ""
            text = ", ".join(esc(t.get("phrase")) for t in (g.get("text") or [])[:2] if isinstance(t, Mapping))
            cards.append(f'<figure class="concept"><figcaption><b>#{esc(g.get("feature"))} {esc(g.get("name"))}</b>'
                         f"<br>{_evidence(g)}<br><i>text: {text or '-'}</i></figcaption>{thumbs}</figure>")
        out.append("<h3>Features</h3>" + "".join(cards))
    return "".join(out)


def console(r: Mapping) -> list[str]:
    lines = [f"concepts: R² {cell(r.get('r2'), 5)} (held-out)  dead {cell(r.get('dead_fraction'), 5)}  "
             f"bottleneck/dense {cell(r.get('bottleneck_mean_ratio'), 5)} over {len(r.get('bottleneck') or {})} finding(s)"]
    for s in (r.get("shortcuts") or [])[:3]:
        if isinstance(s, Mapping):
            lines.append(f"  suspect feature {s.get('feature')} ({s.get('name')}): {s.get('attribute')}={s.get('value')} "
                         f"AUROC {cell(s.get('auroc'), 4)}, {s.get('finding')} errors load {cell(s.get('error_auroc'), 4)}")
    return lines
