"""Evaluation commands: eval, index, report, score-reports."""
from __future__ import annotations

from pathlib import Path


# ---------------------------------------------------------------- eval
def _add_eval(sub):
    from ..tasks.registry import default_tasks, list_tasks

    p = sub.add_parser(
        "eval", help="evaluate a model on every task type (--tasks all) and write results.json + report.html",
        description="Run the evaluation tasks for the model in RUN on MANIFEST and write OUT/results.json. "
                    "Zero-shot AUROC is reported per finding with a patient-level bootstrap CI, within each source "
                    "and pooled (sources are a shortcut, so report within them); retrieval gives Recall@1/5/10 "
                    "with chance level over rows with report text. Tasks the data cannot support are recorded "
                    "as skipped with the reason.")
    p.add_argument("--model", required=True, type=Path, help="run folder written by `cxrfm pretrain`")
    p.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) to evaluate on")
    known = "; ".join(f"{t.name}: {t.summary}" if t.summary else t.name for t in list_tasks()).replace("%", "%%")
    p.add_argument("--tasks", default=",".join(default_tasks()),
                   help=f"comma-separated tasks, or 'all' (default {','.join(default_tasks())}; known: {known})")
    p.add_argument("--out", required=True, type=Path, help="output folder for results.json")
    p.add_argument("--prompts", type=Path, default=None,
                   help="zero-shot prompts JSON {finding: {positive: [...], negative: [...]}} (default: bundled)")
    p.add_argument("--findings", default=None,
                   help="comma-separated canonical findings to score (default: every finding with enough labels)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUROC CI (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    p.add_argument("--train-data", type=Path, default=None,
                   help="manifest that tasks training a head (probe, segmentation, report) learn from; "
                        "default: a seeded patient split of --data (results.json says which)")
    p.add_argument("--concepts", type=Path, default=None,
                   help="concepts folder from `cxrfm concepts train` for the `concepts` task (default: the task "
                        "trains one on the training part)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from ..tasks.suite import RESULTS_FILE, evaluate, format_results_table

    findings = [f.strip() for f in args.findings.split(",") if f.strip()] if args.findings else None
    results = evaluate(args.model, args.data, tasks=args.tasks, out=args.out, seed=args.seed, n_boot=args.n_boot,
                       prompts=args.prompts, cache_dir=args.cache_dir, progress=True, findings=findings,
                       train_data=args.train_data, concepts=args.concepts)
    print(format_results_table(results))
    print(f"results: {args.out / RESULTS_FILE}")
    if (args.out / "report.html").exists():
        print(f"report:  {args.out / 'report.html'}")
    return 0


# ---------------------------------------------------------------- index
def _add_index(sub):
    p = sub.add_parser(
        "index", help="embed a manifest's images into a saved search index",
        description="Embed every image of MANIFEST with the model in RUN and save a FAISS cosine index with the "
                    "row ids and report texts to OUT (index.faiss, items.csv, index.json), for `cxrfm serve`.")
    p.add_argument("--model", required=True, type=Path, help="run folder written by `cxrfm pretrain`")
    p.add_argument("--data", required=True, type=Path, help="manifest (.csv/.parquet) to index")
    p.add_argument("--out", required=True, type=Path, help="output folder for the index")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    p.set_defaults(func=_run_index)


def _run_index(args) -> int:
    from ..tasks.retrieval import index_manifest

    index = index_manifest(args.model, args.data, args.out, cache_dir=args.cache_dir, progress=True)
    print(f"index: {args.out} ({len(index)} images, {index.dim}-d)")
    return 0


# ---------------------------------------------------------------- report
def _add_report(sub):
    p = sub.add_parser("report", help="render results.json as a self-contained report.html",
                       description="Render an evaluation's results.json (and the plots it references) as one "
                                   "self-contained HTML page; within-source figures lead, pooled second.")
    p.add_argument("results", type=Path, help="results.json written by `cxrfm eval`")
    p.add_argument("--out", type=Path, default=None, help="output HTML (default: report.html beside RESULTS)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from ..reporting.html import render_results_file
    from ..tasks.registry import list_tasks

    print(f"report: {render_results_file(args.results, args.out, tasks=list_tasks())}")
    return 0


# ---------------------------------------------------------------- score-reports
def _add_score_reports(sub):
    p = sub.add_parser(
        "score-reports", help="count clinically significant errors of candidate reports against references",
        description="Join CANDIDATES and REFERENCES (CSV/Parquet, columns `id` and `report`) on `id` and count, per "
                    "pair, the clinically significant errors of the candidate (GREEN-style, offline, no LLM): "
                    "false_finding, missed_finding, wrong_location, wrong_severity, false_comparison, device_error; "
                    "plus matched and score = matched / (matched + errors). Validation: docs/reports.md.")
    p.add_argument("candidates", type=Path, help="generated reports: a table with `id` and `report` columns")
    p.add_argument("references", type=Path, help="reference reports: a table with `id` and `report` columns")
    p.add_argument("--out", required=True, type=Path, help="output CSV (or .parquet): one row per id")
    p.set_defaults(func=_run_score_reports)


def _run_score_reports(args) -> int:
    from ..data.report_errors import score_report_files

    print(score_report_files(args.candidates, args.references, args.out))
    return 0


COMMANDS = (_add_eval, _add_index, _add_report, _add_score_reports,)
