"""TANL: test-time activated negative labels for the OOD gate's text component.

Zhang et al., "Activation Matters: Test-time Activated Negative Labels for OOD Detection with
Vision-Language Models", CVPR 2026, arXiv:2603.25250; reference code
``openood/postprocessors/activated_neg_postprocessor_official.py`` of github.com/YBZh/OpenOOD-VLM.
Two bounded FIFO queues keep the label activations (softmax share of every negative label) of test
images the score itself calls confidently CXR / confidently not CXR; the negative labels whose
activation on the second queue most exceeds that on the first are the ones used, and the score is
TANL's activation-aware score. See :class:`ActivatedNegativeLabels` for what is followed and where
this module departs from the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

def label_activations(image_emb: torch.Tensor, pos_text: torch.Tensor, neg_text: torch.Tensor,
                      tau: float = 0.01) -> torch.Tensor:
    """TANL's per-image label activation (N, Q): the softmax share of each negative label among all
    positive and negative labels (the summand of TANL's ``Act(X, y~_i)``)."""
    sims = image_emb.double() @ torch.cat([pos_text, neg_text]).double().T / tau  # (N, P + Q)
    return torch.softmax(sims, dim=1)[:, pos_text.shape[0]:].float()


def activation_aware_scores(image_emb: torch.Tensor, pos_text: torch.Tensor, neg_ranked: torch.Tensor,
                            tau: float = 0.01) -> torch.Tensor:
    """log of TANL's activation-aware score S_aa (N,), <= 0.

    ``S_aa = 1/M sum_{m=1..M} sum_i e^{v t_i} / (sum_j e^{v t_j} + sum_{j<=m} e^{v t~_j})`` with the M
    negative labels ``neg_ranked`` sorted by activation, strongest first: a strongly activated label
    sits in every prefix's denominator, a weak one only in the last few, so the score weighs negative
    labels by their activation and depends little on M (TANL, step 1 of the reference code)."""
    pos = image_emb.double() @ pos_text.double().T / tau  # (N, P)
    neg = image_emb.double() @ neg_ranked.double().T / tau  # (N, M)
    lse_pos = pos.logsumexp(dim=1, keepdim=True)  # (N, 1)
    log_share = lse_pos - torch.logaddexp(lse_pos, torch.logcumsumexp(neg, dim=1))  # (N, M): log S_m
    return (log_share.logsumexp(dim=1) - np.log(neg_ranked.shape[0])).float()


def otsu_threshold(scores: torch.Tensor) -> float:
    """The threshold splitting ``scores`` into two groups of least within-group variance (Otsu), which
    TANL's reference code uses to tell confident ID from confident OOD test images."""
    from skimage.filters import threshold_otsu

    v = scores.double().numpy()
    return float(v[0]) if np.ptp(v) == 0 else float(threshold_otsu(v))


@dataclass(frozen=True)
class TestTimeSettings:
    """Hyper-parameters of the TANL update. Where the authors' ``configs/postprocessors/tanl.yml`` sets
    one, its value is the default (memory length, gap, prefix step 1); the rest are said below."""

    __test__ = False  # a settings record, not a pytest test class

    n_selected: int = 64  # M: activated negative labels in the score, of the 305 in prompts/ood_labels.json
    memory_size: int = 1000  # L: rows kept in each FIFO queue of activations (tanl.yml `memleng`)
    score_memory: int = 20000  # past scores kept for the Otsu threshold (reference code's score queue)
    alpha: float = 0.5  # weight of the queues against the current batch (the paper's batch-adaptive variant)
    gap: float = 0.0  # g: margin around the threshold inside which an image updates no queue (tanl.yml)
    n_noise: int = 32  # Gaussian-noise images that seed the not-CXR queue (TANL's initialisation)
    batch_size: int = 32  # images per update when ood_task streams its test images
    seed: int = 0  # of the noise images


class ActivatedNegativeLabels:
    """TANL's state for one gate: which negative labels are activated by this test stream.

    Followed from the paper and its reference code: label activations of confidently-CXR and
    confidently-not-CXR test images go into two FIFO queues of ``memory_size`` rows; a label's
    differential activation is its mean activation on the second minus on the first; the
    ``n_selected`` labels of highest differential activation, strongest first, feed the
    activation-aware score :func:`activation_aware_scores`. Confidence: each batch's scores join a
    bounded score memory whose Otsu threshold ``th`` splits it; an image is confidently CXR above
    ``th + gap (1 - th)`` and confidently not CXR below ``th - gap th``. Batch-adaptive variant: the
    selection for a batch interpolates the queue means with that batch's confident images
    (``alpha`` on the queues), the batch is scored with it, then the queues are updated. The
    not-CXR queue starts with the activations of Gaussian-noise images, the CXR queue with those of
    the positive prompts' text embeddings, as in TANL.

    Departures: the CXR queue also starts with the gate's fit images (known chest radiographs, which
    TANL does not have; they spare the text-embedding proxy its modality gap). The score handed to
    the gate is log S_aa standardised on the fit CXRs scored with the same labels (:meth:`score`), so
    the gate's fitted threshold keeps its TPR while the labels change (without it the TPR at the gate
    fell to 0.40 on the tiny run); the Otsu threshold is taken on S_aa itself, as in TANL.
    """

    def __init__(self, pos_text: torch.Tensor, neg_text: torch.Tensor, tau: float, settings: TestTimeSettings,
                 id_emb: torch.Tensor, noise_emb: torch.Tensor):
        if settings.n_selected < 1 or settings.memory_size < 1:
            raise ConfigError(f"TestTimeSettings: n_selected ({settings.n_selected}) and memory_size "
                              f"({settings.memory_size}) must be >= 1")
        self.pos_text, self.neg_text, self.tau, self.settings = pos_text, neg_text, tau, settings
        self.n_selected = min(settings.n_selected, neg_text.shape[0])
        self.id_emb = id_emb.float()  # (M_fit, D) the gate's fit CXRs
        seed_id = torch.cat([pos_text, self.id_emb])  # prompts (TANL) + fit CXRs (here)
        self.id_queue = self._push(torch.zeros((0, neg_text.shape[0])), self.activations(seed_id))  # (<=L, Q)
        self.ood_queue = self._push(torch.zeros((0, neg_text.shape[0])), self.activations(noise_emb))  # (<=L, Q)
        ranked = self.ranked_labels()
        seed_scores = torch.cat([self.raw_score(seed_id, ranked), self.raw_score(noise_emb, ranked)])
        self.score_queue = seed_scores.exp().double()[-settings.score_memory:]
        self.n_updates = 0

    def activations(self, emb: torch.Tensor) -> torch.Tensor:
        return label_activations(emb, self.pos_text, self.neg_text, self.tau)

    def _push(self, queue: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([queue, rows])[-self.settings.memory_size:]

    def ranked_labels(self, act_id: torch.Tensor | None = None,
                      act_ood: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (M,) of the most activated negative labels, strongest first; ``act_*``: activations
        (B, Q) of the current batch's confident images (the batch-adaptive variant)."""
        a = self.settings.alpha
        mean_id, mean_ood = self.id_queue.mean(0), self.ood_queue.mean(0)  # (Q,)
        if act_id is not None and len(act_id):
            mean_id = a * mean_id + (1 - a) * act_id.mean(0)
        if act_ood is not None and len(act_ood):
            mean_ood = a * mean_ood + (1 - a) * act_ood.mean(0)
        order = torch.argsort(mean_ood - mean_id, descending=True, stable=True)
        return order[: self.n_selected]

    def raw_score(self, emb: torch.Tensor, ranked: torch.Tensor | None = None) -> torch.Tensor:
        """log S_aa (N,) with the labels the queues rank highest now (or ``ranked``); no update."""
        ranked = self.ranked_labels() if ranked is None else ranked
        return activation_aware_scores(emb, self.pos_text, self.neg_text[ranked], self.tau)

    def score(self, emb: torch.Tensor, ranked: torch.Tensor | None = None) -> torch.Tensor:
        """log S_aa (N,) standardised on the fit CXRs scored with the same labels; no update.

        The labels change from batch to batch, and so does the scale of log S_aa; measured against
        the fit CXRs under the same labels, the gate's threshold keeps its true-positive rate."""
        ranked = self.ranked_labels() if ranked is None else ranked
        ref = self.raw_score(self.id_emb, ranked)  # (M_fit,)
        return (self.raw_score(emb, ranked) - ref.mean()) / ref.std().clamp_min(1e-6)

    def score_and_update(self, emb: torch.Tensor) -> torch.Tensor:
        """Score one test batch (N, D) the TANL way and fold its confident images into the queues."""
        s = self.settings
        emb = emb.float()
        share = self.raw_score(emb).exp().double()  # (N,) S_aa with the history's selection
        self.score_queue = torch.cat([self.score_queue, share])[-s.score_memory:]
        th = otsu_threshold(self.score_queue)
        is_id, is_ood = share > th + s.gap * (1 - th), share < th - s.gap * th  # (N,), (N,)
        act = self.activations(emb)  # (N, Q)
        out = self.score(emb, self.ranked_labels(act[is_id], act[is_ood]))
        self.id_queue = self._push(self.id_queue, act[is_id])
        self.ood_queue = self._push(self.ood_queue, act[is_ood])
        self.n_updates += 1
        return out

    def memory_rows(self) -> dict[str, int]:
        return {"id": len(self.id_queue), "ood": len(self.ood_queue), "scores": len(self.score_queue)}


def noise_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) Gaussian-noise images in [0, 1] (mean 0.5, sd 0.25), drawn from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return (0.5 + 0.25 * torch.randn((n, 1, size, size), generator=g)).clamp(0.0, 1.0)


