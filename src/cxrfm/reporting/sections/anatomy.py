"""Anatomy: supervised Dice / HD95 per structure, few-shot Dice per k against its baselines, the CTR."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, img_bytes, metric, split_how, table
from .. import plots


def _dice(entry) -> Mapping | None:
    return entry.get("dice") if isinstance(entry, Mapping) and isinstance(entry.get("dice"), Mapping) else None


def _m(entry) -> str:
    d = _dice(entry)
    if d is None:
        return "&ndash;"
    x, ci = metric(d)
    return f"#{fmt(x)} <small>{ci}</small>"


def _structures(r: Mapping) -> list[str]:
    s = r.get("structures")
    return [str(x) for x in s] if isinstance(s, list) else [k for k in (r.get("supervised") or {})]


def _ks(r: Mapping) -> list[str]:
    ks = (r.get("fewshot_model") or {}).get("ks")
    if isinstance(ks, list) and ks:
        return [str(k) for k in ks]
    return sorted({k for per in (r.get("fewshot") or {}).values() if isinstance(per, Mapping) for k in per}, key=int)


def _supervised(r: Mapping) -> str:
    rows = []
    for s in _structures(r):
        v = (r.get("supervised") or {}).get(s) or {}
        if "skipped" in v:
            rows.append([esc(s), esc(v["skipped"]), "", "", ""])
            continue
        hd = v.get("hd95") or {}
        rows.append([esc(s), _m(v), "#" + fmt((v.get("dice") or {}).get("median")),
                     f"#{fmt(hd.get('mean'), 1)} / {fmt(hd.get('median'), 1)}", f"#{v.get('n', '')}"])
    return ("<h3>Supervised U-Net (trained on the training rows)</h3>"
            + table(["structure", "Dice mean [95% CI]", "Dice median", "HD95 mean / median (px)", "test images"], rows))


def _fewshot(r: Mapping) -> str:
    info = r.get("fewshot_model") or {}
    base = r.get("baselines") or {}
    out = ["<h3>Few-shot segmentation (supports from training patients, Dice on the test rows)</h3>"]
    if info and not info.get("available", True):
        out.append(f"<p class='note'>In-context model not evaluated: {esc(info.get('reason', ''))}</p>")
    series = {"in-context": r.get("fewshot") or {}, "atlas": base.get("atlas") or {},
              "supervised on k shots": base.get("supervised_k") or {}}
    rows, bars = [], {}
    for s in _structures(r):
        for k in _ks(r):
            rows.append([esc(s), f"#{esc(k)}", *(_m((v.get(s) or {}).get(k)) for v in series.values())])
            bars[f"{s} k={k}"] = {name: metric(_dice((v.get(s) or {}).get(k)))[0] for name, v in series.items()}
    out.append(table(["structure", "k", *map(esc, series)], rows))
    png = plots.paired_bars("Few-shot Dice by structure and k (higher is better)", bars, ylabel="Dice")
    out.append(img_bytes(png, "few-shot Dice"))
    pre = info.get("pretraining") or {}
    if pre.get("record"):
        out.append(f"<p class='note'>In-context model's pretext training read the mask columns "
                   f"{esc(', '.join(pre.get('mask_columns_read') or []) or 'none')} (heart mask read: "
                   f"{'yes' if pre.get('heart_mask_read') else 'no'}); {pre.get('n_test_images_in_pretext', 0)} test "
                   f"images share a file name with its {pre.get('n_pretext_images', '?')} pretext images.</p>")
    elif pre.get("note"):
        out.append(f"<p class='note'>{esc(pre['note'])}</p>")
    return "".join(out)


def _label_budget(r: Mapping) -> str:
    base = r.get("baselines") or {}
    structures = _structures(r)
    rows = []
    for key, v in (base.get("label_fraction") or {}).items():
        if isinstance(v, Mapping):
            rows.append([f"supervised, {fmt(100 * float(v.get('fraction', 0)), 0)} % of labels",
                         f"#{v.get('n_train', '')}", *(_m(v.get(s)) for s in structures)])
    dec = base.get("frozen_decoder")
    if isinstance(dec, Mapping):
        if "skipped" in dec:
            rows.append(["frozen-encoder decoder", "", *([esc(dec["skipped"])] + [""] * (len(structures) - 1))])
        else:
            rows.append(["frozen-encoder decoder", f"#{(r.get('split') or {}).get('n_train', '')}",
                         *(_m(dec.get(s)) if "skipped" not in (dec.get(s) or {}) else esc(dec[s]["skipped"])
                           for s in structures)])
    if not rows:
        return ""
    return ("<h3>Label budget and the frozen-encoder decoder (Dice on the test rows)</h3>"
            + table(["model", "training images", *map(esc, structures)], rows))


def _ctr(r: Mapping) -> str:
    c = r.get("ctr") or {}
    if c.get("skipped"):
        return f"<h3>Cardiothoracic ratio</h3><p class='note'>{esc(c['skipped'])}</p>"
    cm = c.get("cardiomegaly") or {}
    acc, kap = cm.get("accuracy") or {}, cm.get("kappa") or {}
    rows = [["MAE", _num_ci(c.get("mae"), c.get("mae_ci")), esc(c.get("against", ""))],
            ["median absolute error", "#" + fmt(c.get("median_abs_error")), ""],
            ["mean bias (predicted - reference)", "#" + fmt(c.get("bias")), ""],
            ["cardiomegaly (CTR > 0.5) accuracy", _num_ci(acc.get("value"), acc.get("ci")), f"n = {cm.get('n', '')}"],
            ["cardiomegaly Cohen's kappa", _num_ci(kap.get("value"), kap.get("ci")), ""],
            ["measured / refused", f"#{c.get('n_measured', '')} / {c.get('n_refused', '')}",
             esc("; ".join(f"{k} ({v})" for k, v in (c.get("refusals") or {}).items()))]]
    if isinstance(c.get("mae_vs_reference_masks"), Mapping):
        v = c["mae_vs_reference_masks"]
        rows.insert(1, ["MAE against the reference masks' CTR", "#" + fmt(v.get("mae")), f"n = {v.get('n', '')}"])
    return ("<h3>Cardiothoracic ratio from the supervised model's heart and lungs</h3>"
            + table(["", "value [95% CI]", "note"], rows))


def _num_ci(x, ci) -> str:
    lo_hi = f" <small>[{fmt(ci[0])}, {fmt(ci[1])}]</small>" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"#{fmt(x)}{lo_hi}"


def html(r: Mapping, assets: Assets) -> str:
    out = [f"<p>Split: {esc(split_how(r).strip(' ()') or 'not recorded')}.</p>", _supervised(r), _fewshot(r),
           _label_budget(r), _ctr(r)]
    figures = []
    for name, v in (r.get("overlays") or {}).items():
        if not isinstance(v, Mapping):
            continue
        img = (assets.img(v["path"], f"{name} anatomy overlay", cls="") if isinstance(v.get("path"), str)
               else '<p class="note">overlay not saved (the suite ran without an output folder)</p>')
        figures.append(f"<figure>{img}<figcaption>{esc(name)}: mean Dice {fmt(v.get('dice'))}<br>"
                       f"{esc(v.get('image', ''))}</figcaption></figure>")
    if figures:
        out.append("<h3>Overlays (reference outlines green, predicted red; dashed: predicted CTR widths)</h3>"
                   "<div class='overlays'>" + "".join(figures) + "</div>")
    return "".join(out)


def console(r: Mapping) -> list[str]:
    sup = r.get("supervised") or {}
    lines = ["anatomy: supervised Dice " + ", ".join(
        f"{s} {cell(metric(_dice(sup.get(s)))[0], 5).strip()}" for s in _structures(r))
        + f"  (n_test={(r.get('split') or {}).get('n_test')})"]
    few, info = r.get("fewshot") or {}, r.get("fewshot_model") or {}
    if few:
        atlas = (r.get("baselines") or {}).get("atlas") or {}
        for s in _structures(r):
            per = few.get(s) or {}
            parts = [f"k={k} {cell(metric(_dice(per.get(k)))[0], 5).strip()}" for k in _ks(r)]
            kmax = _ks(r)[-1] if _ks(r) else None
            a = metric(_dice((atlas.get(s) or {}).get(kmax)))[0] if kmax else None
            lines.append(f"  few-shot {s}: " + " ".join(parts) + (f"  (atlas k={kmax} {cell(a, 5).strip()})"
                                                                   if a is not None else ""))
    else:
        lines.append(f"  few-shot: not run: {info.get('reason', 'no result')}")
    c = r.get("ctr") or {}
    if c.get("mae") is not None:
        kap = ((c.get("cardiomegaly") or {}).get("kappa") or {}).get("value")
        lines.append(f"  CTR MAE {cell(c['mae'], 5).strip()} vs {str(c.get('against', '')).split(' (')[0]} "
                     f"(n={c.get('n_scored')}, refused {c.get('n_refused')}); "
                     f"cardiomegaly kappa {cell(kap, 5).strip()}")
    else:
        refused = f" ({c['n_refused']} of {c.get('n_test')} test rows refused)" if c.get("n_refused") else ""
        lines.append(f"  CTR: {c.get('skipped') or c.get('note') or 'not measured'}{refused}")
    return lines
