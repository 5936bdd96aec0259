"""Image-report retrieval: Recall@k with chance, on the console and in the report."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, img_bytes, table
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    rows = []
    for d in ("image_to_text", "text_to_image"):
        v = r.get(d)
        if not isinstance(v, Mapping):
            continue
        cells = [f"#{fmt(v.get(f'recall@{k}'))} <small>(chance {fmt(v.get(f'chance@{k}'))})</small>"
                 for k in (1, 5, 10)]
        rows.append([{"image_to_text": "image &rarr; text", "text_to_image": "text &rarr; image"}[d], *cells,
                     f"#{esc(v.get('n', '?'))} over {esc(v.get('n_targets', '?'))}"])
    out = [f"<p>{esc(r.get('n_images', '?'))} images, {esc(r.get('n_texts', '?'))} distinct report texts; relevance: "
           f"{esc(r.get('relevance', 'identical report text'))}. Chance is a random ranking over the same "
           f"candidates.</p>"]
    if rows:
        out.append(table(["direction", "Recall@1", "Recall@5", "Recall@10", "queries"], rows))
    out.append(img_bytes(plots.retrieval_bars(r), "retrieval recall at k with chance"))
    return "".join(out)


def console(rt: Mapping) -> list[str]:
    lines = ["Image-report retrieval, Recall@k (chance in brackets):"]
    for key, label in (("image_to_text", "image -> text"), ("text_to_image", "text -> image")):
        r = rt[key]
        cells = "  ".join(f"R@{k} {cell(r[f'recall@{k}'], 5)} ({cell(r[f'chance@{k}'], 5)})" for k in (1, 5, 10))
        lines.append(f"  {label}  {cells}  n={r['n']} over {r['n_targets']}")
    return lines
