"""Online data curation during pretraining, behind one interface (``--curate``).

One curator a module, registered by name (:mod:`.registry`); the interface and its context in
:mod:`.base`; the geometry they share in :mod:`.geometry`; the per-step selection on torch tensors (on
the embeddings' device) in :mod:`.torch_ops`.

* ``none`` -- every pair, every epoch (the full-data control; :class:`Curator` itself).
* ``random`` -- a uniformly random, seeded subset of ``round(budget * n)`` pairs (:mod:`.random_subset`).
* ``prototype`` -- CheXficient's prototype-driven online selection (:mod:`.prototype`).
* ``balanced`` (the default) -- text-clustered, cluster-balanced, typical-first (:mod:`.balanced`).
"""
from __future__ import annotations

from .base import (EMBED_CHUNK, CurationContext, Curator, EmbedFn, check_budget, embed_rows, host_array, select_mask,
                   target_count)
from .geometry import (allocate_power, farthest_point_sampling, kmeans_centroids, kmeans_plus_plus_labels,
                       normalise, sinkhorn_knopp, thumbnail_features, typical_first, water_fill)
from .registry import CURATORS, build_curator, curator_class, list_curators, register_curator
# importing the modules registers their curators, in this order
from .random_subset import RandomCurator  # noqa: E402
from .prototype import PrototypeCurator  # noqa: E402
from .balanced import WITHIN, BalancedCurator, embed_texts_minilm  # noqa: E402

__all__ = ["CURATORS", "EMBED_CHUNK", "WITHIN", "BalancedCurator", "CurationContext", "Curator", "EmbedFn",
           "PrototypeCurator", "RandomCurator", "allocate_power", "build_curator", "check_budget",
           "curator_class", "embed_rows", "embed_texts_minilm", "farthest_point_sampling", "host_array",
           "kmeans_centroids", "kmeans_plus_plus_labels", "list_curators", "normalise", "register_curator",
           "select_mask", "sinkhorn_knopp", "target_count", "thumbnail_features", "typical_first", "water_fill"]
