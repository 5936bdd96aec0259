"""Report generation: label F1 and text metrics per method, and examples."""
from __future__ import annotations

import json
from typing import Mapping

from ..assets import Assets
from ..markup import cell, ci_text, esc, fmt, img_bytes, split_how, table
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    ref = r.get("reference") or {}
    out = [f"<p><b>Reference:</b> {esc(ref.get('kind', '?'))} &mdash; {esc(ref.get('report_text', 0))} rows scored "
           f"against report text, {esc(ref.get('row_labels', 0))} against the row's source labels. "
           f"{esc(r.get('n', '?'))} evaluation rows{esc(split_how(r))}.</p>",
           f"<p><b>Headline:</b> {esc(r.get('headline_method', '?'))} &mdash; {esc(r.get('headline_rule', ''))}</p>"]
    rows, groups = [], {}
    for m in ("retrieval", "structured"):
        v = r.get(m)
        if not isinstance(v, Mapping):
            continue
        if "skipped" in v:
            rows.append([esc(m), f'<span class="skipped">skipped: {esc(v["skipped"])}</span>', "", "", "", "", ""])
            continue
        lf = v.get("label_f1") or {}
        rows.append([esc(m) + (' <span class="badge skip">headline</span>' if m == r.get("headline_method") else ""),
                     f"#{fmt(lf.get('micro_14'))} <small>{ci_text(lf.get('micro_14_ci'))}</small>",
                     "#" + fmt(lf.get("macro_14")),
                     f"#{fmt(lf.get('micro_5'))} <small>{ci_text(lf.get('micro_5_ci'))}</small>",
                     "#" + fmt(lf.get("macro_5")), "#" + fmt(v.get("bleu4")), "#" + fmt(v.get("rouge_l"))])
        for k, label in (("micro_14", "F1 micro-14"), ("macro_14", "F1 macro-14"), ("micro_5", "F1 micro-5"),
                         ("macro_5", "F1 macro-5")):
            groups.setdefault(label, {})[m] = lf.get(k)
        groups.setdefault("BLEU-4", {})[m] = v.get("bleu4")
        groups.setdefault("ROUGE-L", {})[m] = v.get("rouge_l")
    if rows:
        out.append(table(["method", "label F1 micro-14 [CI]", "macro-14", "micro-5 [CI]", "macro-5", "BLEU-4",
                           "ROUGE-L"], rows))
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
        keys = [k for k in ("reference", "retrieval", "structured") if any(k in e for e in ex)]
        out.append("<h3>Examples</h3>" + table(["image", *keys], [
            [esc(e.get("id", "")) + f"<br><small>{esc(e.get('reference_kind', ''))}</small>"]
            + [f"<small>{esc(e.get(k) or '')}</small>".replace("\n", "<br>") for k in keys] for e in ex],
            cls="examples"))
    return "".join(out)


def console(r: Mapping) -> list[str]:
    f1 = r.get("label_f1") or {}
    return [f"report ({r.get('headline_method')}): label F1 micro-14 {cell(f1.get('micro_14'), 5)}  "
            f"macro-14 {cell(f1.get('macro_14'), 5)}  micro-5 {cell(f1.get('micro_5'), 5)}  "
            f"BLEU-4 {cell(r.get('bleu4'), 5)}  ROUGE-L {cell(r.get('rouge_l'), 5)}  "
            f"reference: {(r.get('reference') or {}).get('kind')}"]
