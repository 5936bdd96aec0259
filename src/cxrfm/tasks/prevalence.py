"""Label prevalence per finding and source: what the evaluated data can and cannot say.

Before reading any AUROC, look at where the positives are. A finding whose known positives all come
from one source is perfectly predicted by the source alone (Zech et al., PLoS Med 2018), so its
pooled AUROC measures the source, not the image. This task needs no model: it counts labels
(1 / 0; unknown left out) per finding, pooled and per source, and lists those single-source findings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from ..data.findings import FINDINGS

if TYPE_CHECKING:
    from .suite import EvalContext


def run(context: "EvalContext") -> dict:
    """The ``prevalence`` task: known / positive counts per finding, pooled and per source."""
    labels = context.manifest.labels()  # (N, F) of 1 / 0 / NaN
    sources = context.manifest.table["source"].astype(str).to_numpy()
    findings: dict[str, dict] = {}
    for j, name in enumerate(FINDINGS):
        known = ~np.isnan(labels[:, j])
        if not known.any():
            continue
        pos = known & (labels[:, j] == 1)
        per_source = {str(s): {"n_known": int((known & (sources == s)).sum()),
                               "n_pos": int((pos & (sources == s)).sum())} for s in sorted(set(sources[known]))}
        findings[name] = {"n_known": int(known.sum()), "n_pos": int(pos.sum()),
                          "prevalence": float(pos.sum() / known.sum()), "per_source": per_source,
                          "sources_with_positives": sorted(s for s, v in per_source.items() if v["n_pos"])}
    single = [f for f, v in findings.items() if len(v["sources_with_positives"]) == 1 and len(v["per_source"]) > 1]
    return {"n_rows": len(context.manifest), "findings": findings, "single_source_findings": single}


def console(r: Mapping) -> list[str]:
    lines = [f"prevalence: {len(r['findings'])} findings with known labels in {r['n_rows']} rows"]
    if r["single_source_findings"]:
        lines.append("  positives from one source only (the source predicts them): "
                     + ", ".join(r["single_source_findings"]))
    return lines


def html(r: Mapping, assets) -> str:
    from ..reporting.markup import esc, fmt, table

    single = set(r["single_source_findings"])
    rows = [[esc(f) + (' <span class="badge flag">one source</span>' if f in single else ""),
             f"#{v['n_pos']} / {v['n_known']}", "#" + fmt(v["prevalence"]),
             "<br>".join(f"<small>{esc(s)}: {c['n_pos']} / {c['n_known']}</small>" for s, c in v["per_source"].items())]
            for f, v in r["findings"].items()]
    return ("<p>Known positives / known labels per finding. A finding flagged <i>one source</i> has all its "
            "positives in a single source, so the source alone predicts it.</p>"
            + table(["finding", "positives / known", "prevalence", "per source"], rows,
                    ["flag" if f in single else "" for f in r["findings"]]))


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="prevalence", run=run, title="Label prevalence by source", needs=("labels",),
    result_keys=("n_rows", "findings", "single_source_findings"), console=console, html=html,
    order=5, summary="known positives per finding and source; flags findings whose positives share one source"))
