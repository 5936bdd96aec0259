"""Curators on synthetic embeddings whose structure we plant (clusters, outliers, duplicates, a rare
cluster), driven the way :mod:`cxrfm.train.loop` drives them (see :mod:`cxrfm.train.curation`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfm.errors import ConfigError
from cxrfm.train.curation import CURATORS, build_curator, water_fill
from tests.curator_helpers import DIM, unit, batches, drive, json_round_trip, make_pool

CURATED = ["random", "prototype", "balanced"]


@pytest.mark.parametrize("name", CURATED)
@pytest.mark.parametrize("n_scale,budget", [(1, 0.1), (1, 0.2), (3, 0.2), (1, 0.5), (3, 0.35)])
def test_budget_is_met_and_subset_is_fixed_after_curation(name, n_scale, budget):
    img, txt, _ = make_pool([120 * n_scale, 90 * n_scale, 60 * n_scale, 30 * n_scale], seed=n_scale)
    n = len(img)
    cur = build_curator(name, n=n, budget=budget, seed=1)
    trained = drive(cur, img, txt, epochs=3)
    kept = cur.kept_rows()
    assert abs(len(kept) / n - budget) <= 0.02, (name, len(kept) / n, budget)
    assert cur.summary()["achieved_fraction"] == pytest.approx(len(kept) / n, abs=1e-6)
    # after the curation epoch(s) only the kept subset is trained on, and all of it
    assert np.array_equal(trained[-1], kept)
    assert np.array_equal(trained[1], trained[2])
    assert set(trained[0]) <= set(kept)


def test_prototype_drops_planted_outliers():
    img, txt, cid = make_pool([300, 250, 200, 150, 100], outliers=12, seed=3, noise=0.08)
    outliers = cid == -1
    rates = []
    for seed in range(3):
        cur = build_curator("prototype", n=len(img), budget=0.3, seed=seed, num_prototypes=5)
        drive(cur, img, txt, epochs=1, seed=seed)
        kept = np.isin(np.arange(len(img)), cur.kept_rows())
        rates.append(kept[outliers].mean())
        s = cur.summary()
        assert sum(c["outlier_dropped"] for c in s["per_cluster"]) >= 10
        assert abs(s["achieved_fraction"] - 0.3) <= 0.02
    # random keeps 30% of them; beyond mean+3sd of their cluster they are dropped (a prototype that
    # drifts under the Sinkhorn equipartition can still adopt one or two)
    assert np.mean(rates) <= 0.1, rates


@pytest.mark.parametrize("name", ["prototype", "balanced"])
def test_near_duplicates_are_thinned_more_than_random(name):
    img, txt, cid = make_pool([400, 300, 200, 100], duplicates=200, seed=5)
    n, dup = len(img), cid == -2
    kwargs = {"num_prototypes": 4, "warmup_fraction": 0.3} if name == "prototype" else {"dedup_threshold": 0.95}
    kept_dup, kept_dup_random = [], []
    for seed in range(3):
        cur = build_curator(name, n=n, budget=0.2, seed=seed, **kwargs)
        drive(cur, img, txt, epochs=1, seed=seed)
        kept_dup.append(np.isin(np.flatnonzero(dup), cur.kept_rows()).sum())
        rnd = build_curator("random", n=n, budget=0.2, seed=seed)
        kept_dup_random.append(np.isin(np.flatnonzero(dup), rnd.kept_rows()).sum())
    # random keeps ~20% of the 200 copies (~40); the curators keep clearly fewer
    assert np.mean(kept_dup) < 0.6 * np.mean(kept_dup_random), (kept_dup, kept_dup_random)


def test_balanced_keeps_the_rare_cluster_and_thins_the_largest():
    img, txt, cid = make_pool([500, 300, 150, 40, 10], seed=7, text_noise=0.0)  # template texts
    rare, largest = cid == 4, cid == 0
    cur = build_curator("balanced", n=len(img), budget=0.2, seed=0)  # alpha=0.5: shares ~ sqrt(size)
    drive(cur, img, txt, epochs=1)
    assert cur.summary()["n_clusters"] == 5  # one cluster per distinct text
    kept = np.isin(np.arange(len(img)), cur.kept_rows())
    assert kept[rare].all(), "a 1% cluster is kept whole"
    assert kept[largest].mean() < 0.2, "the largest cluster is thinned below the budget rate"
    flat = build_curator("balanced", n=len(img), budget=0.2, seed=0, alpha=0.0)  # equal shares
    drive(flat, img, txt, epochs=1)
    kept = np.isin(np.arange(len(img)), flat.kept_rows())
    assert kept[rare].all(), "with equal shares a 10-pair cluster is kept whole"
    assert kept[largest].mean() < 0.2 * 0.75


def test_balanced_central_keeps_each_clusters_most_typical_texts():
    img, txt, _ = make_pool([300, 200, 100], seed=4, noise=0.4)
    n = len(img)
    central = build_curator("balanced", n=n, budget=0.2, seed=0, n_clusters=3)  # within="central": default
    drive(central, img, txt, epochs=1)
    rnd = build_curator("balanced", n=n, budget=0.2, seed=0, n_clusters=3, within="random")
    drive(rnd, img, txt, epochs=1)
    assert central.summary()["within"] == "central"
    assert len(central.kept_rows()) == len(rnd.kept_rows()) == 120
    cos_to_centre = np.empty(n)
    for c in range(3):  # the curator's own text clusters
        m = central.cluster == c
        cos_to_centre[m] = txt[m] @ unit(txt[m].mean(0))
    kept = np.isin(np.arange(n), central.kept_rows())
    for c in range(3):  # inside every cluster, every kept text is more typical than every dropped one
        m = central.cluster == c
        assert kept[m].any() and (~kept[m]).any()
        assert cos_to_centre[m & kept].min() > cos_to_centre[m & ~kept].max()
    assert cos_to_centre[central.kept_rows()].mean() > cos_to_centre[rnd.kept_rows()].mean() + 0.05


def test_balanced_central_breaks_ties_between_identical_texts_by_seed():
    img, txt, _ = make_pool([200, 100], seed=2, text_noise=0.0)  # every pair of a cluster has one text
    picks = []
    for seed in (0, 1):
        cur = build_curator("balanced", n=len(img), budget=0.2, seed=seed, n_clusters=2)
        drive(cur, img, txt, epochs=1)
        picks.append(set(cur.kept_rows()))
    assert len(picks[0]) == len(picks[1]) == 60 and picks[0] != picks[1]


def test_balanced_clusters_on_minilm_texts_when_given():
    texts = (["Normal chest radiograph."] * 60 + ["Right lower lobe pneumonia."] * 30
             + ["Small left pleural effusion."] * 10)
    rng = np.random.default_rng(0)
    img = unit(rng.normal(size=(100, DIM)))
    txt = unit(rng.normal(size=(100, DIM)))  # meaningless model text embeddings: MiniLM must be used
    cur = build_curator("balanced", n=100, budget=0.3, seed=0, n_clusters=3, texts=texts, alpha=0.0)

    def no_embed(idx):
        raise AssertionError("texts alone decide: the images must not be embedded")

    cur.begin_epoch(0, no_embed)
    drive(cur, img, txt, epochs=1)
    kept = cur.kept_rows()
    # equal shares (alpha=0) of 30 over 3 text clusters: the 10 effusion pairs are kept whole
    assert (kept >= 90).sum() == 10 and (kept < 60).sum() == 10
    assert cur.summary()["cluster_space"] == "minilm(texts)"


def test_balanced_refresh_drops_misaligned_pairs_without_adding_rows():
    img, txt, cid = make_pool([200, 200, 100], seed=11)
    n = len(img)
    bad = np.random.default_rng(0).choice(n, size=25, replace=False)
    img = img.copy()
    img[bad] = unit(-txt[bad])  # pairs whose image disagrees with the text
    cur = build_curator("balanced", n=n, budget=0.5, seed=0, refresh_every=1, noise_drop=0.1)
    drive(cur, img, txt, epochs=2)
    active = cur.epoch_rows(2)
    kept = cur.kept_rows()
    assert set(active) < set(kept)
    kept_bad = np.intersect1d(bad, kept)
    assert len(kept_bad) and not np.isin(kept_bad, active).any()


@pytest.mark.parametrize("name", CURATED)
def test_same_seed_same_selection_other_seed_differs(name):
    img, txt, _ = make_pool([150, 100, 50], seed=2)
    runs = []
    for seed in (4, 4, 5):
        cur = build_curator(name, n=len(img), budget=0.25, seed=seed)
        drive(cur, img, txt, epochs=2, seed=seed)
        runs.append(cur.kept_rows())
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("name", CURATED)
def test_state_dict_round_trip_mid_epoch_gives_identical_selections(name):
    img, txt, _ = make_pool([200, 120, 80], seed=9)
    n = len(img)
    embed = lambda idx: (img[idx], txt[idx])  # noqa: E731
    a = build_curator(name, n=n, budget=0.2, seed=3)
    a.begin_epoch(0, embed)
    plan = batches(a, 0, np.random.default_rng(0))
    half = len(plan) // 2
    for idx in plan[:half]:
        a.select(0, idx, img[idx], txt[idx])
    b = build_curator(name, n=n, budget=0.2, seed=999)  # another seed: everything must come from the state
    b.load_state_dict(json_round_trip(a.state_dict()))
    b.begin_epoch(0, embed)  # a resumed loop calls begin_epoch again; it must not re-select
    for idx in plan[half:]:
        assert np.array_equal(a.select(0, idx, img[idx], txt[idx]), b.select(0, idx, img[idx], txt[idx]))
    for cur in (a, b):
        cur.end_epoch(0)
        cur.begin_epoch(1, embed)
    assert np.array_equal(a.kept_rows(), b.kept_rows())
    assert np.array_equal(a.epoch_rows(1), b.epoch_rows(1))
    assert json.dumps(a.summary()) == json.dumps(b.summary())


@pytest.mark.parametrize("name", sorted(CURATORS))
@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan")])
def test_budget_outside_unit_interval_is_a_config_error(name, budget):
    with pytest.raises(ConfigError, match="budget"):
        build_curator(name, n=100, budget=budget)


def test_unknown_curator_or_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown curator"):
        build_curator("kmeans-magic", n=10, budget=0.2)
    with pytest.raises(ConfigError, match="num_protoypes"):
        build_curator("prototype", n=10, budget=0.2, num_protoypes=4)
    with pytest.raises(ConfigError, match="central"):
        build_curator("balanced", n=10, budget=0.2, within="median")


def test_none_keeps_everything():
    img, txt, _ = make_pool([30, 20])
    cur = build_curator("none", n=len(img))
    trained = drive(cur, img, txt, epochs=1)
    assert np.array_equal(trained[0], np.arange(len(img)))
    assert cur.summary()["achieved_fraction"] == 1.0


def test_water_fill_caps_small_clusters_and_sums_to_budget():
    q = water_fill(np.array([500, 300, 150, 40, 10]), 200, alpha=0.5)
    assert q.sum() == 200 and q[-1] == 10 and np.all(q <= [500, 300, 150, 40, 10])
    assert np.array_equal(water_fill(np.array([5, 5]), 100, 0.5), [5, 5])
    prop = water_fill(np.array([600, 300, 100]), 100, alpha=1.0)
    assert np.array_equal(prop, [60, 30, 10])


def test_balanced_thumbnail_dedup_thins_planted_near_copies_more_than_random():
    """dedup_space='thumbnail': near-copies of an image (a few grey levels of noise) are found on the
    16x16 thumbnails the loop hands over, without any image embedding pass."""
    from cxrfm.train.curation import thumbnail_features

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(120, 32, 32)).astype(np.float32)
    copies = np.clip(base[:60] + rng.normal(0, 4, size=(60, 32, 32)), 0, 255)  # one near-copy of the first 60
    images = np.concatenate([base, copies]).astype(np.uint8)
    is_copy = np.arange(len(images)) >= 120
    thumbs = thumbnail_features(images)
    texts = ["same report"] * len(images)
    cur = build_curator("balanced", n=len(images), budget=0.5, seed=0, texts=texts,
                        text_features=lambda: np.ones((len(images), 4), np.float32),
                        thumbnails=lambda: thumbs, dedup_threshold=0.9, dedup_space="thumbnail", within="random")
    cur.begin_epoch(0, lambda idx: (_ for _ in ()).throw(AssertionError("no image embedding pass expected")))
    kept = np.isin(np.arange(len(images)), cur.kept_rows())
    # each copy group (original + copy) keeps one member: a random half would keep both in a quarter of them
    both = kept[:60] & kept[120:]
    assert both.sum() == 0
    assert cur.summary()["near_duplicates"] >= 55 and cur.summary()["dedup_space"] == "thumbnail"
    assert abs(kept.mean() - 0.5) <= 0.01
    assert kept[is_copy].mean() < 0.5
    with pytest.raises(ConfigError, match="dedup_space"):
        build_curator("balanced", n=10, budget=0.5, dedup_space="pixels")


def test_balanced_thumbnail_dedup_without_an_image_cache_is_a_clear_error():
    """Streamed shards have no image cache, so no thumbnails: the curator says what to use instead."""
    cur = build_curator("balanced", n=40, budget=0.5, seed=0, texts=["a"] * 20 + ["b"] * 20,
                        text_features=lambda: np.eye(2, dtype=np.float32)[[0] * 20 + [1] * 20],
                        dedup_threshold=0.9, dedup_space="thumbnail")
    with pytest.raises(ConfigError, match="thumbnail.*image cache"):
        cur.begin_epoch(0, lambda idx: (_ for _ in ()).throw(AssertionError("no image pass expected")))
