"""The CheXficient port's warm-up training (``warmup_epochs``) and its per-row record of clusters and bands
(read by benchmarks/prototype_diagnosis.py), on the planted pools of tests/curator_helpers.py."""
from __future__ import annotations

import numpy as np
import pytest

from cxrfm.errors import ConfigError
from cxrfm.train.curation import build_curator
from tests.curator_helpers import drive, json_round_trip, make_pool


def test_warmup_epochs_train_the_slice_then_curate_within_budget():
    img, txt, _ = make_pool([200, 150, 100, 50], seed=2)
    n = len(img)
    cur = build_curator("prototype", n=n, budget=0.25, seed=0, num_prototypes=4, warmup_epochs=2)
    assert not cur.selects(0) and not cur.selects(1) and cur.selects(2) and not cur.selects(3)
    trained = drive(cur, img, txt, epochs=4)
    warm = cur.warm_rows
    assert len(warm) == max(round(0.1 * n), 20 * 4)  # at least 20 rows per prototype
    # the first two epochs train on the warm-up slice alone, the third visits every row
    assert np.array_equal(trained[0], warm) and np.array_equal(trained[1], warm)
    assert len(trained[2]) < n  # only kept samples get a loss while curating
    kept = cur.kept_rows()
    assert set(warm) <= set(kept)  # trained on, so counted
    assert abs(len(kept) / n - 0.25) <= 0.02
    assert np.array_equal(trained[3], kept)
    s = cur.summary()
    assert s["warmup_epochs"] == 2 and s["warmup_rows"] == len(warm)
    # the prototypes were fitted when curation began (epoch 2), not at epoch 0
    assert cur.embedded_rows == len(warm)


def test_warmup_clusters_with_the_model_as_it_is_after_the_warmup_epochs():
    img, txt, _ = make_pool([200, 150, 100], seed=4)
    cur = build_curator("prototype", n=len(img), budget=0.3, seed=0, num_prototypes=3, warmup_epochs=1)
    calls = []

    def embed(idx):
        calls.append(len(idx))
        return img[idx], txt[idx]

    cur.begin_epoch(0, embed)
    assert calls == [] and cur.prototypes is None  # epoch 0 trains the slice; nothing is embedded yet
    cur.begin_epoch(1, embed)
    assert sum(calls) == len(cur.warm_rows) and cur.prototypes is not None


def test_rows_record_their_cluster_and_band_at_the_first_visit():
    img, txt, cid = make_pool([300, 250, 200, 150, 100], outliers=12, seed=3, noise=0.08)
    cur = build_curator("prototype", n=len(img), budget=0.3, seed=0, num_prototypes=5)
    drive(cur, img, txt, epochs=2)
    assert (cur.row_cluster >= 0).all() and (cur.row_band >= 0).all()  # one curation epoch visits every row
    assert cur.row_band.max() <= 3
    # planted outliers land in the outlier band far more often than the planted clusters' members
    assert (cur.row_band[cid == -1] == 3).mean() > 0.5 > (cur.row_band[cid >= 0] == 3).mean()
    # the record matches the summary's per-cluster band counts
    for c in cur.summary()["per_cluster"]:
        here = cur.row_band[cur.row_cluster == c["cluster"]]
        assert [int((here == b).sum()) for b in range(4)] == [c["core"], c["periphery"], c["tail"],
                                                              c["outlier_dropped"]]
    # and survives the checkpoint round trip
    back = build_curator("prototype", n=len(img), budget=0.3, seed=0, num_prototypes=5)
    back.load_state_dict(json_round_trip(cur.state_dict()))
    assert np.array_equal(back.row_cluster, cur.row_cluster) and np.array_equal(back.row_band, cur.row_band)
    assert np.array_equal(back.warm_rows, cur.warm_rows)


def test_negative_warmup_epochs_is_a_config_error():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_curator("prototype", n=100, budget=0.2, seed=0, warmup_epochs=-1)
