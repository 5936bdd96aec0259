"""Curated runs' schedule from a compute budget (cxrfm.train.schedule, `cxrfm pretrain --compute-budget`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfm.data.schema import Manifest
from cxrfm.errors import ConfigError
from cxrfm.train.accounting import none_run_accounting
from cxrfm.train.loop import pretrain
from cxrfm.train.schedule import curated_epochs

SMALL = {"image_size": 32, "batch_size": 16, "log_every": 1000, "checkpoint_every": 1000}


def test_the_longest_schedule_within_the_budget_is_chosen():
    # the frontier's setting: 1038 pairs, tiny-cpu (10 epochs, batch 64), 540 distinct texts cached once
    s = curated_epochs(1038, 0.2, 10, 64, 540, text_cached=True, text_trainable=False, compute_budget=0.3)
    assert s["epochs"] == 14 and s["kept_pairs"] == 208
    assert s["fraction_of_full"] <= 0.3
    full = none_run_accounting(1038, 10, 64, 540, True, False, 0, 0).units()
    # one epoch more would cross the budget (the caching pass is a fixed cost)
    assert none_run_accounting(208, 15, 64, 540, True, False, 0, 0).units() > 0.3 * full
    assert "14 epochs" in s["why"] and "--compute-budget 0.3" in s["why"]
    # a larger kept share gets fewer epochs, a smaller budget fewer still
    assert curated_epochs(1038, 0.5, 10, 64, 540, True, False, 0.3)["epochs"] < 14
    assert curated_epochs(1038, 0.2, 10, 64, 540, True, False, 0.2)["epochs"] < 14


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_a_compute_budget_outside_the_unit_interval_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="compute-budget"):
        curated_epochs(100, 0.2, 10, 16, 10, True, False, bad)


@pytest.fixture(scope="module")
def manifest48(cxr_manifest_path):
    from cxrfm.data.pseudo_reports import training_texts

    full = Manifest.load(cxr_manifest_path)
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    return full.subset(np.sort(np.random.default_rng(1).choice(usable, size=48, replace=False)))


def test_a_curated_run_spends_what_its_schedule_says(manifest48, cache_dir, tmp_path):
    run = pretrain(manifest48, tmp_path / "run", curate="random", budget=0.25, seed=0, overrides=SMALL,
                   progress=False, cache_dir=cache_dir, compute_budget=0.5)
    cur = json.loads((run / "curation.json").read_text())
    sched = cur["schedule"]
    assert cur["epochs"] == sched["epochs"] > 10  # more epochs than the preset's over a quarter of the pairs
    # the units the run actually spent, against the preset on all pairs, are what the schedule estimated
    assert cur["compute_fraction_of_full_preset"] == pytest.approx(sched["fraction_of_full"], rel=1e-6)
    assert cur["compute_fraction_of_full_preset"] <= 0.5
    status = json.loads((run / "status.json").read_text())
    assert status["finished"]


def test_explicit_epochs_or_no_curation_leave_the_schedule_alone(manifest48, cache_dir, tmp_path):
    a = pretrain(manifest48, tmp_path / "a", curate="random", budget=0.25, epochs=2, overrides=SMALL,
                 progress=False, cache_dir=cache_dir, compute_budget=0.3)
    b = pretrain(manifest48, tmp_path / "b", curate="none", epochs=1, overrides=SMALL, progress=False,
                 cache_dir=cache_dir, compute_budget=0.3)
    for run, epochs in ((a, 2), (b, 1)):
        cur = json.loads((run / "curation.json").read_text())
        assert cur["epochs"] == epochs and "schedule" not in cur


def test_cli_compute_budget_default_off_and_bad_values():
    from cxrfm.cli.train import _compute_budget
    from cxrfm.train.schedule import DEFAULT_COMPUTE_BUDGET

    assert _compute_budget(None) == DEFAULT_COMPUTE_BUDGET
    assert _compute_budget("off") is None and _compute_budget("0.25") == 0.25
    with pytest.raises(ConfigError, match="compute-budget"):
        _compute_budget("lots")
