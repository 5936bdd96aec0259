"""Helpers of benchmarks/data_efficiency.py whose mistakes would silently mix or lose benchmark runs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import data_efficiency as de  # noqa: E402
import subset_probes  # noqa: E402


def test_arm_specs_parse_budget_and_options():
    assert de.parse_arm("none", 0.2) == {"tag": "none", "curate": "none", "budget": 1.0, "kwargs": {}}
    arm = de.parse_arm("balanced:within=random,alpha=0.75", 0.2)
    assert arm["tag"] == "balanced@0.2:within=random,alpha=0.75" and arm["budget"] == 0.2
    assert arm["kwargs"] == {"within": "random", "alpha": 0.75}
    assert de.parse_arm("random@0.3", 0.2)["budget"] == 0.3


def test_run_folders_keep_settings_apart():
    tag = "balanced@0.2:within=random"
    default = de.run_name(tag, None, {})
    assert default == "balanced@0.2_within-random"  # the folder earlier runs used: they still resume
    names = {default, de.run_name(tag, 30, {}), de.run_name(tag, None, {"lr": 0.004}),
             de.run_name(tag, 30, {"lr": 0.004}), de.run_name("balanced@0.2", None, {})}
    assert len(names) == 5
    assert all("/" not in n and ":" not in n and "=" not in n for n in names)


def test_missing_shared_data_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXRFM_DATA", str(tmp_path / "no-such-folder"))
    assert de.dev_eval_split() is None
    assert de.main(["--seeds", "1", "--arms", "random", "--out", str(tmp_path / "out")]) == 2
    assert "set CXRFM_DATA" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="set CXRFM_DATA"):
        subset_probes.main(["--seeds", "1", "--arms", "oracle-pediatric", "--out", str(tmp_path / "out")])


def test_dev_eval_split_is_the_patient_disjoint_benchmark_split(shared_data):
    train, held = de.dev_eval_split()
    assert (len(train), len(held)) == (1555, 512)  # the dev / eval parts every benchmark table uses
    assert not set(train.table["patient_id"]) & set(held.table["patient_id"])
