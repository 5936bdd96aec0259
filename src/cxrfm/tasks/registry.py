"""The evaluation tasks as registered objects: one registry that the suite, the console table and the
HTML report all read.

A task is one module that ends with ``register_task(Task(...))``. The :class:`Task` says what the
task is called, what data it needs, how to run it, which keys its result must have, and how its
result is shown (console lines and an HTML section). ``console`` and ``html`` may be callables or
``"module:function"`` strings, resolved on first use, so importing a task never imports matplotlib
and rendering a report never runs a task.

``list_tasks()`` imports the built-in task modules (:data:`BUILTIN_TASK_MODULES`) once, so every
caller sees the same set; a task defined elsewhere is added by calling :func:`register_task`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError, CxrfmError

if TYPE_CHECKING:
    from .suite import EvalContext

# Modules whose import registers a task; order here is only import order (Task.order sets display order).
BUILTIN_TASK_MODULES: tuple[str, ...] = (
    "cxrfm.tasks.zero_shot", "cxrfm.tasks.retrieval", "cxrfm.tasks.probe", "cxrfm.tasks.segmentation",
    "cxrfm.tasks.report", "cxrfm.tasks.ood", "cxrfm.tasks.shortcut",
    "cxrfm.tasks.prevalence", "cxrfm.tasks.concepts", "cxrfm.tasks.anatomy", "cxrfm.tasks.reconstruction",
)
# What a task may declare in ``needs``; the suite skips a task, with this reason, when no row has it.
DATA_NEEDS: dict[str, str] = {
    "labels": "no row has a known label (1 or 0) for any canonical finding",
    "report_text": "no row has report text (the manifest's `report` column is empty or absent)",
    "masks": "no row has a lung mask (the manifest's `mask` column is empty or absent)",
}


class TaskSkipped(Exception):
    """Raised by a task's ``run`` when the data cannot support it; the message is the reason."""


class TaskResultError(CxrfmError):
    """A task returned a result that lacks keys its :class:`Task` declares (a bug in that task)."""


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    ``run(context) -> dict`` computes the result (or raises :class:`TaskSkipped`); ``needs`` names
    the data it cannot do without (keys of :data:`DATA_NEEDS`); ``result_keys`` are the keys every
    non-skipped result must have (checked by the suite; ``results.json`` readers rely on them);
    ``console(result) -> list[str]`` gives the headline lines printed after ``cxrfm eval``;
    ``html(result, assets) -> str`` gives the body of its report section (``assets`` embeds figure
    files, see :mod:`cxrfm.reporting.assets`). ``default`` tasks run when ``--tasks`` is not given;
    ``order`` places the task in the console table and the report. ``towers`` (empty: every model) names
    the image towers the task is for; ``--tasks all`` leaves it out for a model with another tower (the
    ``reconstruction`` task needs a ``latent`` run's autoencoder), and asked for by name it skips itself.
    """

    name: str
    run: Callable[["EvalContext"], dict]
    title: str = ""
    needs: tuple[str, ...] = ()
    result_keys: tuple[str, ...] = ()
    console: Callable[[Mapping], list[str]] | str | None = None
    html: Callable[[Mapping, Any], str] | str | None = None
    default: bool = False
    order: int = 100
    summary: str = ""
    towers: tuple[str, ...] = ()
    _resolved: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        bad = [n for n in self.needs if n not in DATA_NEEDS]
        if bad:
            raise ConfigError(f"task {self.name!r}: unknown data need(s) {', '.join(bad)}; "
                              f"use {', '.join(DATA_NEEDS)}")

    def _hook(self, which: str) -> Callable | None:
        if which not in self._resolved:
            ref = getattr(self, which)
            if isinstance(ref, str):
                module, _, attr = ref.partition(":")
                ref = getattr(importlib.import_module(module), attr)
            self._resolved[which] = ref
        return self._resolved[which]

    def console_lines(self, result: Mapping) -> list[str]:
        """Headline lines for ``result``; a skipped result is one line with its reason."""
        if not isinstance(result, Mapping):
            return [f"{self.name}: {result!r}"]
        if "skipped" in result:
            return [f"{self.name}: skipped: {result['skipped']}"]
        hook = self._hook("console")
        return list(hook(result)) if hook is not None else [f"{self.name}: done (values in results.json)"]

    def html_section(self, result: Mapping, assets: Any) -> str:
        """The HTML body of this task's report section ('' when the task declares none)."""
        hook = self._hook("html")
        return hook(result, assets) if hook is not None else ""

    def applies_to(self, model) -> bool:
        """Whether the task is for ``model``'s image tower (always, when it names no ``towers``)."""
        if not self.towers:
            return True
        return getattr(getattr(model, "config", None), "image_tower", None) in self.towers

    def missing_data(self, manifest) -> str | None:
        """The reason this task cannot run on ``manifest`` (the first unmet need), or None."""
        for need in self.needs:
            if need == "labels" and not np.isfinite(manifest.labels()).any():
                return DATA_NEEDS[need]
            if need == "report_text" and not any(r and r.strip() for r in manifest.reports()):
                return DATA_NEEDS[need]
            if need == "masks" and not any(m is not None for m in manifest.mask_paths()):
                return DATA_NEEDS[need]
        return None

    def check_result(self, result: Any) -> None:
        """Raise :class:`TaskResultError` naming the task and the keys its result lacks."""
        if not isinstance(result, Mapping):
            raise TaskResultError(f"task {self.name!r} returned {type(result).__name__}, not a dict; its run() "
                                  f"must return a dict with {', '.join(self.result_keys) or 'its results'}")
        if "skipped" in result:
            return
        missing = [k for k in self.result_keys if k not in result]
        if missing:
            raise TaskResultError(f"task {self.name!r} returned a result without {', '.join(missing)} (it has "
                                  f"{', '.join(map(str, result)) or 'no keys'}); fix its run() or its result_keys")


_REGISTRY: dict[str, Task] = {}
_builtins_loaded = False


def register_task(task: Task) -> Task:
    """Add ``task`` (replacing one of the same name, so a module can be reloaded); returns it."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task needs a Task, got {type(task).__name__}")
    _REGISTRY[task.name] = task
    return task


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # set first: a task module importing this one must not recurse
        for module in BUILTIN_TASK_MODULES:
            importlib.import_module(module)


def list_tasks() -> list[Task]:
    """Every registered task, in display order."""
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda t: (t.order, t.name))


def task_names() -> list[str]:
    return [t.name for t in list_tasks()]


def default_tasks() -> list[str]:
    return [t.name for t in list_tasks() if t.default]


def get_task(name: str) -> Task:
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; choose from {', '.join(task_names())}")
    return _REGISTRY[name]


def find_task(name: str) -> Task | None:
    """The task called ``name``, or None (a results.json may hold tasks this install does not have)."""
    _load_builtins()
    return _REGISTRY.get(name)
