"""One contract test over every registered evaluation task (``cxrfm.tasks.registry.list_tasks()``).

Each task runs through the suite's ``run_task`` on a small real subset (30 rows per source, masks
and report text included) with a tiny model pretrained here (1 epoch, 32 px, ~10 s on 2 cores), and
must return a result that passes its declared schema, is valid JSON, prints headline lines and
renders its report section; or be skipped with a reason. A task is tested the moment it is
registered. Built-in tasks must actually run on this data, so their views are exercised.
"""
from __future__ import annotations

import json

import pytest

from cxrfm.reporting.assets import Assets
from cxrfm.reporting.html import render_html
from cxrfm.tasks import registry
from cxrfm.tasks.registry import BUILTIN_TASK_MODULES, Task, TaskResultError, list_tasks, register_task
from cxrfm.models.dual import load_model
from cxrfm.tasks.suite import (
    EvalContext, _jsonable, _parse_tasks, format_results_table, run_task,
)
from cxrfm.tasks.zero_shot import load_prompts
from tests.helpers import StandInModel, make_tiny_run, subset_manifest, with_anatomy_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def context(tmp_path_factory, cxr_manifest_path, shared_data, cache_dir, one_torch_thread):
    from cxrfm.tasks import anatomy

    root = tmp_path_factory.mktemp("contract")
    run = make_tiny_run(root, cxr_manifest_path, cache_dir)
    manifest = with_anatomy_rows(subset_manifest(cxr_manifest_path, per_source=30),
                                 shared_data / "anatomy" / "manifest.csv", n=12)
    with pytest.MonkeyPatch.context() as mp:  # the anatomy task's real defaults train ~20 U-Nets at 192 px
        mp.setattr(anatomy, "DEFAULT_SETTINGS", anatomy.AnatomySettings.tiny())
        yield EvalContext(model=load_model(run), manifest=manifest, n_boot=20, prompts=load_prompts(None),
                          cache_dir=cache_dir, out_dir=root / "out", run_dir=run)


def _builtin(task: Task) -> bool:
    return task.run.__module__ in BUILTIN_TASK_MODULES


@pytest.mark.parametrize("task", list_tasks(), ids=lambda t: t.name)
def test_task_contract(task, context):
    result, seconds = run_task(task, context)  # run_task checks the declared result keys
    assert seconds >= 0
    json.dumps(_jsonable(result), allow_nan=False)  # results.json can hold it
    if "skipped" in result:
        assert isinstance(result["skipped"], str) and result["skipped"].strip()
        # a built-in task for other image towers (reconstruction: latent runs) skips on this pixel run; its own
        # tests run it on one (tests/test_latents_report.py)
        assert not _builtin(task) or not task.applies_to(context.model), \
            f"built-in task {task.name} skipped on the contract data: {result['skipped']}"
    else:
        assert set(task.result_keys) <= set(result)
    lines = task.console_lines(result)
    assert lines and all(isinstance(x, str) and x for x in lines)
    section = task.html_section(result, Assets(context.out_dir)) if "skipped" not in result else ""
    assert isinstance(section, str) and ("skipped" in result or section.strip())
    page = render_html({"tasks": {task.name: result}}, context.out_dir, tasks=list_tasks(), warn=lambda m: None)
    assert f'id="task-{task.name}"' in page and "could not lay out" not in page
    assert task.title in page


def test_every_builtin_module_registers_a_task():
    modules = {t.run.__module__ for t in list_tasks()}
    assert set(BUILTIN_TASK_MODULES) <= modules
    assert [t.name for t in list_tasks() if t.default] == ["zeroshot", "retrieval"]


# ---------------------------------------------------------------- the registry is the one list
@pytest.fixture()
def scratch_registry(monkeypatch):
    """Tasks registered in a test disappear after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    list_tasks()


def test_a_registered_task_reaches_suite_console_and_report(scratch_registry, cxr_manifest_path, tmp_path):
    from cxrfm.tasks.suite import evaluate

    register_task(Task(name="rowcount", run=lambda ctx: {"n": len(ctx.manifest)}, title="Row count",
                       result_keys=("n",), console=lambda r: [f"rows counted: {r['n']}"],
                       html=lambda r, assets: f"<p>counted {r['n']} rows</p>", order=1))
    m = subset_manifest(cxr_manifest_path, per_source=3)
    res = evaluate(StandInModel(), m, tasks="rowcount", out=tmp_path, progress=False)
    assert res["tasks"]["rowcount"] == {"n": len(m)}
    assert "rows counted: 12" in format_results_table(res)
    assert "<p>counted 12 rows</p>" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert _parse_tasks("all")[0] == "rowcount"  # order=1 puts it first


def test_a_result_without_a_declared_key_names_the_task(scratch_registry, cxr_manifest_path):
    from cxrfm.tasks.suite import evaluate

    register_task(Task(name="forgetful", run=lambda ctx: {"a": 1}, result_keys=("a", "b")))
    with pytest.raises(TaskResultError, match="task 'forgetful' returned a result without b"):
        evaluate(StandInModel(), subset_manifest(cxr_manifest_path, per_source=3), tasks="forgetful",
                 progress=False)


def test_an_unmet_data_need_skips_before_running(scratch_registry, cxr_manifest_path):
    from cxrfm.tasks.suite import evaluate

    def boom(ctx):
        raise AssertionError("must not run")

    register_task(Task(name="needs_masks", run=boom, needs=("masks",)))
    m = subset_manifest(cxr_manifest_path, per_source=3)
    m = m.subset([i for i, p in enumerate(m.mask_paths()) if p is None])
    res = evaluate(StandInModel(), m, tasks="needs_masks", progress=False)
    assert "no row has a lung mask" in res["tasks"]["needs_masks"]["skipped"]


def test_unknown_need_and_unknown_task_are_config_errors():
    from cxrfm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown data need"):
        Task(name="x", run=lambda c: {}, needs=("pixels",))
    with pytest.raises(ConfigError, match="unknown task 'nope'; choose from .*zeroshot"):
        registry.get_task("nope")
