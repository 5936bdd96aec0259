"""The prevalence task counts labels by hand-checkable rules (the task contract test covers its views)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfm.data.schema import Manifest
from cxrfm.tasks import prevalence
from cxrfm.tasks.suite import EvalContext


def test_counts_per_finding_and_source_and_flags_single_source_findings(tmp_path):
    nan = np.nan
    df = pd.DataFrame({
        "image": [f"{i}.png" for i in range(6)], "patient_id": list("abcdef"),
        "source": ["s1", "s1", "s1", "s2", "s2", "s2"],
        "COVID-19": [1, 1, 0, 0, 0, nan],   # positives only in s1 -> flagged
        "Pneumonia": [1, 0, nan, 1, 0, 0],  # positives in both sources
        "Fracture": [1, nan, nan, nan, nan, nan],  # one source known only -> not a cross-source shortcut
    })
    r = prevalence.run(EvalContext(model=None, manifest=Manifest.from_table(df, tmp_path)))
    cov = r["findings"]["COVID-19"]
    assert (cov["n_known"], cov["n_pos"]) == (5, 2) and abs(cov["prevalence"] - 0.4) < 1e-12
    assert cov["per_source"] == {"s1": {"n_known": 3, "n_pos": 2}, "s2": {"n_known": 2, "n_pos": 0}}
    assert r["findings"]["Pneumonia"]["sources_with_positives"] == ["s1", "s2"]
    assert r["single_source_findings"] == ["COVID-19"]
    assert "Cardiomegaly" not in r["findings"] and r["n_rows"] == 6
    assert "COVID-19" in prevalence.console(r)[1]
    assert 'class="flag"' in prevalence.html(r, None)
