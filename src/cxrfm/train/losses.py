"""Contrastive image-text losses: symmetric InfoNCE (CLIP, Radford et al. 2021) and the pairwise
sigmoid loss (SigLIP, Zhai et al. 2023).

Both take L2-normalised embeddings (N, D), an optional ``keep`` mask (curation: only kept pairs enter
the loss, as negatives and as positives) and optional ``pair_ids``: pairs with the same id (the same
report text, common with template pseudo-reports) are positives of each other rather than false
negatives (the multi-positive target of UniCL, Yang et al. 2022). For exact duplicates this changes
SigLIP (each pair is its own binary term) but not CLIP, whose softmax rows of identical texts cancel. Under DDP the caller gathers the
embeddings of all ranks first (:func:`cxrfm.train.distributed.gather_with_grad`), so every rank
computes the loss over the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _subset(keep, *tensors):
    if keep is None:
        return tensors
    keep = torch.as_tensor(keep, dtype=torch.bool, device=tensors[0].device)
    return tuple(None if t is None else t[keep] for t in tensors)


def _positives(n: int, pair_ids: torch.Tensor | None, device) -> torch.Tensor:
    if pair_ids is None:
        return torch.eye(n, device=device)  # (N, N)
    ids = pair_ids.to(device)
    return (ids[:, None] == ids[None, :]).float()  # (N, N), diagonal always 1


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              keep=None, pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy over the batch."""
    image_emb, text_emb, pair_ids = _subset(keep, image_emb, text_emb, pair_ids)
    n = image_emb.shape[0]
    logits = logit_scale * image_emb.float() @ text_emb.float().t()  # (N, N)
    pos = _positives(n, pair_ids, logits.device)
    target = pos / pos.sum(1, keepdim=True)  # (N, N) rows sum to 1 (symmetric, so columns too)
    loss_i = torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-target * F.log_softmax(logits.t(), dim=1), dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, keep=None, pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise sigmoid loss: -sum log sigmoid(z_ij * (t x_i.y_j + b)) / N, z = +1 positive, -1 negative."""
    image_emb, text_emb, pair_ids = _subset(keep, image_emb, text_emb, pair_ids)
    n = image_emb.shape[0]
    logits = logit_scale * image_emb.float() @ text_emb.float().t() + logit_bias  # (N, N)
    z = 2 * _positives(n, pair_ids, logits.device) - 1  # (N, N) +1 / -1
    return -F.logsigmoid(z * logits).sum() / n


def contrastive_loss(kind: str, image_emb, text_emb, logit_scale, logit_bias=None, keep=None, pair_ids=None):
    """Dispatch on ``kind`` (``clip`` | ``siglip``), as chosen by ModelConfig.loss."""
    if kind == "clip":
        return clip_loss(image_emb, text_emb, logit_scale, keep=keep, pair_ids=pair_ids)
    if kind == "siglip":
        return siglip_loss(image_emb, text_emb, logit_scale, logit_bias, keep=keep, pair_ids=pair_ids)
    raise ValueError(f"unknown loss {kind!r}")


def local_contrastive_loss(kind: str, img_local: torch.Tensor, txt_local: torch.Tensor, img_all: torch.Tensor,
                           txt_all: torch.Tensor, offset: int, logit_scale, logit_bias=None,
                           pair_ids: torch.Tensor | None = None, world: int = 1) -> torch.Tensor:
    """This rank's share of the global loss (open_clip's ``--local-loss --gather-with-grad``).

    ``img_local``/``txt_local`` (m, D) are this rank's pairs, rows ``offset .. offset + m`` of the gathered
    ``img_all``/``txt_all`` (N, D) (gathered with gradient); ``pair_ids`` (N,) are the global ids. Only the
    (m, N) logits of the local rows are formed, not (N, N). Both losses are sums of per-row terms over N,
    so the local shares add up to the global loss; the share is multiplied by ``world`` because DDP
    averages the ranks' gradients, which makes that average equal the global loss's gradient.
    """
    m, n = img_local.shape[0], img_all.shape[0]
    rows = torch.arange(m, device=img_all.device)
    if pair_ids is None:
        pos = torch.zeros(m, n, device=img_all.device)
        pos[rows, offset + rows] = 1.0  # (m, N)
    else:
        ids = pair_ids.to(img_all.device)
        pos = (ids[offset:offset + m, None] == ids[None, :]).float()  # (m, N), own pair always 1
    if kind == "clip":
        target = pos / pos.sum(1, keepdim=True).clamp_min(1)
        logits_i = logit_scale * img_local.float() @ txt_all.float().t()  # (m, N)
        logits_t = logit_scale * txt_local.float() @ img_all.float().t()  # (m, N)
        total = (torch.sum(-target * F.log_softmax(logits_i, dim=1)) +
                 torch.sum(-target * F.log_softmax(logits_t, dim=1)))
        return world * 0.5 * total / n
    if kind == "siglip":
        logits = logit_scale * img_local.float() @ txt_all.float().t() + logit_bias  # (m, N)
        return world * -F.logsigmoid((2 * pos - 1) * logits).sum() / n
    raise ValueError(f"unknown loss {kind!r}")
