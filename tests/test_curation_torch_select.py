"""The prototype curator's per-step ``select`` on torch tensors (issue 16 item 5): the same selection as
the numpy version it replaced, tensors in, no numpy copy of the embeddings on the lockstep (GPU) path,
and farthest-point sampling of all bands at once equal to one band at a time."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrfm.train.curation import build_curator, normalise, sinkhorn_knopp
from cxrfm.train.curation.geometry import allocate_power
from cxrfm.train.curation.torch_ops import farthest_point_groups
from tests.curator_helpers import batches, json_round_trip, make_pool


def reference_fps(x, m, rng):
    """Farthest-point sampling as it was (geometry.farthest_point_sampling before the torch select)."""
    n = len(x)
    if m <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if m >= n:
        return np.arange(n)
    chosen = [int(rng.integers(n))]
    nearest = np.full(n, np.inf, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    for _ in range(1, m):
        c = chosen[-1]
        nearest = np.minimum(nearest, np.sqrt(np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0)))
        chosen.append(int(np.argmax(nearest)))
    return np.asarray(chosen, dtype=np.int64)


class NumpyReference:
    """``PrototypeCurator.select`` as it was in numpy before it moved to torch (commit ef00724), frozen
    here as the reference; it starts from a curator's state after the warm-up."""

    def __init__(self, cur):
        state = cur.state_dict()
        for key in ("n", "budget", "curation_epochs", "bands", "power_alpha", "sampling", "cluster_stats",
                    "stats_momentum", "sinkhorn_epsilon", "sinkhorn_iterations", "assignment", "ema_decay"):
            setattr(self, key, getattr(cur, key))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.kept, self.seen = state["kept"].copy(), state["seen"]
        self.prototypes = state["prototypes"].copy()
        self.dist_mean, self.dist_sq = state["dist_mean"].copy(), state["dist_sq"].copy()
        self.counts, self.kept_per_cluster = state["counts"].copy(), state["kept_per_cluster"].copy()

    def _assign(self, feats):
        d = np.sqrt(np.maximum(2.0 - 2.0 * feats @ self.prototypes.T, 0.0))
        cid = d.argmin(axis=1)
        return d[np.arange(len(d)), cid], cid

    def select(self, idx, img, txt):
        feats = normalise(np.concatenate([img, txt], axis=1))
        d, cid = self._assign(feats)
        lo, mid, hi = self.bands
        if self.cluster_stats == "running":
            for c in np.unique(cid):
                dc = d[cid == c]
                w = self.stats_momentum
                self.dist_mean[c] = w * self.dist_mean[c] + (1 - w) * dc.mean()
                self.dist_sq[c] = w * self.dist_sq[c] + (1 - w) * (dc ** 2).mean()
            mu = self.dist_mean[cid]
            sd = np.sqrt(np.maximum(self.dist_sq[cid] - mu ** 2, 0.0))
        else:
            mu, sd = np.zeros(len(d)), np.zeros(len(d))
            for c in np.unique(cid):
                m = cid == c
                mu[m], sd[m] = d[m].mean(), d[m].std()
        core = d <= mu + lo * sd
        periphery = ~core & (d < mu + mid * sd)
        tail = ~core & ~periphery & (d < mu + hi * sd)
        outlier = ~core & ~periphery & ~tail
        new = ~self.kept[idx]
        target = self.budget * self.n * (self.seen + len(idx)) / (self.curation_epochs * self.n)
        need = target - self.kept.sum()
        core_new = int(((core | periphery) & new).sum())
        tail_new = int((tail & new).sum())
        ratio = float(np.clip((need - tail_new) / core_new, 0.0, 1.0)) if core_new else 0.0
        keep = tail.copy()
        for c in np.unique(cid):
            in_c = cid == c
            c_idx, p_idx = np.flatnonzero(in_c & core), np.flatnonzero(in_c & periphery)
            m = int(math.floor((len(c_idx) + len(p_idx)) * ratio + self.rng.random()))
            mc, mp = allocate_power(len(c_idx), len(p_idx), m, self.power_alpha)
            for band_idx, mb in ((c_idx, mc), (p_idx, mp)):
                if self.sampling == "farthest":
                    pick = reference_fps(feats[band_idx], mb, self.rng)
                else:
                    pick = self.rng.permutation(len(band_idx))[:mb]
                keep[band_idx[pick]] = True
            self.counts[c] += [int(in_c.sum()), len(c_idx), len(p_idx), int((in_c & tail).sum()),
                               int((in_c & outlier).sum())]
        newly = keep & ~self.kept[idx]
        np.add.at(self.kept_per_cluster, cid[newly], 1)
        self.kept[idx[keep]] = True
        self.seen += len(idx)
        if keep.any():
            self._update_prototypes(feats[keep])
        return keep

    def _update_prototypes(self, feats):
        q = sinkhorn_knopp(feats @ self.prototypes.T, self.sinkhorn_epsilon, self.sinkhorn_iterations)
        if self.assignment == "gumbel":
            gumbel = -np.log(-np.log(self.rng.uniform(1e-12, 1.0, size=q.shape)))
            weights = np.zeros_like(q)
            weights[np.arange(len(q)), np.argmax(q + gumbel, axis=1)] = 1.0
        else:
            weights = q
        for c in range(len(self.prototypes)):
            w = weights[:, c:c + 1]
            mean = (w * feats).sum(axis=0) / (w.sum() + 1e-8)
            self.prototypes[c] = self.ema_decay * self.prototypes[c] + (1 - self.ema_decay) * mean
        self.prototypes = normalise(self.prototypes)


def _warm(pool_seed=4, sizes=(220, 160, 100, 40), **options):
    img, txt, _ = make_pool(list(sizes), seed=pool_seed, noise=0.3)
    cur = build_curator("prototype", n=len(img), budget=0.25, seed=11, num_prototypes=4, **options)
    cur.begin_epoch(0, lambda idx: (img[idx], txt[idx]))
    return cur, img, txt


@pytest.mark.parametrize("options", [{}, {"cluster_stats": "batch"}, {"sampling": "random"},
                                     {"assignment": "gumbel", "sinkhorn_epsilon": 0.5}])
def test_same_selection_as_the_numpy_version_over_an_epoch(options):
    """Seeded batches through the torch select and the frozen numpy one: the same rows every step, the same
    per-cluster counts and draws, and prototypes / running moments equal to float rounding."""
    cur, img, txt = _warm(**options)
    ref = NumpyReference(cur)
    for idx in batches(cur, 0, np.random.default_rng(5), batch_size=64):
        got = cur.select(0, idx, torch.from_numpy(img[idx]), torch.from_numpy(txt[idx]))
        want = ref.select(idx, img[idx], txt[idx])
        assert got.dtype == bool and np.array_equal(got, want)
    assert 0 < cur.kept.sum() < cur.n and np.array_equal(cur.kept, ref.kept)
    assert np.array_equal(cur.counts, ref.counts) and np.array_equal(cur.kept_per_cluster, ref.kept_per_cluster)
    assert cur.rng.bit_generator.state == ref.rng.bit_generator.state  # the same seeded draws, in order
    np.testing.assert_allclose(cur.prototypes, ref.prototypes, atol=1e-5)
    if options.get("cluster_stats", "running") == "running":
        np.testing.assert_allclose(cur.dist_mean, ref.dist_mean, rtol=1e-6)
        np.testing.assert_allclose(cur.dist_sq, ref.dist_sq, rtol=1e-6)


def test_band_edges_follow_the_numpy_rules_when_a_cluster_has_no_spread():
    """Per-batch statistics of a cluster whose samples are copies (sd = 0, every distance on the mean):
    each sample lies on the core's edge and is core (d <= mean + 1 sd), as in the numpy version."""
    cur, img, txt = _warm(cluster_stats="batch")
    ref = NumpyReference(cur)
    idx = np.arange(0, 330, 10)  # 33 rows, whose embeddings become 3 pairs x 11 copies
    b_img, b_txt = np.repeat(img[:3], 11, axis=0), np.repeat(txt[:3], 11, axis=0)
    got, want = cur.select(0, idx, b_img, b_txt), ref.select(idx, b_img, b_txt)
    assert np.array_equal(got, want) and np.array_equal(cur.counts, ref.counts)
    assert cur.counts[:, 1].sum() == 33 and cur.counts[:, 4].sum() == 0  # all core, no outlier


def test_tensor_and_numpy_inputs_select_the_same_and_state_round_trips():
    a, img, txt = _warm()
    b = build_curator("prototype", n=a.n, budget=0.25, seed=999, num_prototypes=4)
    b.load_state_dict(json_round_trip(a.state_dict()))
    for idx in batches(a, 0, np.random.default_rng(2), batch_size=96)[:4]:
        k_np = a.select(0, idx, img[idx], txt[idx])
        k_t = b.select(0, torch.from_numpy(idx), torch.from_numpy(img[idx]), torch.from_numpy(txt[idx]).double())
        assert np.array_equal(k_np, k_t)
    sa, sb = a.state_dict(), b.state_dict()  # what two ranks compare: bitwise the same state
    for key in ("kept", "prototypes", "dist_mean", "dist_sq", "counts", "kept_per_cluster"):
        assert sa[key].dtype == sb[key].dtype and np.array_equal(sa[key], sb[key]), key
    assert sa["rng"] == sb["rng"] and sa["seen"] == sb["seen"] > 0


def test_lockstep_path_keeps_the_embeddings_as_tensors(monkeypatch):
    """The path a GPU takes (all bands in lockstep): the (B, 2D) embeddings are never turned into numpy;
    only the (B,) cluster/band codes and the picks come to the host. Same rows as the CPU path."""
    import cxrfm.train.curation.prototype as prototype

    cpu, img, txt = _warm()
    gpu_like, _, _ = _warm()
    plan = batches(cpu, 0, np.random.default_rng(3), batch_size=128)[:3]
    want = [cpu.select(0, idx, torch.from_numpy(img[idx]), torch.from_numpy(txt[idx])) for idx in plan]
    real_numpy = torch.Tensor.numpy

    def guarded(t, *a, **k):
        if t.is_floating_point():
            raise AssertionError(f"select copied a float tensor {tuple(t.shape)} to numpy")
        return real_numpy(t, *a, **k)

    real_groups = prototype.farthest_point_groups
    monkeypatch.setattr(prototype, "farthest_point_groups", lambda x, g: real_groups(x, g, lockstep=True))
    monkeypatch.setattr(torch.Tensor, "numpy", guarded)
    got = [gpu_like.select(0, idx, torch.from_numpy(img[idx]), torch.from_numpy(txt[idx])) for idx in plan]
    monkeypatch.undo()
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert np.array_equal(cpu.kept, gpu_like.kept) and cpu.kept.any()


@pytest.mark.parametrize("dim", [64, 1024])
def test_farthest_point_groups_lockstep_equals_one_band_at_a_time(dim):
    """Both paths of farthest_point_groups pick what the numpy sampler picked, one band at a time."""
    rng = np.random.default_rng(0)
    x = normalise(rng.standard_normal((700, dim)))
    sizes, picks = [150, 90, 200, 3, 60, 120], [30, 89, 12, 2, 1, 45]
    perm = rng.permutation(len(x))
    groups, start = [], 0
    for size, m in zip(sizes, picks):
        groups.append((np.sort(perm[start:start + size]), m, int(rng.integers(size))))
        start += size
    xt = torch.from_numpy(x)
    seq = farthest_point_groups(xt, groups, lockstep=False)
    lock = farthest_point_groups(xt, groups, lockstep=True)
    for (rows, m, s), a, b in zip(groups, seq, lock):
        assert len(a) == m and len(set(a.tolist())) == m and a[0] == s
        assert np.array_equal(a, b)

        class Start:  # geometry's sampler with the same first draw
            @staticmethod
            def integers(n):
                return s

        assert np.array_equal(a, reference_fps(x[rows], m, Start))
    with pytest.raises(ValueError, match="0 < m < len"):
        farthest_point_groups(xt, [(np.arange(4), 4, 0)])
