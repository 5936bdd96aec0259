"""The prototype curator's per-step selection on torch tensors, on the device of the batch's embeddings.

``PrototypeCurator.select`` runs every training step on the gathered global batch (2048 x 2D at the
``base-gpu`` scale). The numpy version needed the embeddings on the host every step; these functions keep
them where the scoring pass left them (the GPU in a GPU run) and bring back only what the host needs: the
(B,) cluster id and band of each sample (the budget arithmetic and the seeded draws stay on the host, in
the same order as before) and the indices farthest-point sampling picks.

Same selection as the numpy version: the same formulas in the same float32 / float64 precision, ties
broken towards the first index as numpy does; results differ only by float rounding of the reductions
(a different BLAS), which changes a pick only on a near-exact tie (``tests/test_curation_torch_select.py``).

Ranks stay identical: every rank runs these on the same gathered batch, and no function here uses float
atomics (``index_add_`` / ``scatter_add_`` on CUDA sum in a non-deterministic order), so the curator state
is bitwise the same on every rank of one GPU type; per-cluster sums are masked reductions.
"""
from __future__ import annotations

import numpy as np
import torch

from .geometry import farthest_point_from

# (rows, m, start): farthest-point sampling of m of the batch positions ``rows`` from ``rows[start]``
FpsGroup = tuple[np.ndarray, int, int]


def as_tensor(x, device: torch.device | None = None) -> torch.Tensor:
    """A float32 tensor of ``x`` (a tensor stays on its device; numpy becomes a zero-copy CPU view)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.detach()
    if device is not None and t.device != device:
        t = t.to(device)
    return t if t.dtype == torch.float32 else t.float()


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (at least 1e-12): :func:`~.geometry.normalise` on a tensor."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def joint_features(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """``normalise_rows(cat([img, txt], 1))`` in one write of the (B, Di + Dt) result: the row norm is the
    hypotenuse of the halves' norms, and each half is divided straight into its place (no concatenated
    copy to normalise: those memory-bound passes over the batch were a third of the CPU select)."""
    norm = torch.hypot(torch.linalg.vector_norm(img, dim=1), torch.linalg.vector_norm(txt, dim=1))
    norm = norm.clamp_min_(1e-12)[:, None]  # (B, 1)
    out = torch.empty((img.shape[0], img.shape[1] + txt.shape[1]), dtype=img.dtype, device=img.device)
    torch.div(img, norm, out=out[:, :img.shape[1]])
    torch.div(txt, norm, out=out[:, img.shape[1]:])
    return out


def nearest_prototype(feats: torch.Tensor, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance (B,) float32, cluster id (B,) int64) of each unit row of ``feats`` to its nearest unit
    prototype: ``|f - p| = sqrt(2 - 2 f.p)``, one (B, D) x (D, K) product."""
    d = (2.0 - 2.0 * (feats @ protos.T)).clamp_min(0.0).sqrt()
    cid = d.argmin(dim=1)
    return d.gather(1, cid[:, None]).squeeze(1), cid


def cluster_moments(d: torch.Tensor, cid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cluster of ``k``: (count (k,) int64, mean (k,), mean of squares (k,)) of ``d``, float64, as
    masked reductions (deterministic on every device; an empty cluster has mean 0)."""
    onehot = cid[:, None] == torch.arange(k, device=cid.device)  # (B, k)
    dd = d.double()[:, None]
    count = onehot.sum(dim=0)
    n = count.clamp_min(1).double()
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    return count, torch.where(onehot, dd, zero).sum(dim=0) / n, torch.where(onehot, dd * dd, zero).sum(dim=0) / n


def cluster_std(d: torch.Tensor, cid: torch.Tensor, mean: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per-cluster population standard deviation (k,) of ``d`` about ``mean``, two-pass, float64."""
    onehot = cid[:, None] == torch.arange(len(mean), device=cid.device)
    dev = d.double()[:, None] - mean[None, :]
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    return (torch.where(onehot, dev * dev, zero).sum(dim=0) / count.clamp_min(1).double()).sqrt()


def sinkhorn_knopp_torch(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """:func:`~.geometry.sinkhorn_knopp` on a tensor: balanced soft assignment (B, K), rows sum to 1."""
    logits = scores / epsilon
    q = torch.exp(logits - logits.max()).T  # (K, B)
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def farthest_point_groups(x: torch.Tensor, groups: list[FpsGroup], lockstep: bool | None = None) -> list[np.ndarray]:
    """Farthest-point sampling inside each group of rows of ``x`` (B, D); returns, per group, the ``m``
    picked positions into its ``rows`` (the same as ``farthest_point_from(x[rows], m, start)``).

    ``lockstep`` (default: on any device but the CPU) advances every group one pick per step: one batched
    (G, n, D) x (G, D, 1) product per step, ``max(m)`` steps and no host sync until the end, instead of
    ``sum(m)`` dependent small steps (~400 at a batch of 2048, each a few kernel launches and a sync on a
    GPU). On the CPU the groups run one after the other on a zero-copy numpy view of ``x``: each group's
    rows stay in cache across its picks, where lockstep streams every group's rows through memory every
    step (about 7x slower on one core here, on the bands of a 2048 batch), and numpy's per-call overhead
    on these small vectors is below torch's. Both paths give the same picks (tested).
    """
    if not groups:
        return []
    if any(not 0 < m < len(rows) for rows, m, _ in groups):
        raise ValueError("farthest_point_groups: every group needs 0 < m < len(rows)")
    if lockstep is None:
        lockstep = x.device.type != "cpu"
    if not lockstep:
        xn = x.detach().cpu().numpy()  # a view on the CPU
        return [farthest_point_from(xn[rows], m, start) for rows, m, start in groups]
    return _lockstep(x, groups)


def _lockstep(x: torch.Tensor, groups: list[FpsGroup]) -> list[np.ndarray]:
    """Every group advances one pick per step, all of them for ``max(m)`` steps (a group past its ``m``
    keeps computing; its extra picks are cut off at the end): 7 kernels a step, no host sync until then."""
    dev = x.device
    n_max = max(len(rows) for rows, _, _ in groups)
    index = np.zeros((len(groups), n_max), dtype=np.int64)
    valid = np.zeros((len(groups), n_max), dtype=bool)
    for j, (rows, _, _) in enumerate(groups):
        index[j, :len(rows)], valid[j, :len(rows)] = rows, True
    xs = x[torch.from_numpy(index).to(dev)]  # (G, n_max, D); padding repeats row 0 and is never picked
    sq = (xs * xs).sum(dim=2)  # (G, n_max)
    inf = torch.tensor(float("inf"), device=dev)
    nearest = torch.where(torch.from_numpy(valid).to(dev), inf, -inf)  # padding stays at -inf
    cur = torch.tensor([start for _, _, start in groups], dtype=torch.int64, device=dev)
    arange = torch.arange(len(groups), device=dev)
    picks = [cur]
    for _ in range(1, max(m for _, m, _ in groups)):
        # |x|^2 + |c|^2 - 2 x.c for each group's last pick c, as farthest_point_from computes it
        both = sq + sq.gather(1, cur[:, None])
        dist = torch.baddbmm(both[:, :, None], xs, xs[arange, cur][:, :, None], alpha=-2.0).squeeze(2)
        torch.minimum(nearest, dist.clamp_min_(0.0).sqrt_(), out=nearest)
        cur = nearest.argmax(dim=1)
        picks.append(cur)
    host = torch.stack(picks, dim=1).cpu().numpy()  # (G, max m): the one sync
    return [host[j, :m].astype(np.int64) for j, (_, m, _) in enumerate(groups)]
