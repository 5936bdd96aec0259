"""``results.json`` -> one self-contained ``report.html`` (inline CSS, figures as base64 PNG data URLs).

The page opens a file, never a network: no scripts, fonts or style sheets are fetched, so it can be
mailed or archived next to the run. It leads with *within-source* figures and shows pooled figures
second, because the sources of open CXR collections are a shortcut (Zech et al., PLoS Med 2018;
DeGrave et al., Nat. Mach. Intell. 2021): in the bundled data a predictor that knows only the source
scores AUROC 0.99 for COVID-19. Any finding whose source-only AUROC reaches
:data:`~cxrfm.reporting.plots.SHORTCUT_AUROC` is flagged at the top and in its table.

Each task gets a section, in the order and with the title and renderer of the task registry
(:func:`cxrfm.tasks.registry.list_tasks`), which the caller passes in as ``tasks`` (reporting sits
below tasks and never imports them; the renderers live in :mod:`cxrfm.reporting.sections`). A task
the registry does not know is shown as a table of its values, a skipped task with its reason. Figures are
re-drawn from the numbers (:mod:`cxrfm.reporting.plots`); PNG files a task saved are embedded only
from inside the results folder (:mod:`cxrfm.reporting.assets`); a missing or refused file is a note.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..atomic import atomic_path
from ..errors import RunDirError
from .assets import Assets, leftover_figures
from .markup import CSS, all_numbers, esc, fmt, num, pct, table
from .plots import SHORTCUT_AUROC

REPORT_FILE = "report.html"


# ---------------------------------------------------------------- shortcut flags
def shortcut_flags(results: Mapping, threshold: float = SHORTCUT_AUROC) -> list[tuple[str, str, float]]:
    """(task, finding, source-only AUROC) for every finding a source-only predictor scores >= ``threshold``."""
    out = []
    for task in ("zeroshot", "probe"):
        r = (results.get("tasks") or {}).get(task)
        if not isinstance(r, Mapping):
            continue
        for f, v in (r.get("findings") or {}).items():
            s = num(v.get("source_only_auroc")) if isinstance(v, Mapping) else None
            if s is not None and s >= threshold:
                out.append((task, f, s))
    return out


# ---------------------------------------------------------------- sections
def _header(results: Mapping) -> str:
    model, data = results.get("model") or {}, results.get("data") or {}
    rows = [
        ("model run", model.get("run_dir") or f"(in-memory {model.get('type', 'model')})"),
        ("model type / input", f"{model.get('type', '?')}, {model.get('image_size', '?')} px"),
        ("data", data.get("path") or "(given table)"),
        ("data content hash", data.get("content_hash", "?")),
        ("rows", data.get("n_rows", "?")),
        ("sources", ", ".join(f"{k} ({v})" for k, v in (data.get("sources") or {}).items()) or "?"),
        ("cxrfm version", results.get("cxrfm_version", "?")),
        ("created", results.get("created", "?")),
        ("seed / bootstrap", f"{results.get('seed', '?')} / {results.get('n_boot', '?')} resamples (patients)"),
        ("tasks", ", ".join(results.get("tasks_requested") or list(results.get("tasks") or {}))),
    ]
    body = table(None, [[esc(k), esc(v)] for k, v in rows], cls="meta")
    cur = results.get("curation") or model.get("curation")
    if isinstance(cur, Mapping):
        keys = [k for k in ("data_fraction", "compute_fraction", "curator", "kept", "n_kept", "n_seen") if k in cur]
        keys = keys or list(cur)[:8]
        body += "<h3>Curation</h3>" + table(
            [esc(k) for k in keys], [[("#" + fmt(cur[k])) if num(cur[k]) is not None else esc(cur[k]) for k in keys]])
    cfg = results.get("config") or model.get("config")
    if cfg:
        body += (f"<details><summary>Configuration</summary><pre>{esc(json.dumps(cfg, indent=1, default=str))}</pre>"
                 f"</details>")
    return body


def _headline(results: Mapping, flags: list[tuple[str, str, float]]) -> str:
    tasks = results.get("tasks") or {}
    cards = []
    zs = tasks.get("zeroshot")
    if isinstance(zs, Mapping) and "skipped" not in zs:
        cards.append(("primary", fmt(zs.get("mean_within_source_auroc")), "zero-shot mean within-source AUROC"))
        cards.append(("", fmt(zs.get("mean_auroc")), "zero-shot mean pooled AUROC"))
        cards.append(("", fmt(zs.get("mean_source_only_auroc")), "source-only mean AUROC (the shortcut)"))
    pr = tasks.get("probe")
    if isinstance(pr, Mapping) and "skipped" not in pr:
        within = pr.get("mean_within_source_auroc") or {}
        pooled = pr.get("mean_auroc") or {}
        full = max(pooled, key=lambda k: float(k)) if pooled else None
        if full is not None:
            cards.append(("primary", fmt(within.get(full)), f"probe mean within-source AUROC ({pct(full)} of labels)"))
            cards.append(("", fmt(pooled.get(full)), f"probe mean pooled AUROC ({pct(full)} of labels)"))
    rp = tasks.get("report")
    if isinstance(rp, Mapping) and "skipped" not in rp:
        cards.append(("", fmt((rp.get("label_f1") or {}).get("micro_14")),
                      f"report label F1 (micro, 14; {esc(rp.get('headline_method', '?'))})"))
    out = ["<p>Sources are a shortcut in this kind of data, so each finding is scored <b>within each source</b> "
           "first (mean of per-source AUROCs); <b>pooled</b> figures come second and must be read against the "
           "source-only AUROC.</p>"]
    if cards:
        out.append('<div class="cards">' + "".join(
            f'<div class="card {c}"><div class="v">{v}</div><div class="k">{k}</div></div>' for c, v, k in cards)
            + "</div>")
    if flags:
        items = "".join(f"<li><b>{esc(f)}</b> ({esc(t)}): source-only AUROC {fmt(s)}</li>" for t, f, s in flags)
        out.append(f'<div class="danger"><b>Shortcut warning:</b> for these findings the source alone reaches '
                   f"AUROC &ge; {SHORTCUT_AUROC:g}; a pooled AUROC near it says nothing about the image. Read the "
                   f"within-source column.<ul>{items}</ul></div>")
    return "".join(out)


def _tasks_in_order(results_tasks: Mapping, registry: Iterable[Any]) -> list[tuple[str, Any]]:
    """(name, Task or None) for each task in the results: registered tasks in registry order, then the rest."""
    known = [t for t in registry if t.name in results_tasks]
    names = {t.name for t in known}
    return [(t.name, t) for t in known] + [(n, None) for n in results_tasks if n not in names]


def _section(name: str, task: Any, r: Any, assets: Assets, timing: Mapping) -> str:
    title = (task.title if task is not None and task.title else name)
    t = num(timing.get(name)) if isinstance(timing, Mapping) else None
    took = f" <small>({t:.1f} s)</small>" if t is not None else ""
    if not isinstance(r, Mapping):
        return f'<section id="task-{esc(name)}"><h2>{esc(title)}</h2><pre>{esc(r)}</pre></section>'
    if "skipped" in r:
        return (f'<section id="task-{esc(name)}"><h2>{esc(title)}<span class="badge skip">skipped</span></h2>'
                f'<p class="skipped">Skipped: {esc(r["skipped"])}</p></section>')
    try:
        body = task.html_section(r, assets) if task is not None else ""
    except Exception as e:  # noqa: BLE001 - an unexpected result shape must not lose the whole report
        body = f'<p class="note">could not lay out this result ({esc(type(e).__name__)}: {esc(e)}); values below.</p>'
    body += leftover_figures(r, assets) + all_numbers(r)
    return f'<section id="task-{esc(name)}"><h2>{esc(title)}{took}</h2>{body}</section>'


def _warnings_box(results: Mapping) -> str:
    """The evaluation's warnings (an unfinished run, patients it trained on) above every section."""
    warnings = results.get("warnings")
    if not isinstance(warnings, list) or not warnings:
        return ""
    return ('<div class="danger"><b>Read these numbers with care:</b><ul>'
            + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")


def _guarded(fn, *args, empty: Any = None):
    """``fn(*args)``; a results.json edited by hand (a string where a dict belongs) gives a note, not a crash."""
    try:
        return fn(*args)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        if empty is not None:
            return empty
        return f'<p class="note">could not lay this out ({esc(type(e).__name__)}: {esc(e)}); see results.json.</p>'


# ---------------------------------------------------------------- public API
def render_html(results: Mapping, base_dir: str | Path | None = None, tasks: Iterable[Any] = (),
                warn=None) -> str:
    """The report page as a string.

    ``tasks`` is the task registry (``cxrfm.tasks.registry.list_tasks()``: objects with ``name``,
    ``title`` and ``html_section(result, assets)``); results of tasks not in it get a table of values.
    PNG paths in ``results`` are embedded only from inside ``base_dir`` (the results folder; without
    it no file is read); ``warn(msg)`` hears each refusal (default: stderr)."""
    assets = Assets(base_dir, warn=warn)
    found = results.get("tasks")
    found = found if isinstance(found, Mapping) else {}
    flags = _guarded(shortcut_flags, results, empty=[])
    order = _tasks_in_order(found, list(tasks))
    sections = [_section(n, t, found[n], assets, results.get("timing_s") or {}) for n, t in order]
    toc = " &middot; ".join(f'<a href="#task-{esc(n)}">{esc(t.title if t is not None and t.title else n)}</a>'
                            for n, t in order)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cxrfm evaluation report</title><style>{CSS}</style></head><body><main>"
        f"<h1>cxrfm evaluation report</h1><p class='note'>{toc}</p>"
        f"<section id='summary'><h2>Summary: within-source first</h2>{_guarded(_headline, results, flags)}</section>"
        f"<section id='run'><h2>Run and data</h2>{_guarded(_header, results)}</section>"
        f"{_warnings_box(results)}{assets.problems_box()}{''.join(sections)}"
        "<p class='note'>Generated by cxrfm from results.json; self-contained (no network access needed).</p>"
        "</main></body></html>\n")


def _write(page: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


def write_report(results: Mapping, out_dir: str | Path, base_dir: str | Path | None = None,
                 tasks: Iterable[Any] = (), warn=None) -> Path:
    """Write ``out_dir/report.html``; figures are embedded from inside ``base_dir`` (default ``out_dir``)."""
    out_dir = Path(out_dir)
    page = render_html(results, base_dir if base_dir is not None else out_dir, tasks=tasks, warn=warn)
    return _write(page, out_dir / REPORT_FILE)


def render_results_file(results_json: str | Path, out_html: str | Path | None = None, tasks: Iterable[Any] = (),
                        warn=None) -> Path:
    """Render ``results.json`` to ``out_html`` (default: ``report.html`` beside it); returns the path.

    Figures are embedded from the folder that holds ``results_json``, wherever ``out_html`` goes."""
    results_json = Path(results_json)
    try:
        results = json.loads(results_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(
            f"{results_json}: no such file; give the results.json that `cxrfm eval --out` wrote") from None
    except IsADirectoryError:
        raise RunDirError(f"{results_json}: is a folder; give the results.json inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RunDirError(f"{results_json}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); re-run `cxrfm eval` "
                          f"to rewrite it") from None
    if not isinstance(results, Mapping):
        raise RunDirError(f"{results_json}: holds a JSON {type(results).__name__}, not the object `cxrfm eval` "
                          f"writes; re-run `cxrfm eval` to rewrite it")
    out_html = Path(out_html) if out_html is not None else results_json.with_name(REPORT_FILE)
    return _write(render_html(results, results_json.parent, tasks=tasks, warn=warn), out_html)
