"""The tasks' shared split helpers and the from-scratch baseline's schedule choice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrfm.data.schema import Manifest
from cxrfm.data.splits import split_patients
from cxrfm.errors import CxrfmError, SplitError
from cxrfm.tasks import baseline, split


def _manifest(tmp_path, n_patients=40, per_patient=2) -> Manifest:
    rows = [{"image": f"p{p}_{k}.png", "patient_id": f"p{p}", "source": "a" if p % 2 else "b"}
            for p in range(n_patients) for k in range(per_patient)]
    return Manifest.from_table(pd.DataFrame(rows), tmp_path)


def test_the_task_split_is_the_data_split(tmp_path):
    """One patient-split function: the tasks' seeded split is data.splits.split_patients' assignment."""
    m = _manifest(tmp_path)
    train, evals = split.patient_train_eval_rows(m, 0.25, seed=3)
    parts = split_patients(m, (0.75, 0.25), seed=3, names=("train", "eval"))
    assert list(train) == list(np.flatnonzero(parts == "train")) and list(evals) == list(np.flatnonzero(parts == "eval"))
    with pytest.raises(SplitError, match="strictly between 0 and 1"):
        split.patient_train_eval_rows(m, 1.0, seed=0)


def test_carve_validation_is_patient_disjoint_and_inside_the_training_rows(tmp_path):
    m = _manifest(tmp_path)
    rows = np.arange(10, 70)  # some training rows of the manifest
    fit, val = split.carve_validation(m, rows, 0.2, seed=0)
    assert len(fit) and len(val) and set(fit) | set(val) == set(range(len(rows))) and not set(fit) & set(val)
    pid = m.table["patient_id"].to_numpy()
    assert not set(pid[rows[fit]]) & set(pid[rows[val]])
    with pytest.raises(SplitError, match="at least two patients") as e:
        split.carve_validation(m, np.array([0, 1]), 0.2, seed=0)  # one patient
    assert isinstance(e.value, CxrfmError)


def test_choose_schedule_picks_the_best_validation_auroc_and_the_first_of_equals(monkeypatch):
    """Training is stubbed: each candidate's validation scores are set by its epochs."""
    y = np.array([[1.0], [0.0]] * 10)
    quality = {}

    def fake_train(pixels, labels, cfg, epochs, lr, settings, seed=0, progress=False):
        return (epochs, lr)

    def fake_predict(net, pixels):
        q = quality[net]
        rng = np.random.default_rng(0)
        return (q * y[: len(pixels)] + rng.normal(size=(len(pixels), 1))) if q is not None else rng.random((len(pixels), 1))

    monkeypatch.setattr(baseline, "train_supervised", fake_train)
    monkeypatch.setattr(baseline, "predict_supervised", fake_predict)
    pixels = np.zeros((20, 1, 4, 4))
    fit, val = np.arange(10), np.arange(10, 20)
    settings = baseline.BaselineSettings(schedules=((4, 1e-3), (10, 1e-3), (10, 3e-3)))
    quality.update({(4, 1e-3): 0.0, (10, 1e-3): 5.0, (10, 3e-3): 1.0})
    got = baseline.choose_schedule(pixels, y, fit, val, settings=settings)
    assert (got["epochs"], got["lr"]) == (10, 1e-3) and len(got["candidates"]) == 3
    assert got["candidates"][1]["val_mean_auroc"] == max(c["val_mean_auroc"] for c in got["candidates"])
    quality.update({(4, 1e-3): 5.0, (10, 1e-3): 5.0, (10, 3e-3): 5.0})
    assert (baseline.choose_schedule(pixels, y, fit, val, settings=settings)["epochs"]) == 4  # tie: cheapest
    unknown = np.full_like(y, np.nan)  # nothing to validate on: the first candidate, with the reason
    got = baseline.choose_schedule(pixels, unknown, fit, val, settings=settings)
    assert got["epochs"] == 4 and "no finding" in got["how"]


def test_warmup_cosine_schedule_is_defined_for_any_length():
    for steps in (1, 2, 10, 37):
        f = baseline.warmup_cosine(steps)
        vals = [f(s) for s in range(steps)]
        assert all(0 <= v <= 1 for v in vals) and max(vals) == pytest.approx(1.0)
