"""The evaluation suite: run the chosen tasks on one model and one manifest, write results.json.

A task is a :class:`~cxrfm.tasks.registry.Task` in the one registry (:mod:`cxrfm.tasks.registry`)
that this suite, the console table and the HTML report all read. Its ``run(context) -> dict`` raises
:class:`TaskSkipped` with the reason when the data cannot support it (no report text, no finding with
enough labels), and the reason is recorded under ``tasks.<name>.skipped``; a task whose declared data
need (labels, report text, masks) no row meets is skipped before it runs. A result that lacks a key
its task declares stops the suite with :class:`~cxrfm.tasks.registry.TaskResultError` naming the task. Images are
embedded once, lazily, and shared by all tasks. Each task draws its randomness from its own
generator derived from (seed, task name), so adding or reordering tasks never changes another
task's numbers.

The headline follows the data's warning (Zech et al., PLoS Med 2018; DeGrave et al., Nat. Mach.
Intell. 2021): sources are a shortcut, so AUROC within each source comes first and pooled second.

``results.json`` contract (names are stable; reporting and serving read them)::

    cxrfm_version, created, seed, n_boot, tasks_requested,
    model.run_dir, data.path, data.content_hash, data.n_rows, data.sources
    tasks.zeroshot.findings.<Finding>.{auroc, ci, n_pos, n_neg, prevalence, per_source,
        within_source_auroc, source_only_auroc}
    tasks.zeroshot.{mean_auroc, mean_within_source_auroc, mean_source_only_auroc, skipped_findings}
    tasks.retrieval.{image_to_text, text_to_image}.{recall@1, recall@5, recall@10, chance@k, n}
    tasks.<task>.skipped   (reason string, when the task could not run)
    warnings               (list of strings: an unfinished run, patients shared with its training data)
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from .. import __version__
from ..data.findings import FINDINGS
from ..data.schema import Manifest
from ..errors import ConfigError, ManifestError, RunDirError
from .embed import DualEncoderLike, ImageBatches, embed_images, open_image_cache
from .run_checks import run_warnings
# TaskSkipped is re-exported: task modules raise it as `from .suite import TaskSkipped`
from .registry import TaskSkipped, default_tasks, get_task, list_tasks, task_names  # noqa: F401

RESULTS_FILE = "results.json"
# CLIP's learned temperature is clamped at 100 (Radford et al. 2021); used when the model has none.
DEFAULT_LOGIT_SCALE = 100.0


@dataclass
class EvalContext:
    """What a task gets: the model, the data, shared image embeddings and its own random generator."""

    model: DualEncoderLike
    manifest: Manifest
    seed: int = 0
    n_boot: int = 1000
    prompts: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    prompts_source: str = "builtin"
    findings: Sequence[str] | None = None  # explicitly requested findings (None = all canonical)
    cache_dir: Path | None = None
    progress: bool = False
    min_pos: int = 10
    min_neg: int = 10
    logit_scale: float = DEFAULT_LOGIT_SCALE
    batch_size: int = 64
    images: ImageBatches | None = None  # row-aligned image source; None = the decoded-image cache
    # tasks that train a head (probe, segmentation, report) use this part when given (--train-data);
    # otherwise they split `manifest` by patient with `seed` and say so in their result
    train_manifest: Manifest | None = None
    out_dir: Path | None = None  # where tasks save plots and overlays (None: nothing saved)
    run_dir: Path | None = None  # the model's run folder, when evaluating one: fitted heads are saved there
    concepts: Path | None = None  # a concepts folder (`cxrfm concepts train`); None: the task trains one
    _emb: np.ndarray | None = field(default=None, repr=False)
    _have: np.ndarray | None = field(default=None, repr=False)

    def rng(self, task: str) -> np.random.Generator:
        """A generator for ``task`` that depends only on (seed, task name)."""
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), zlib.crc32(task.encode())]))

    def image_embeddings(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """L2-normalised image embeddings (len(rows), D) of manifest rows; each row is embedded once."""
        n = len(self.manifest)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if self._have is None:
            self._have = np.zeros(n, dtype=bool)
        todo = rows[~self._have[rows]]
        if len(todo):
            if self.images is None:
                self.images = open_image_cache(self.manifest, int(self.model.image_size), cache_dir=self.cache_dir,
                                               progress=self.progress)
            emb = embed_images(self.model, self.images, np.unique(todo), batch_size=self.batch_size,
                               progress=self.progress)
            if self._emb is None:
                self._emb = np.zeros((n, emb.shape[1]), dtype=np.float32)
            self._emb[np.unique(todo)] = emb
            self._have[np.unique(todo)] = True
        if self._emb is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self._emb[rows]


def _model_logit_scale(model: Any) -> float:
    """The model's temperature multiplier if it exposes one (``logit_scale`` holds the log, as in CLIP)."""
    value = getattr(model, "logit_scale", None)
    if value is None:
        return DEFAULT_LOGIT_SCALE
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return float(value.detach().exp().clamp(max=DEFAULT_LOGIT_SCALE))
        return float(value)
    except (TypeError, ValueError):
        return DEFAULT_LOGIT_SCALE


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write JSON (NaN -> null) to a temp file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def _parse_tasks(tasks: str | Sequence[str] | None) -> list[str]:
    known = task_names()
    if tasks is None:
        return default_tasks()
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if names == ["all"]:
        names = known
    if not names:
        raise ConfigError(f"no task given; choose from {', '.join(known)}")
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def _asks_all(tasks: str | Sequence[str] | None) -> bool:
    names = tasks.split(",") if isinstance(tasks, str) else (tasks or [])
    return [t.strip() for t in names if t.strip()] == ["all"]


def run_task(task, context: EvalContext) -> tuple[dict, float]:
    """(result, seconds) of one task: skipped with the reason when its data need is unmet or it raises
    TaskSkipped; a result lacking a declared key raises TaskResultError (a bug in that task)."""
    t0 = time.perf_counter()
    reason = task.missing_data(context.manifest)
    if reason is not None:
        result: dict = {"skipped": reason}
    else:
        try:
            result = task.run(context)
        except TaskSkipped as e:
            result = {"skipped": str(e)}
        task.check_result(result)
    return result, round(time.perf_counter() - t0, 3)


def evaluate(
    model_or_run: DualEncoderLike | str | Path,
    data: Manifest | str | Path,
    tasks: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    prompts: str | Path | Mapping | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    findings: Sequence[str] | None = None,
    images: ImageBatches | None = None,
    train_data: Manifest | str | Path | None = None,
    html: bool = True,
    concepts: str | Path | None = None,
) -> dict:
    """Run ``tasks`` (default: the registered default tasks) for one model on one manifest; write
    ``out/results.json`` when ``out`` is given.

    ``model_or_run`` is a model object (the dual-encoder contract) or a run folder.
    ``prompts`` is a prompts JSON path, an already-loaded mapping, or None for the bundled prompts.
    ``findings`` restricts zero-shot to these canonical findings (a missing prompt is then an error).
    ``images`` replaces the decoded-image cache with another row-aligned source.
    ``train_data`` is the part that tasks training a head learn from (default: a patient split of ``data``).
    ``concepts`` is a concepts folder for the ``concepts`` task (default: the task trains one).
    With ``out`` and ``html``, ``out/report.html`` is written beside results.json.
    """
    from .zero_shot import PROMPTS_FILE, load_prompts

    names = _parse_tasks(tasks)
    run_dir: Path | None = None
    if isinstance(model_or_run, (str, Path)):
        run_dir = Path(model_or_run)
        from ..models.dual import load_model  # looked up at call time (tests swap in stand-ins)

        model = load_model(run_dir)
    else:
        model = model_or_run
    if _asks_all(tasks):  # tasks for other image towers (e.g. reconstruction on a pixel run) are left out
        names = [n for n in names if get_task(n).applies_to(model)]
    manifest = Manifest.load(data) if isinstance(data, (str, Path)) else data
    if len(manifest) == 0:
        where = manifest.path or "the manifest"
        raise ManifestError(f"{where}: has no rows; evaluate on a manifest with images (see `cxrfm ingest`)")
    if findings is not None:
        bad = [f for f in findings if f not in FINDINGS]
        if bad:
            raise ConfigError(f"unknown finding(s) {', '.join(bad)}; use canonical names: {', '.join(FINDINGS)}")
    if isinstance(prompts, Mapping):
        prompt_map, prompts_source = dict(prompts), "given mapping"
    else:
        prompt_map = load_prompts(prompts)
        prompts_source = str(prompts) if prompts is not None else f"builtin ({PROMPTS_FILE.name})"

    context = EvalContext(
        model=model, manifest=manifest, seed=seed, n_boot=n_boot, prompts=prompt_map, prompts_source=prompts_source,
        findings=list(findings) if findings is not None else None,
        cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=progress,
        logit_scale=_model_logit_scale(model), images=images,
        train_manifest=Manifest.load(train_data) if isinstance(train_data, (str, Path)) else train_data,
        out_dir=Path(out) if out is not None else None, run_dir=run_dir,
        concepts=Path(concepts) if concepts is not None else None)
    src_counts = manifest.table["source"].value_counts()
    results: dict[str, Any] = {
        "cxrfm_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"run_dir": str(run_dir.resolve()) if run_dir else None, "type": type(model).__name__,
                  "image_size": int(model.image_size)},
        "data": {"path": str(manifest.path.resolve()) if manifest.path else None,
                 "content_hash": manifest.content_hash(), "n_rows": len(manifest),
                 "sources": {str(k): int(v) for k, v in src_counts.items()}},
        "train_data": ({"path": str(context.train_manifest.path) if context.train_manifest.path else None,
                        "content_hash": context.train_manifest.content_hash(), "n_rows": len(context.train_manifest)}
                       if context.train_manifest is not None else None),
        "config": _model_config(model),
        "seed": seed,
        "n_boot": n_boot,
        "tasks_requested": names,
        # what makes these numbers mean less than they seem (an unfinished run, patients it trained on)
        "warnings": run_warnings(run_dir, manifest) if run_dir is not None else [],
        "tasks": {},
        "timing_s": {},
    }
    for name in names:
        results["tasks"][name], results["timing_s"][name] = run_task(get_task(name), context)
    results = _jsonable(results)
    if out is not None:
        write_json_atomic(results, Path(out) / RESULTS_FILE)
        if html:
            from ..reporting.html import write_report

            write_report(results, Path(out), tasks=list_tasks())
    return results


def _model_config(model) -> dict | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def format_results_table(results: Mapping) -> str:
    """The headline lines of every task in the results, in registry order (zero-shot AUROC within-source
    first, then pooled; retrieval; ...), then any warnings."""
    tasks = results.get("tasks") or {}
    lines: list[str] = []
    seen = set()
    for task in list_tasks():
        if task.name in tasks:
            lines += task.console_lines(tasks[task.name])
            seen.add(task.name)
    for name, r in tasks.items():  # tasks this install does not know (an older or newer results.json)
        if name not in seen:
            lines.append(f"{name}: skipped: {r['skipped']}" if isinstance(r, Mapping) and "skipped" in r
                         else f"{name}: (values in results.json)")
    for w in results.get("warnings") or []:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)
