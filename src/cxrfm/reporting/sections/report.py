"""Report generation: label F1, text metrics and the clinical-error score per method, the paired difference
evidence - retrieval, and example drafts with their evidence trail beside the reference."""
from __future__ import annotations

import json
from typing import Mapping

from ..assets import Assets
from ..markup import cell, ci_text, esc, fmt, img_bytes, split_how, table
from .. import plots

METHODS = ("retrieval", "structured", "evidence")


def html(r: Mapping, assets: Assets) -> str:
    ref = r.get("reference") or {}
    out = [f"<p><b>Reference:</b> {esc(ref.get('kind', '?'))} &mdash; {esc(ref.get('report_text', 0))} rows scored "
           f"against report text, {esc(ref.get('row_labels', 0))} against the row's source labels. "
           f"{esc(r.get('n', '?'))} evaluation rows{esc(split_how(r))}.</p>",
           f"<p><b>Headline:</b> {esc(r.get('headline_method', '?'))} &mdash; {esc(r.get('headline_rule', ''))}</p>"]
    rows, groups = [], {}
    for m in METHODS:
        v = r.get(m)
        if not isinstance(v, Mapping):
            continue
        if "skipped" in v:
            rows.append([esc(m), f'<span class="skipped">skipped: {esc(v["skipped"])}</span>', "", "", "", "", "",
                         ""])
            continue
        lf = v.get("label_f1") or {}
        ce = v.get("clinical_errors") or {}
        rows.append([esc(m) + (' <span class="badge skip">headline</span>' if m == r.get("headline_method") else ""),
                     f"#{fmt(lf.get('micro_14'))} <small>{ci_text(lf.get('micro_14_ci'))}</small>",
                     "#" + fmt(lf.get("macro_14")),
                     f"#{fmt(lf.get('micro_5'))} <small>{ci_text(lf.get('micro_5_ci'))}</small>",
                     "#" + fmt(lf.get("macro_5")), "#" + fmt(v.get("bleu4")), "#" + fmt(v.get("rouge_l")),
                     f"#{fmt(ce.get('mean_score'))} <small>n={esc(ce.get('n', 0))}</small>"])
        for k, label in (("micro_14", "F1 micro-14"), ("macro_14", "F1 macro-14"), ("micro_5", "F1 micro-5"),
                         ("macro_5", "F1 macro-5")):
            groups.setdefault(label, {})[m] = lf.get(k)
        groups.setdefault("BLEU-4", {})[m] = v.get("bleu4")
        groups.setdefault("ROUGE-L", {})[m] = v.get("rouge_l")
    if rows:
        out.append(table(["method", "label F1 micro-14 [CI]", "macro-14", "micro-5 [CI]", "macro-5", "BLEU-4",
                           "ROUGE-L", "clinical-error score"], rows))
    out.append(_paired(r.get("evidence_vs_retrieval")))
    const = {m: r[m]["stated_on_every_row"] for m in METHODS if isinstance(r.get(m), Mapping)
             and r[m].get("stated_on_every_row")}
    if const:
        out.append("<p class='note'><b>Stated on every evaluation image</b> (recall earned without looking): "
                   + "; ".join(f"{esc(m)}: {esc(', '.join(fs))}" for m, fs in const.items()) + "</p>")
    ev = r.get("evidence")
    if isinstance(ev, Mapping) and "counts" in ev:
        c = ev["counts"]
        out.append(f"<p class='note'><b>Evidence trail:</b> anatomy: {esc(ev.get('anatomy'))}; concepts: "
                   f"{esc(ev.get('concepts'))}; neighbours: {esc(ev.get('neighbours'))}. Of "
                   f"{esc(c.get('drafted_present'))} findings above the 'likely' operating point, "
                   f"{esc(c.get('stated_present'))} were stated present and {esc(c.get('downgraded'))} written as "
                   f"possible for want of evidence ({esc(ev.get('rule'))}).</p>")
    if r.get("text_metrics_skipped"):
        out.append(f"<p class='note'>BLEU/ROUGE: {esc(r['text_metrics_skipped'])}</p>")
    out.append(img_bytes(plots.paired_bars("Report generation metrics (axis scaled to the largest value)", groups,
                                            ylim=None), "report metrics"))
    rad = r.get("radeval")
    if isinstance(rad, Mapping):
        out.append(f"<p class='note'>RadEval (F1-CheXbert, RadGraph, GREEN): "
                   f"{esc(rad.get('skipped')) if 'skipped' in rad else esc(json.dumps(rad))}</p>")
    ex = r.get("examples") or []
    if ex:
        keys = [k for k in ("reference", "retrieval", "evidence") if any(k in e for e in ex)]
        if not any("evidence" in e for e in ex):
            keys = [k for k in ("reference", "retrieval", "structured") if any(k in e for e in ex)]
        trail = any("evidence_trail" in e for e in ex)
        out.append("<h3>Examples</h3>" + table(["image", *keys, *(["evidence trail"] if trail else [])], [
            [esc(e.get("id", "")) + f"<br><small>{esc(e.get('reference_kind', ''))}</small>"]
            + [f"<small>{esc(e.get(k) or '')}</small>".replace("\n", "<br>") for k in keys]
            + ([_trail(e.get("evidence_trail"))] if trail else []) for e in ex], cls="examples"))
    return "".join(out)



def _paired(d) -> str:
    if not isinstance(d, Mapping):
        return ""
    if "skipped" in d:
        return f"<p class='note'>Evidence - retrieval: skipped ({esc(d['skipped'])})</p>"
    d14, d5 = d.get("micro_14") or {}, d.get("micro_5") or {}
    verdict = "meets" if d.get("meets_goal") else "does not meet"
    return (f"<p><b>Evidence - retrieval</b> (label micro-F1, paired patient bootstrap): 14 findings "
            f"{fmt(d14.get('difference'))} <small>{ci_text(d14.get('ci'))}</small>, 5 findings "
            f"{fmt(d5.get('difference'))} <small>{ci_text(d5.get('ci'))}</small>; {verdict} the goal of "
            f"&ge; {fmt(d.get('goal'), 2)}.</p>")


def _trail(items) -> str:
    """One image's evidence trail: per stated finding its status, zone, concepts, CTR and reasoning trace."""
    if not items:
        return "<small>no finding stated present or possible</small>"
    lines = []
    for t in items:
        bits = [f"p = {fmt(t.get('probability'), 2)}"]
        if t.get("zone"):
            bits.append(f"zone: {esc(t['zone'])}")
        elif t.get("region_note"):
            bits.append(f"no zone ({esc(t['region_note'])})")
        if t.get("concepts"):
            bits.append("concepts: " + esc(", ".join(t["concepts"])))
        if t.get("ctr") is not None:
            bits.append(f"CTR {fmt(t['ctr'], 2)}")
        if t.get("neighbours"):
            bits.append(f"{esc(t['neighbours'])} nearest report(s) state it")
        lines.append(f"<li><b>{esc(t.get('finding'))}</b>: {esc(t.get('status'))} ({'; '.join(bits)})<br>"
                     f"<span class='trace'>{esc(t.get('trace') or '')}</span></li>")
    return "<small><ul>" + "".join(lines) + "</ul></small>"


def console(r: Mapping) -> list[str]:
    f1 = r.get("label_f1") or {}
    lines = [f"report ({r.get('headline_method')}): label F1 micro-14 {cell(f1.get('micro_14'), 5)}  "
             f"macro-14 {cell(f1.get('macro_14'), 5)}  micro-5 {cell(f1.get('micro_5'), 5)}  "
             f"BLEU-4 {cell(r.get('bleu4'), 5)}  ROUGE-L {cell(r.get('rouge_l'), 5)}  "
             f"reference: {(r.get('reference') or {}).get('kind')}"]
    d = r.get("evidence_vs_retrieval") or {}
    if "micro_14" in d:
        lines.append(f"report: evidence - retrieval micro-14 {cell(d['micro_14'].get('difference'), 6)} "
                     f"{ci_text(d['micro_14'].get('ci'))} (goal >= {d.get('goal')}: "
                     f"{'met' if d.get('meets_goal') else 'not met'})")
    return lines
