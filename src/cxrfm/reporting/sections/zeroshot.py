"""Zero-shot classification: console table and report section (within-source first, pooled second)."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, ci_text, esc, fmt, img_bytes, num, table
from ..plots import SHORTCUT_AUROC
from .. import plots


def html(r: Mapping, assets: Assets) -> str:
    rows, classes = [], []
    for f, v in (r.get("findings") or {}).items():
        src = num(v.get("source_only_auroc"))
        flagged = src is not None and src >= SHORTCUT_AUROC
        per = "<br>".join(f"<small>{esc(s)}: {fmt(a)}</small>" for s, a in (v.get("per_source") or {}).items())
        rows.append([
            esc(f) + ('<span class="badge flag">shortcut</span>' if flagged else ""),
            "#" + fmt(v.get("within_source_auroc")),
            per or '<small class="skipped">no source with enough of both</small>',
            "#" + fmt(v.get("auroc")) + f" <small>{ci_text(v.get('ci'))}</small>",
            f"#{esc(v.get('n_pos', '?'))} / {esc(v.get('n_neg', '?'))}", "#" + fmt(src)])
        classes.append("flag" if flagged else "")
    out = [f"<p>Prompts: {esc(r.get('prompt_set') or r.get('prompts', '?'))}; {esc(r.get('n_rows', '?'))} rows; "
           f"CI: 95% patient bootstrap.</p>"]
    if rows:
        out.append(table(["finding", "within-source AUROC", "per source", "pooled AUROC [95% CI]", "n_pos / n_neg",
                           "source-only AUROC"], rows, classes))
        out.append(table(["", "within-source", "pooled", "source-only"], [[
            "<b>mean</b>", "#" + fmt(r.get("mean_within_source_auroc")), "#" + fmt(r.get("mean_auroc")),
            "#" + fmt(r.get("mean_source_only_auroc"))]]))
    tm = r.get("template_matched") or {}
    if "mean_auroc" in tm:
        out.append(f"<p class='note'>{esc(tm.get('label', 'template-matched prompts'))}: mean within-source "
                   f"{fmt(tm.get('mean_within_source_auroc'))}, pooled {fmt(tm.get('mean_auroc'))} over "
                   f"{esc(tm.get('n_findings', 0))} finding(s) (the pseudo-report generator's own sentences: "
                   f"closer to supervised template matching than to zero-shot).</p>")
    out.append(img_bytes(plots.zeroshot_forest(r), "zero-shot AUROC forest plot"))
    skipped = r.get("skipped_findings") or {}
    if skipped:
        items = skipped.items() if isinstance(skipped, Mapping) else ((s, "") for s in skipped)
        out.append("<details><summary>Findings not scored ({})</summary><ul>{}</ul></details>".format(
            len(skipped), "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in items)))
    return "".join(out)


def console(zs: Mapping) -> list[str]:
    """The zero-shot AUROC table: within-source first, pooled with its CI, source-only beside it."""
    lines = [f"Zero-shot classification, AUROC ({zs.get('prompt_set') or 'prompts: ' + str(zs.get('prompts', '?'))}). "
             "Sources are a shortcut, so report within them:",
             "  within-source = mean of per-source AUROCs (sources with >= 10 pos and >= 10 neg);",
             "  source-only = what knowing only the source achieves (in-sample)."]
    w = max([len("finding")] + [len(f) for f in zs["findings"]])
    lines.append(f"  {'finding'.ljust(w)}  within  pooled  [95% CI]         src-only  n_pos  n_neg  #src")
    for f, r in zs["findings"].items():
        lo, hi = r["ci"]
        lines.append(f"  {f.ljust(w)}  {cell(r['within_source_auroc'])}  {cell(r['auroc'])}  "
                     f"[{cell(lo, 5)}, {cell(hi, 5)}]  {cell(r['source_only_auroc'], 8)}  "
                     f"{r['n_pos']:5d}  {r['n_neg']:5d}  {len(r['per_source'])}")
    lines.append(f"  {'mean'.ljust(w)}  {cell(zs['mean_within_source_auroc'])}  {cell(zs['mean_auroc'])}  "
                 f"{'':16}  {cell(zs.get('mean_source_only_auroc'), 8)}")
    tm = template_matched_line(zs)
    if tm:
        lines.append(tm)
    if zs.get("skipped_findings"):
        lines.append("  not scored (reasons in results.json skipped_findings): " + ", ".join(zs["skipped_findings"]))
    return lines


def template_matched_line(result: Mapping) -> str | None:
    """The console line for the template-matched means, labelled so (None when it was not scored)."""
    tm = result.get("template_matched") or {}
    if "mean_auroc" not in tm:
        return None

    def fmt(x):
        return f"{x:.3f}" if isinstance(x, (int, float)) else "-"

    return (f"  template-matched prompts (the generator's own sentences; not zero-shot): within "
            f"{fmt(tm.get('mean_within_source_auroc'))}  pooled {fmt(tm.get('mean_auroc'))}  "
            f"over {tm.get('n_findings', 0)} finding(s)")
