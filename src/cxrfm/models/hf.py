"""Two context managers every transformers-backed tower build needs: a seeded draw and a quiet log."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded_init(seed: int):
    """Seed torch's global RNG inside ``fork_rng``: transformers initialises modules from the global RNG
    and takes no generator, so this is the only way to make initial weights a function of ``seed``; the
    caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@contextmanager
def quiet_transformers():
    """Silence transformers' per-load weight report and progress bar (restored afterwards).

    The report lists keys we drop on purpose (BERT's unused pooler); the bar is noise in a training log.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
