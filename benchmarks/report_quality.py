"""Report quality on held-out patients: the evidence draft against copying the nearest training report.

Runs ``cxrfm eval --tasks report`` for the run in ``--model`` on a patient-disjoint split of
``--data`` (default ``../shared/data/cxr/manifest.csv``: the rows with report text and the labelled
rows, the report task picks each row's reference itself: report text where the row has one, else the
row's known labels) and prints, per method, label micro/macro-F1 over the 14 and 5 findings with
patient-bootstrap CIs, BLEU-4, ROUGE-L and the clinical-error score, then the paired difference
evidence - retrieval in micro-F1. The split is :func:`cxrfm.train_eval_split` (25 % of the patients
held out, ``--seed``), the one ``cxrfm demo`` uses; the run must have been trained on its training part
only (``eval`` warns when the run saw evaluation patients). Nothing is trained here.

Without ``--model`` it writes the split (``--work``/train.csv and eval.csv) and prints the commands
that make a small run and measure it::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report_quality.py                       # the split + how
    .venv/bin/cxrfm pretrain --data runs/report_quality/train.csv --out runs/report_quality/run \\
        --config tiny-cpu --curate none --epochs 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report_quality.py --model runs/report_quality/run

The headline method (``evidence``) is fixed in ``cxrfm.tasks.report.HEADLINE_METHOD``, not chosen on the
evaluation rows. Set ``CXRFM_ANATOMY`` to an anatomy folder for lung zones and CTRs in the trail.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from cxrfm import CxrfmError, Manifest, evaluate, shared_data_dir, train_eval_split

METHODS = ("retrieval", "structured", "evidence")


def _default_data() -> Path | None:
    d = shared_data_dir()
    return d / "cxr" / "manifest.csv" if d is not None else None


def _f(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def table(r: dict) -> str:
    """The report-quality table (markdown) of a report task result."""
    lines = ["| method | label micro-F1 (14) [95 % CI] | macro-F1 (14) | micro-F1 (5) [95 % CI] | macro-F1 (5) "
             "| BLEU-4 | ROUGE-L | clinical-error score (n) |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        v = r.get(m) or {}
        if "skipped" in v:
            lines.append(f"| {m} | skipped: {v['skipped']} |  |  |  |  |  |  |")
            continue
        lf = v.get("label_f1") or {}
        ce = v.get("clinical_errors") or {}
        star = " (headline)" if m == r.get("headline_method") else ""
        lines.append(f"| {m}{star} | {_f(lf.get('micro_14'))} {_ci(lf.get('micro_14_ci'))} | {_f(lf.get('macro_14'))} "
                     f"| {_f(lf.get('micro_5'))} {_ci(lf.get('micro_5_ci'))} | {_f(lf.get('macro_5'))} "
                     f"| {_f(v.get('bleu4'))} | {_f(v.get('rouge_l'))} | {_f(ce.get('mean_score'))} ({ce.get('n', 0)}) |")
    d = r.get("evidence_vs_retrieval") or {}
    if "skipped" in d:
        lines.append(f"\nevidence - retrieval: skipped ({d['skipped']})")
    else:
        d14, d5 = d.get("micro_14") or {}, d.get("micro_5") or {}
        lines.append(f"\nevidence - retrieval, label micro-F1 (14): {_f(d14.get('difference'))} {_ci(d14.get('ci'))}; "
                     f"(5): {_f(d5.get('difference'))} {_ci(d5.get('ci'))} (paired patient bootstrap); "
                     f"goal >= {d.get('goal')}: {'met' if d.get('meets_goal') else 'NOT met'}")
    for m in METHODS:
        if (r.get(m) or {}).get("stated_on_every_row"):
            lines.append(f"{m} states on every evaluation image: {', '.join(r[m]['stated_on_every_row'])}")
    ref = r.get("reference") or {}
    lines.append(f"rows: {r.get('n')} ({r.get('n_patients')} patients); reference: {ref.get('report_text')} report "
                 f"text, {ref.get('row_labels')} row labels")
    ev = r.get("evidence") or {}
    if "counts" in ev:
        lines.append(f"evidence trail: anatomy {ev.get('anatomy')}; concepts {ev.get('concepts')}; "
                     f"counts {ev['counts']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Without --model: writes the split and prints how to make a run.")
    p.add_argument("--model", type=Path, default=None, help="run folder (`cxrfm pretrain`) trained on the split's "
                                                            "training part; nothing is trained here")
    p.add_argument("--data", type=Path, default=_default_data(),
                   help="manifest to split by patient (default ../shared/data/cxr/manifest.csv)")
    p.add_argument("--work", type=Path, default=Path("runs/report_quality"),
                   help="folder for train.csv / eval.csv and the eval output (default runs/report_quality)")
    p.add_argument("--eval-fraction", type=float, default=0.25, help="share of patients held out (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="split and bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--concepts", type=Path, default=None, help="a concepts folder (default: the run's, if any)")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache (default $CXRFM_CACHE)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data is None or not args.data.is_file():
        print(f"error: no manifest at {args.data}; pass --data or set CXRFM_DATA to the shared data folder",
              file=sys.stderr)
        return 2
    try:
        manifest = Manifest.load(args.data)
        train, held = train_eval_split(manifest, eval_fraction=args.eval_fraction, seed=args.seed)
        args.work.mkdir(parents=True, exist_ok=True)
        train.save(args.work / "train.csv")
        held.save(args.work / "eval.csv")
        print(f"split of {args.data}: train {len(train)} rows / held-out {len(held)} rows "
              f"({held.table['patient_id'].nunique()} patients, none in train) -> {args.work}/train.csv, eval.csv")
        if args.model is None:
            print("\nno --model given; nothing is trained here. Make a small run on the training part, then measure:\n"
                  f"  .venv/bin/cxrfm pretrain --data {args.work}/train.csv --out {args.work}/run --config tiny-cpu "
                  f"--curate none --epochs 2\n"
                  f"  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report_quality.py --model {args.work}/run",
                  file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        res = evaluate(args.model, held, tasks="report", out=args.work / "eval", seed=args.seed, n_boot=args.n_boot,
                       cache_dir=args.cache_dir, train_data=train, concepts=args.concepts, progress=True)
    except CxrfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = res["tasks"]["report"]
    for w in res.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    if "skipped" in r:
        print(f"report task skipped: {r['skipped']}", file=sys.stderr)
        return 1
    print(f"\nreport task on held-out patients ({time.perf_counter() - t0:.0f} s; {args.work / 'eval' / 'report.html'})")
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
