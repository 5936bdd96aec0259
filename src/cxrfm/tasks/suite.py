"""The evaluation suite: run the chosen tasks on one model and one manifest, write results.json.

A task is a module with ``run(context: EvalContext) -> dict``, registered by name in :data:`TASKS`;
it raises :class:`TaskSkipped` with the reason when the data cannot support it (no report text, no
finding with enough labels), and the reason is recorded under ``tasks.<name>.skipped``. Images are
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
"""
from __future__ import annotations

import datetime as _dt
import importlib
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

# name -> module holding `run(context) -> dict`. New tasks (probe, segmentation, report, ood,
# shortcut) add one line here, or call register_task from their own package.
TASKS: dict[str, str] = {
    "zeroshot": "cxrfm.tasks.zero_shot",
    "retrieval": "cxrfm.tasks.retrieval",
    "probe": "cxrfm.tasks.probe",
    "segmentation": "cxrfm.tasks.segmentation",
    "report": "cxrfm.tasks.report",
    "ood": "cxrfm.tasks.ood",
    "shortcut": "cxrfm.tasks.shortcut",
}
DEFAULT_TASKS: tuple[str, ...] = ("zeroshot", "retrieval")
RESULTS_FILE = "results.json"
# CLIP's learned temperature is clamped at 100 (Radford et al. 2021); used when the model has none.
DEFAULT_LOGIT_SCALE = 100.0


class TaskSkipped(Exception):
    """Raised by a task's ``run`` when the data cannot support it; the message is the reason."""


def register_task(name: str, module: str) -> None:
    """Make ``module`` (with ``run(context) -> dict``) available as task ``name``."""
    TASKS[name] = module


def available_tasks() -> list[str]:
    return list(TASKS)


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


def load_eval_model(run_dir: str | Path) -> DualEncoderLike:
    """``cxrfm.load_model(run_dir)`` with an error that names the fix when the folder holds no model."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder; give the folder `cxrfm pretrain --out` wrote")
    if not (run_dir / "config.json").exists() or not any(run_dir.glob("*.safetensors")):
        raise RunDirError(
            f"{run_dir}: no model in this folder (needs config.json + model.safetensors); train one with "
            f"`cxrfm pretrain --out {run_dir}` or point --model at a finished run")
    try:
        from ..models.dual import load_model
    except ImportError as e:  # pragma: no cover - only while the model package is missing
        raise RunDirError(f"cannot load {run_dir}: cxrfm.models is not available ({e})") from e
    return load_model(run_dir)


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


def _parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if names == ["all"]:
        names = list(TASKS)
    if not names:
        raise ConfigError(f"no task given; choose from {', '.join(TASKS)}")
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def evaluate(
    model_or_run: DualEncoderLike | str | Path,
    data: Manifest | str | Path,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
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
) -> dict:
    """Run ``tasks`` for one model on one manifest; write ``out/results.json`` when ``out`` is given.

    ``model_or_run`` is a model object (the dual-encoder contract) or a run folder.
    ``prompts`` is a prompts JSON path, an already-loaded mapping, or None for the bundled prompts.
    ``findings`` restricts zero-shot to these canonical findings (a missing prompt is then an error).
    ``images`` replaces the decoded-image cache with another row-aligned source.
    ``train_data`` is the part that tasks training a head learn from (default: a patient split of ``data``).
    With ``out`` and ``html``, ``out/report.html`` is written beside results.json.
    """
    from .zero_shot import PROMPTS_FILE, load_prompts

    task_names = _parse_tasks(tasks)
    run_dir: Path | None = None
    if isinstance(model_or_run, (str, Path)):
        run_dir = Path(model_or_run)
        model = load_eval_model(run_dir)
    else:
        model = model_or_run
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
        out_dir=Path(out) if out is not None else None, run_dir=run_dir)
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
        "tasks_requested": task_names,
        "tasks": {},
        "timing_s": {},
    }
    for name in task_names:
        module = importlib.import_module(TASKS[name])
        t0 = time.perf_counter()
        try:
            results["tasks"][name] = module.run(context)
        except TaskSkipped as e:
            results["tasks"][name] = {"skipped": str(e)}
        results["timing_s"][name] = round(time.perf_counter() - t0, 3)
    results = _jsonable(results)
    if out is not None:
        write_json_atomic(results, Path(out) / RESULTS_FILE)
        if html:
            from ..reporting.html import write_report

            write_report(results, Path(out))
    return results


def _model_config(model) -> dict | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def _fmt(x: float | None, width: int = 6) -> str:
    return f"{x:.3f}".rjust(width) if isinstance(x, (int, float)) else "-".rjust(width)


def format_results_table(results: Mapping) -> str:
    """The headline tables: zero-shot AUROC (within-source first, pooled second) and retrieval."""
    lines: list[str] = []
    tasks = results.get("tasks", {})
    zs = tasks.get("zeroshot")
    if zs is not None:
        lines.append("Zero-shot classification, AUROC. Sources are a shortcut, so report within them:")
        lines.append("  within-source = mean of per-source AUROCs (sources with >= 10 pos and >= 10 neg);")
        lines.append("  source-only = what knowing only the source achieves (in-sample).")
        if "skipped" in zs:
            lines.append(f"  skipped: {zs['skipped']}")
        else:
            w = max([len("finding")] + [len(f) for f in zs["findings"]])
            lines.append(f"  {'finding'.ljust(w)}  within  pooled  [95% CI]         src-only  n_pos  n_neg  #src")
            for f, r in zs["findings"].items():
                lo, hi = r["ci"]
                lines.append(f"  {f.ljust(w)}  {_fmt(r['within_source_auroc'])}  {_fmt(r['auroc'])}  "
                             f"[{_fmt(lo, 5)}, {_fmt(hi, 5)}]  {_fmt(r['source_only_auroc'], 8)}  "
                             f"{r['n_pos']:5d}  {r['n_neg']:5d}  {len(r['per_source'])}")
            lines.append(f"  {'mean'.ljust(w)}  {_fmt(zs['mean_within_source_auroc'])}  {_fmt(zs['mean_auroc'])}  "
                         f"{'':16}  {_fmt(zs.get('mean_source_only_auroc'), 8)}")
            if zs.get("skipped_findings"):
                lines.append("  not scored (reasons in results.json skipped_findings): "
                             + ", ".join(zs["skipped_findings"]))
    rt = tasks.get("retrieval")
    if rt is not None:
        lines.append("Image-report retrieval, Recall@k (chance in brackets):")
        if "skipped" in rt:
            lines.append(f"  skipped: {rt['skipped']}")
        else:
            for key, label in (("image_to_text", "image -> text"), ("text_to_image", "text -> image")):
                r = rt[key]
                cells = "  ".join(f"R@{k} {_fmt(r[f'recall@{k}'], 5)} ({_fmt(r[f'chance@{k}'], 5)})" for k in (1, 5, 10))
                lines.append(f"  {label}  {cells}  n={r['n']} over {r['n_targets']}")
    lines.extend(_other_task_lines(tasks))
    return "\n".join(lines)


def _other_task_lines(tasks: Mapping) -> list[str]:
    """One or two headline lines per further task (probe, segmentation, report, ood, shortcut)."""
    lines: list[str] = []
    for name, r in tasks.items():
        if name in ("zeroshot", "retrieval") or not isinstance(r, Mapping):
            continue
        if "skipped" in r:
            lines.append(f"{name}: skipped: {r['skipped']}")
        elif name == "probe":
            base = r.get("baseline") or {}
            for key, label in (("mean_within_source_auroc", "within-source"), ("mean_auroc", "pooled")):
                model_cells = "  ".join(f"{k}: {_fmt(v, 5)}" for k, v in (r.get(key) or {}).items())
                base_cells = "  ".join(f"{k}: {_fmt(v, 5)}" for k, v in (base.get(key) or {}).items())
                lines.append(f"probe ({label} mean AUROC by label fraction): frozen {model_cells}"
                             + (f"  | from scratch {base_cells}" if base_cells else ""))
        elif name == "segmentation":
            d, b = r.get("dice") or {}, (r.get("baseline") or {}).get("dice") or {}
            ci, bci = d.get("ci") or [None, None], b.get("ci") or [None, None]
            lines.append(f"segmentation: Dice {_fmt(d.get('mean'), 5)} [{_fmt(ci[0], 5)}, {_fmt(ci[1], 5)}]  "
                         f"random-encoder baseline {_fmt(b.get('mean'), 5)} [{_fmt(bci[0], 5)}, {_fmt(bci[1], 5)}]  "
                         f"n_eval={r.get('n_eval')}")
        elif name == "report":
            f1 = r.get("label_f1") or {}
            lines.append(f"report ({r.get('headline_method')}): label F1 micro-14 {_fmt(f1.get('micro_14'), 5)}  "
                         f"macro-14 {_fmt(f1.get('macro_14'), 5)}  micro-5 {_fmt(f1.get('micro_5'), 5)}  "
                         f"BLEU-4 {_fmt(r.get('bleu4'), 5)}  ROUGE-L {_fmt(r.get('rouge_l'), 5)}  "
                         f"reference: {(r.get('reference') or {}).get('kind')}")
        elif name == "ood":
            lines.append(f"ood: AUROC {_fmt(r.get('auroc'), 5)}  FPR95 {_fmt(r.get('fpr95'), 5)}  "
                         f"n_in={r.get('n_in')} n_out={r.get('n_out')}")
        elif name == "shortcut":
            attrs = "  ".join(f"{k} {_fmt(v.get('auroc'), 5)}" for k, v in (r.get("attributes") or {}).items()
                              if isinstance(v, Mapping))
            lines.append(f"shortcut (attribute AUROC from frozen embeddings): {attrs}")
            for w in (r.get("warnings") or [])[:3]:
                lines.append(f"  warning: {w}")
    return lines
