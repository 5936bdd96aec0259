"""One contract for every registered curator (``list_curators()``): a curator registered with
``@register_curator`` is checked here the moment it exists, on tiny planted data driven the way the
training loop drives it (tests/curator_helpers.drive)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfm.errors import ConfigError
from cxrfm.train.curation import (CURATORS, CurationContext, Curator, build_curator, curator_class, list_curators,
                                  register_curator)
from tests.curator_helpers import batches, drive, json_round_trip, make_pool

BUDGET = 0.25


@pytest.fixture(scope="module")
def pool():
    return make_pool([90, 60, 30, 20], seed=1)  # 200 pairs, four clusters


@pytest.mark.parametrize("name", list_curators())
def test_selects_within_budget_and_trains_only_its_rows(name, pool):
    img, txt, _ = pool
    n = len(img)
    cur = build_curator(name, n=n, budget=BUDGET, seed=0)
    assert cur.name == name and isinstance(cur, Curator)
    trained = drive(cur, img, txt, epochs=2)
    kept = np.asarray(cur.kept_rows())
    assert kept.dtype.kind == "i" and len(np.unique(kept)) == len(kept) and ((kept >= 0) & (kept < n)).all()
    if name == "none":  # the full-data control ignores the budget by definition
        assert len(kept) == n
    else:
        assert abs(len(kept) / n - BUDGET) <= 0.02, (name, len(kept) / n)
    for rows in trained:  # every row that got a loss is one the curator keeps
        assert set(rows) <= set(kept)
    summary = cur.summary()
    json.dumps(summary)  # goes into curation.json as it is
    assert summary["curator"] == name and summary["n_kept"] == len(kept)


@pytest.mark.parametrize("name", list_curators())
def test_deterministic_for_a_seed(name, pool):
    img, txt, _ = pool
    runs = []
    for _ in range(2):
        cur = build_curator(name, n=len(img), budget=BUDGET, seed=7)
        trained = drive(cur, img, txt, epochs=2, seed=7)
        runs.append((cur.kept_rows(), trained, json.dumps(cur.summary())))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("name", list_curators())
def test_state_survives_save_and_load_mid_epoch(name, pool):
    """What --resume does: the state goes through JSON + arrays into a curator built with another seed,
    and the rest of the run is the same selection for selection."""
    img, txt, _ = pool
    n = len(img)
    embed = lambda idx: (img[idx], txt[idx])  # noqa: E731
    a = build_curator(name, n=n, budget=BUDGET, seed=3)
    a.begin_epoch(0, embed)
    plan = batches(a, 0, np.random.default_rng(0))
    half = len(plan) // 2

    def step(cur, idx):
        return cur.select(0, idx, img[idx], txt[idx]) if cur.selects(0) else np.ones(len(idx), bool)

    for idx in plan[:half]:
        step(a, idx)
    b = build_curator(name, n=n, budget=BUDGET, seed=999)
    b.load_state_dict(json_round_trip(a.state_dict()))
    b.begin_epoch(0, embed)  # a resumed loop calls begin_epoch again; it must not select again
    for idx in plan[half:]:
        assert np.array_equal(step(a, idx), step(b, idx))
    for cur in (a, b):
        cur.end_epoch(0)
        cur.begin_epoch(1, embed)
    assert np.array_equal(a.kept_rows(), b.kept_rows())
    assert np.array_equal(a.epoch_rows(1), b.epoch_rows(1))
    assert json.dumps(a.summary()) == json.dumps(b.summary())


@pytest.mark.parametrize("name", list_curators())
def test_refuses_a_bad_budget_and_unknown_options(name):
    with pytest.raises(ConfigError, match="budget"):
        build_curator(name, n=50, budget=float("nan"))
    with pytest.raises(ConfigError, match="no_such_option"):
        build_curator(name, n=50, budget=BUDGET, no_such_option=1)


def test_registry_lookup_context_and_declared_selects():
    with pytest.raises(ConfigError, match="unknown curator.*balanced"):
        curator_class("cleverest")
    ctx = CurationContext(n=10, budget=0.3, seed=1)
    assert ctx.target == 3
    with pytest.raises(ConfigError, match="texts"):
        CurationContext(n=10, texts=["one text"])

    # overriding select() without declaring selects() would never be called by the loop: refused
    with pytest.raises(TypeError, match="selects"):
        class Forgetful(Curator):  # noqa: F841
            name = "forgetful"

            def select(self, epoch, idx, img, txt):
                return np.zeros(len(idx), bool)

    class EveryOther(Curator):
        name = "every-other"

        def selects(self, epoch):
            return True

        def select(self, epoch, idx, img, txt):
            return np.arange(len(idx)) % 2 == 0

    try:
        assert register_curator(EveryOther) is EveryOther
        assert "every-other" in list_curators() and build_curator("every-other", n=4).selects(0)
        with pytest.raises(ValueError, match="taken"):
            register_curator(type("Impostor", (Curator,), {"name": "every-other"}))
    finally:
        CURATORS.pop("every-other", None)  # leave the registry as the other tests expect it
