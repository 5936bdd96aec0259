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
    out = [f"<p>{esc(r.get('n_in', '?'))} chest X-rays (in-distribution) vs {esc(r.get('n_out', '?'))} other images. "
           f"FPR95: share of non-CXR images passing at 95% CXR recall (lower is better).</p>",
           table(["score", "AUROC", "FPR95"], rows)]
    if num(r.get("tpr_at_gate")) is not None:
        out.append(f"<p>At the gate's threshold: TPR {fmt(r.get('tpr_at_gate'))}, FPR {fmt(r.get('fpr_at_gate'))}.</p>")
    out.append(img_bytes(plots.paired_bars("OOD detection", {
        "AUROC": {"gate": r.get("auroc"), **{c: r.get(f"auroc_{c}") for c in comps}},
        "FPR95": {"gate": r.get("fpr95"), **{c: r.get(f"fpr95_{c}") for c in comps}}}), "ood metrics"))
    return "".join(out)


def console(r: Mapping) -> list[str]:
    return [f"ood: AUROC {cell(r.get('auroc'), 5)}  FPR95 {cell(r.get('fpr95'), 5)}  "
            f"n_in={r.get('n_in')} n_out={r.get('n_out')}"]
