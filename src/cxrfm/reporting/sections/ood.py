"""Out-of-distribution gate: AUROC and FPR95 of the combined score and its components."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, img_bytes, num, table
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    comps = sorted({k[len("auroc_"):] for k in r if k.startswith("auroc_")})
    rows = [["<b>gate (combined)</b>", "#" + fmt(r.get("auroc")), "#" + fmt(r.get("fpr95"))]]
    rows += [[esc(c), "#" + fmt(r.get(f"auroc_{c}")), "#" + fmt(r.get(f"fpr95_{c}"))] for c in comps]
    out = []
    if "model_free_auroc" in r:
        out.append(f"<p><b>The gate's decision is model-free</b>: AUROC {fmt(r.get('model_free_auroc'))}, "
                   f"refusing {fmt(r.get('model_free_refusal'))} of the non-CXR images and falsely refusing "
                   f"{fmt(r.get('model_free_false_refusal'))} of the chest X-rays. The model's own scores, reported "
                   f"beside it and deciding nothing: embedding kNN AUROC {fmt(r.get('model_auroc'))}, text AUROC "
                   f"{fmt(r.get('model_auroc_text'))}.</p>")
    out += [f"<p>{esc(r.get('n_in', '?'))} chest X-rays (in-distribution) vs {esc(r.get('n_out', '?'))} other images. "
           f"FPR95: share of non-CXR images passing at 95% CXR recall (lower is better).</p>",
           table(["score", "AUROC", "FPR95"], rows)]
    if num(r.get("tpr_at_gate")) is not None:
        out.append(f"<p>At the gate's threshold: TPR {fmt(r.get('tpr_at_gate'))}, FPR {fmt(r.get('fpr_at_gate'))}.</p>")
    out.append(img_bytes(plots.paired_bars("OOD detection", {
        "AUROC": {"gate": r.get("auroc"), **{c: r.get(f"auroc_{c}") for c in comps}},
        "FPR95": {"gate": r.get("fpr95"), **{c: r.get(f"fpr95_{c}") for c in comps}}}), "ood metrics"))
    return "".join(out)


def console(r: Mapping) -> list[str]:
    if "model_free_auroc" not in r:
        return [f"ood: AUROC {cell(r.get('auroc'), 5)}  FPR95 {cell(r.get('fpr95'), 5)}  "
                f"n_in={r.get('n_in')} n_out={r.get('n_out')}"]
    return [f"ood gate (model-free, decides): AUROC {cell(r.get('model_free_auroc'), 5)}  refused "
            f"{cell(r.get('model_free_refusal'), 5)} of non-CXRs, falsely refused {cell(r.get('model_free_false_refusal'), 5)} "
            f"of CXRs  n_in={r.get('n_in')} n_out={r.get('n_out')}",
            f"     the model's own scores (reported, not deciding): embedding kNN AUROC {cell(r.get('model_auroc'), 5)}  "
            f"text AUROC {cell(r.get('model_auroc_text'), 5)}"]
