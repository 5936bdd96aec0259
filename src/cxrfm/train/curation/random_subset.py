"""``random``: a uniformly random, seeded subset of ``round(budget * n)`` pairs, fixed from epoch 0 (the
control every curator must beat at the same budget)."""
from __future__ import annotations

import numpy as np

from .base import Curator, CurationContext
from .registry import register_curator


@register_curator
class RandomCurator(Curator):
    """A uniformly random subset of ``round(budget * n)`` pairs, drawn once from the seed (the control)."""

    name = "random"

    def __init__(self, context: CurationContext, **options):
        super().__init__(context, **options)
        self._kept = np.sort(self.rng.choice(self.n, size=context.target, replace=False))

    def epoch_rows(self, epoch: int) -> np.ndarray:
        return self._kept.copy()

    def kept_rows(self) -> np.ndarray:
        return self._kept.copy()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kept": self._kept.astype(np.int64)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._kept = np.asarray(state["kept"], dtype=np.int64)
