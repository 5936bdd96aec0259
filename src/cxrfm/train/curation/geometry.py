"""Geometry shared by the curators: k-means, Sinkhorn-Knopp, farthest-point sampling, budget splits.

Pure functions of arrays and a seeded generator; no curator state. k-means follows CheXficient's faiss
initialisation (Wang et al., arXiv:2602.22843), Sinkhorn-Knopp follows SwAV (Caron et al. 2020),
typical-first follows Sorscher et al. (NeurIPS 2022).
"""
from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans_centroids(x: np.ndarray, k: int, seed: int, niter: int = 20, nredo: int = 5) -> np.ndarray:
    """(k, D) L2-normalised k-means centroids of ``x`` (faiss, seeded; CheXficient's initialisation).

    ``nredo`` restarts keep the lowest-inertia solution: a single random initialisation (the
    reference's) sometimes merges two clusters or spends a centroid on a handful of outliers.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = int(max(1, min(k, len(x))))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=int(seed) % (2**31 - 1), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100_000)
    km.train(x)
    return normalise(km.centroids)


def kmeans_plus_plus_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids of the rows of ``x``: k-means++ (scikit-learn, seeded) on the *distinct* rows.

    Clustering distinct rows (identical template texts count once) and seeding with k-means++ keeps
    small, well-separated groups -- a rare finding combination -- as clusters of their own, where
    uniformly initialised k-means on the raw rows lets the densest group take most centroids.
    """
    from sklearn.cluster import KMeans

    distinct, inverse = np.unique(np.round(x, 5), axis=0, return_inverse=True)
    k = int(max(1, min(k, len(distinct))))
    km = KMeans(n_clusters=k, init="k-means++", n_init=3, random_state=int(seed) % (2**31 - 1))
    labels = km.fit_predict(distinct.astype(np.float64))
    return labels[np.asarray(inverse).reshape(-1)].astype(np.int64)


def farthest_point_sampling(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``m`` rows of ``x`` chosen by farthest-point sampling from a random start."""
    n = len(x)
    if m <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if m >= n:
        return np.arange(n)
    return farthest_point_from(x, m, int(rng.integers(n)))


def farthest_point_from(x: np.ndarray, m: int, start: int) -> np.ndarray:
    """Farthest-point sampling of ``0 < m < len(x)`` rows of ``x`` from row ``start`` (the kernel of
    :func:`farthest_point_sampling`; the prototype curator draws ``start`` itself, then runs this per band)."""
    n = len(x)
    chosen = [int(start)]
    # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c: a matrix-vector product per pick instead of an (n, D) difference
    # (~5x faster), in preallocated buffers (the same float operations in the same order, so the same picks)
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.empty(n, dtype=np.result_type(x.dtype, sq.dtype))
    both = np.empty_like(dist)
    nearest = np.full(n, np.inf, dtype=dist.dtype)
    for _ in range(1, m):
        c = chosen[-1]
        np.matmul(x, x[c], out=dist)
        np.add(sq, sq[c], out=both)
        dist *= -2.0  # exact; then one rounding for |x|^2 + |c|^2 - 2 x.c, as before
        dist += both
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        np.minimum(nearest, dist, out=nearest)
        chosen.append(int(nearest.argmax()))
    return np.asarray(chosen, dtype=np.int64)


def sinkhorn_knopp(scores: np.ndarray, epsilon: float = 0.5, iterations: int = 3) -> np.ndarray:
    """Balanced soft assignment (B, K) of samples to prototypes (SwAV's Sinkhorn-Knopp; rows sum to 1)."""
    logits = scores / epsilon
    q = np.exp(logits - logits.max()).T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def allocate_power(n_central: int, n_peripheral: int, m: int, alpha: float = 0.5) -> tuple[int, int]:
    """Split ``m`` kept samples between the core and the periphery in proportion to ``size ** alpha``.

    alpha < 1 gives the (smaller) periphery more than its share: CheXficient's power budget.
    """
    if m <= 0 or n_central + n_peripheral == 0:
        return 0, 0
    if n_central == 0:
        return 0, min(m, n_peripheral)
    if n_peripheral == 0:
        return min(m, n_central), 0
    wc, ws = n_central ** alpha, n_peripheral ** alpha
    mc = min(int(round(m * wc / (wc + ws))), n_central)
    ms = min(m - mc, n_peripheral)
    if mc + ms < m:  # one side is saturated: the other takes the rest
        mc = min(m - ms, n_central)
    return mc, ms


def water_fill(sizes: np.ndarray, m: int, alpha: float) -> np.ndarray:
    """Integer quotas (<= sizes, summing to min(m, sizes.sum())) proportional to ``sizes ** alpha``.

    alpha = 1 is proportional (stratified random); alpha = 0 gives every cluster the same share, so
    small clusters are kept whole and the largest are thinned the most.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    m = int(min(m, sizes.sum()))
    quota = np.zeros(len(sizes), dtype=np.float64)
    open_ = sizes > 0
    left = float(m)
    while left > 1e-9 and open_.any():
        w = np.where(open_, sizes.astype(np.float64) ** alpha, 0.0)
        share = left * w / w.sum()
        room = sizes - quota
        full = open_ & (share >= room)
        if full.any():
            left -= room[full].sum()
            quota[full] = sizes[full]
            open_ &= ~full
        else:
            quota += share
            left = 0.0
    base = np.floor(quota + 1e-9).astype(np.int64)
    rest = m - base.sum()
    if rest > 0:  # largest remainders, among clusters with room
        frac = np.where(base < sizes, quota - base, -1.0)
        base[np.argsort(-frac, kind="stable")[:rest]] += 1
    return base


def typical_first(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``m`` rows of ``x`` (L2-normalised, (N, D)) with the highest cosine to the rows'
    normalised mean: a cluster's most typical members. Exact ties (identical texts) are broken in
    ``rng``'s random order, so which copy of a repeated text is kept is seeded, not positional."""
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    centre = normalise(x.mean(axis=0, keepdims=True))[0]
    score = np.round(x @ centre, 6)  # (N,); rounded so that identical texts tie exactly
    tiebreak = rng.permutation(len(x))
    return np.lexsort((tiebreak, -score))[:m].astype(np.int64)


def thumbnail_features(images: np.ndarray, side: int = 16) -> np.ndarray:
    """(m, side*side) float32 per-image standardised, L2-normalised block means of (m, S, S) images (S a
    multiple of ``side``): a model-free picture of each image, cheap enough for every row."""
    a = np.asarray(images, dtype=np.float32)
    m, size = len(a), a.shape[-1]
    f = size // side
    t = a[:, :side * f, :side * f].reshape(m, side, f, side, f).mean(axis=(2, 4)).reshape(m, -1)
    return normalise((t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-6))
