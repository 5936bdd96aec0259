"""benchmarks/compute_frontier.py and prototype_diagnosis.py: the analysis that turns runs into the frontier
table, the reference choice and the goal check (on made-up rows whose answer is known)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compute_frontier as cf  # noqa: E402
import prototype_diagnosis as pd_  # noqa: E402


def row(arm, seed, val, test, units, data=1.0):
    p = cf.parse_point(arm)
    return {"arm": p["tag"], "family": p["family"], "epochs": p["epochs"], "budget": p["budget"],
            "level": p["level"], "seed": seed, "config": "tiny-cpu", "data_fraction": data, "compute_units": units,
            "val": {"reliable_mean": val, "adult_mean": 0.5, "cells": {}},
            "test": {"reliable_mean": test, "adult_mean": 0.5, "cells": {}}, "train_s": 1, "wall_s": 1}


def grid(curated_gap=-0.005, curated_noise=0.002):
    """none/{2,10,20} (10 and 20 tie on validation), random and balanced at levels 2 and 3."""
    rows = []
    rng = np.random.default_rng(0)
    for s in range(6):
        e = rng.normal(0, 0.01)  # a seed effect shared by every arm: paired differences remove it
        rows += [row("none/2", s, 0.70 + e, 0.71 + e, 200), row("none/3", s, 0.72 + e, 0.73 + e, 300),
                 row("none/10", s, 0.800 + e, 0.85 + e, 1000), row("none/20", s, 0.803 + e, 0.86 + e, 2000),
                 row("random@0.2/10", s, 0.60 + e, 0.70 + e, 205, 0.2),
                 row("random@0.2/15", s, 0.62 + e, 0.72 + e, 305, 0.2),
                 row("balanced@0.2/10", s, 0.75 + e, 0.80 + e, 205, 0.2),
                 row("balanced@0.2/14", s, 0.79 + e, 0.85 + e + curated_gap + rng.normal(0, curated_noise),
                     290, 0.2)]
    return rows


def test_points_parse_and_bad_points_are_refused():
    p = cf.parse_point("balanced@0.2:within=random/14")
    assert (p["family"], p["epochs"], p["budget"], p["level"]) == ("balanced@0.2:within=random", 14, 0.2, 2.8)
    assert cf.parse_point("none/10")["level"] == 10
    for bad in ("balanced@0.2", "none/0", "none/x"):
        with pytest.raises(SystemExit):
            cf.parse_point(bad)


def test_reference_is_the_cheapest_schedule_tied_with_the_best_on_validation():
    ref, val = cf.choose_reference(grid(), tie=0.005)
    assert ref == "none/10" and val["none/20"] > val["none/10"]  # 20 is better by 0.003 < tie: 10 wins
    assert cf.choose_reference(grid(), tie=0.001)[0] == "none/20"
    assert cf.choose_reference([r for r in grid() if not r["arm"].startswith("none")]) is None


def test_frontier_counts_compute_against_the_reference_and_pairs_equal_compute():
    f = cf.frontier(grid())
    b = f["arms"]["balanced@0.2/14"]
    assert b["compute"] == pytest.approx(0.29)
    mean, ci, n = b["vs_reference"]
    assert n == 6 and mean == pytest.approx(-0.005, abs=0.003) and ci[0] < mean < ci[1]
    # comparators spend at least as much: level 2.8 -> random@0.2/15 (3.0) and none/3
    assert b["same_compute_as"] == {"none": "none/3", "random": "random@0.2/15"}
    assert f["arms"]["balanced@0.2/10"]["same_compute_as"] == {"none": "none/2", "random": "random@0.2/10"}
    assert b["vs_random_same_compute"][1][0] > 0 and b["vs_none_same_compute"][1][0] > 0
    g = cf.goal_check(f, "balanced@0.2")
    assert g["within_gap_at_compute"] == ["balanced@0.2/14"]
    assert g["above_random_everywhere"] and g["above_none_everywhere"]
    # 0.03 short of the reference: no point meets the goal
    g2 = cf.goal_check(cf.frontier(grid(curated_gap=-0.03)), "balanced@0.2")
    assert g2["within_gap_at_compute"] == []


def test_tables_plot_and_report_are_written(tmp_path):
    f = cf.frontier(grid())
    text = cf.format_tables(f)
    assert "reference = none/10" in text and "balanced@0.2/14" in text and "goal, balanced@0.2" in text
    png = cf.plot(f, tmp_path / "frontier.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = cf.write_report(f, png, tmp_path / "report.html", "python benchmarks/compute_frontier.py").read_text()
    assert "data:image/png;base64," in page and "reference = none/10" in page


def test_diagnosis_counts_inversions_and_band_keeps():
    rows = grid()
    for r in rows:
        r["test"]["cells"] = {"Pneumonia|kermany-pediatric-cxr": 0.3 if r["arm"].startswith("random") else 0.8}
    text = pd_.inversions(rows)
    line = next(ln for ln in text.splitlines() if ln.startswith("random@0.2/10"))
    assert "0.300 (6 below 0.5)" in line
    groups = np.array(["ped:Normal"] * 4 + ["nih"] * 4)
    kept = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    band = np.array([0, 2, 0, 1, 3, 0, 0, 0])
    d = pd_.diagnose([{"kept": kept, "budget": 0.5, "band": band, "cluster": np.array([0, 0, 1, 1, 0, 1, 1, 1])}],
                     groups, np.where(groups == "nih", "nih", "ped"), np.linspace(0, 1, 8))
    assert d["composition"] == {"nih": 0.5, "ped:Normal": 1.0}
    assert d["kept_given_band"]["tail"] == 1.0 and d["kept_given_band"]["core"] == pytest.approx(0.2)
    assert d["tail_or_outlier_share"] == {"ped:Normal": 0.25}
