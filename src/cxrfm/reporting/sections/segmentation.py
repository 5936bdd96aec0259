"""Lung segmentation: Dice / HD95 against the random-encoder baseline, and the saved overlays."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets, png_paths
from ..markup import cell, esc, fmt, img_bytes, metric, table
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    names = [k for k in r if any(m in k.lower() for m in ("dice", "hd95", "iou", "jaccard"))]
    series: dict[str, Mapping] = {"model": r}
    for k, v in r.items():
        if isinstance(v, Mapping) and "baseline" in k.lower():
            series[k] = v
            names += [n for n in v if any(m in n.lower() for m in ("dice", "hd95", "iou", "jaccard"))]
    names = list(dict.fromkeys(names))
    out = []
    if names:
        rows = []
        for s, d in series.items():
            cells = [esc(s)]
            for n in names:
                x, ci = metric(d.get(n))
                cells.append(f"#{fmt(x)} <small>{ci}</small>")
            rows.append(cells)
        out.append(table(["", *map(esc, names)], rows))
        dice = [n for n in names if "dice" in n.lower() or "iou" in n.lower()]
        out.append(img_bytes(plots.paired_bars("Segmentation overlap (higher is better)", {
            n: {s: metric(d.get(n))[0] for s, d in series.items()} for n in dice}), "segmentation overlap"))
    figures = []
    ov = r.get("overlays")
    if isinstance(ov, Mapping):  # {"best": {"path", "dice", "image"} or a path, ...}
        for name, v in ov.items():
            path = v.get("path") if isinstance(v, Mapping) else v
            caption = esc(name)
            if isinstance(v, Mapping):
                caption += f": Dice {fmt(v.get('dice'))}" + (f"<br>{esc(v['image'])}" if v.get("image") else "")
            img = (assets.img(path, f"{name} overlay", cls="") if isinstance(path, str)
                   else '<p class="note">overlay not saved (the suite ran without an output folder)</p>')
            figures.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    else:
        figures = [f"<figure>{assets.img(v, k, cls='')}<figcaption>{esc(k)}</figcaption></figure>"
                   for k, v in png_paths(r) if "overlay" in k.lower()]
    if figures:
        out.append("<h3>Overlays (reference outline green, prediction red)</h3><div class='overlays'>"
                   + "".join(figures) + "</div>")
    base = r.get("baseline")
    if isinstance(base, Mapping) and base.get("description"):
        out.append(f"<p class='note'>Baseline: {esc(base['description'])}</p>")
    return "".join(out)


def console(r: Mapping) -> list[str]:
    d, b = r.get("dice") or {}, (r.get("baseline") or {}).get("dice") or {}
    ci, bci = d.get("ci") or [None, None], b.get("ci") or [None, None]
    return [f"segmentation: Dice {cell(d.get('mean'), 5)} [{cell(ci[0], 5)}, {cell(ci[1], 5)}]  "
            f"random-encoder baseline {cell(b.get('mean'), 5)} [{cell(bci[0], 5)}, {cell(bci[1], 5)}]  "
            f"n_eval={r.get('n_eval')}"]
