"""How long a curated run trains: epochs over the kept pairs chosen from a compute budget.

A curated subset trained for the preset's epochs gets a fifth of the optimiser steps of the full-data run it
is compared with, and the frontier of ``benchmarks/compute_frontier.py`` (docs/curation.md) shows what that
costs. ``cxrfm pretrain --budget B --compute-budget C`` therefore trains the kept pairs for the largest number
of epochs whose estimated compute stays within C of what the same preset costs on *all* pairs for its own
epochs (units of :mod:`.accounting`: training forwards and backwards plus the frozen-text caching pass; a
curator's own selection passes come on top and are reported in ``curation.json``).

The default, 0.6, is read off the frontier's *validation* part (docs/curation.md): with tiny-cpu on 1,038
pairs, a `balanced` fifth trained within 30 % of the preset's full-data compute (5 to 14 epochs) stays about
0.1 below all pairs, whatever the epochs; 29 epochs (59 %) is the cheapest measured schedule that comes
within about 0.01 of all pairs there. CheXficient's "under 30 %" is not reached at this scale.
"""
from __future__ import annotations

from .accounting import none_run_accounting

DEFAULT_COMPUTE_BUDGET = 0.6  # see the module docstring: chosen on the frontier's validation part
MAX_SCALE = 20  # never more than 20x the preset's epochs, whatever the budget


def curated_epochs(n: int, budget: float, preset_epochs: int, batch_size: int, n_unique_texts: int,
                   text_cached: bool, text_trainable: bool, compute_budget: float) -> dict:
    """The schedule for a run keeping ``round(budget * n)`` of ``n`` pairs: ``epochs`` (at least 1, at most
    ``MAX_SCALE`` x the preset's) and what it is estimated to cost against a full-data run of the preset
    (``fraction_of_full``), with a sentence saying why (``why``)."""
    if not 0 < compute_budget <= 1:
        from ..errors import ConfigError

        raise ConfigError(f"--compute-budget {compute_budget!r}: give a fraction of the full-data run's compute in "
                          f"(0, 1], e.g. 0.3")
    kept = max(2, int(round(budget * n)))

    def units(rows: int, epochs: int) -> float:
        return none_run_accounting(rows, epochs, batch_size, n_unique_texts, text_cached, text_trainable,
                                   0.0, 0.0).units()

    full = units(n, preset_epochs)
    epochs = 1
    while epochs < MAX_SCALE * preset_epochs and units(kept, epochs + 1) <= compute_budget * full:
        epochs += 1
    frac = units(kept, epochs) / full
    why = (f"{epochs} epochs over the {kept} kept pairs: the most within --compute-budget {compute_budget:g} of the "
           f"preset's {preset_epochs} epochs over all {n} pairs (estimated {frac:.1%} of that run's compute; "
           f"benchmarks/compute_frontier.py, docs/curation.md); give --epochs to choose yourself")
    return {"epochs": int(epochs), "preset_epochs": int(preset_epochs), "compute_budget": float(compute_budget),
            "kept_pairs": kept, "fraction_of_full": float(frac), "full_run_units": float(full), "why": why}
