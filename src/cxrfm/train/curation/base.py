"""The curator interface and the one context object every curator is built from.

The training loop (:mod:`cxrfm.train.loop`) drives a :class:`Curator` like this, every epoch::

    curator.begin_epoch(epoch, embed)          # may embed rows (no grad) to cluster / select;
                                               # embed(indices) -> (img (n,D), txt (n,D)) float32,
                                               # L2-normalised numpy; the loop counts those passes
    rows = curator.epoch_rows(epoch)           # np.ndarray of row indices to iterate (loop shuffles)
    for batch in rows:
        if curator.selects(epoch):             # only then does the loop pay a scoring pass
            keep = select_mask(curator, epoch, idx, img, txt)   # bool (B,) numpy: which samples get a loss
    curator.end_epoch(epoch)

:func:`select_mask` is the loops' one call of ``select``. ``img``/``txt`` are the scoring pass's (B, D)
L2-normalised float32 embeddings: torch tensors on the run's device (a GPU in a GPU run) for a curator
whose ``accepts_tensors`` is True, host numpy arrays otherwise (the loop then copies them to the host,
once). ``select`` returns (B,) bools as numpy or as a bool tensor on any device; the loop takes both.
``select`` may return an all-False mask (nothing of that batch is worth a step): the loop then skips
the backward pass for that batch. ``state_dict()`` / ``load_state_dict()`` must round-trip through
JSON + numpy arrays (arrays only as top-level values, saved with safetensors) so that ``--resume``
continues to the same result; ``summary()`` goes into ``curation.json``. All randomness comes from a
``numpy.random.Generator`` seeded by the run seed.

``embed`` is an argument of ``begin_epoch`` rather than a field of the context because what it returns
depends on the model *at that epoch*; everything fixed for the whole run is in :class:`CurationContext`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import ConfigError

EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# Rows per call to ``embed``: bounds the memory of one selection pass on a laptop.
EMBED_CHUNK = 256


def check_budget(budget) -> float:
    """The one budget check: a fraction of pairs in (0, 1] (``pretrain``, ``build_curator`` and the
    CLI all end here, through :class:`CurationContext`)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"--budget {budget}: the target fraction of pairs must be in (0, 1], e.g. 0.2")
    return float(budget)


@dataclass(frozen=True)
class CurationContext:
    """What a curator knows about the run, declared once (the loop fills it; tests build it by hand).

    ``texts`` are the training rows' texts (reports or pseudo-reports), row-aligned; ``text_features``,
    when the run's text tower is the frozen bundled MiniLM, returns the loop's cached (and counted)
    (n, H) features of those texts, so that a curator clustering by text pays no second, uncounted pass.
    ``thumbnails`` returns (n, 256) 16x16 thumbnails of the rows' images (:func:`.geometry.thumbnail_features`)
    from the loop's decoded-image cache: no tower pass (None where there is no cache, e.g. streamed shards).
    """

    n: int
    budget: float = 1.0
    seed: int = 0
    texts: Sequence[str] | None = None
    text_features: Callable[[], np.ndarray] | None = None
    thumbnails: Callable[[], np.ndarray] | None = None

    def __post_init__(self):
        object.__setattr__(self, "budget", check_budget(self.budget))
        if int(self.n) < 1:
            raise ConfigError(f"curator got {self.n} training rows; the manifest part to pretrain on is empty")
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "seed", int(self.seed))
        if self.texts is not None and len(self.texts) != self.n:
            raise ConfigError(f"texts: {len(self.texts)} strings for {self.n} rows; pass one text per training row")

    @property
    def target(self) -> int:
        """Pairs to keep: ``round(budget * n)``, at least 1."""
        return target_count(self.n, self.budget)


class Curator:
    """Keeps every pair (the ``none`` control). Subclasses override what they need.

    A subclass that overrides ``select`` must also declare ``selects`` (when ``select`` needs the
    batch's embeddings): the loop asks ``selects`` before paying a scoring pass, and a forgotten
    declaration would silently never call ``select``, so defining the class fails instead.

    ``accepts_tensors``: whether ``select`` takes ``img``/``txt`` as torch tensors on any device (and
    computes there, as ``prototype`` does) rather than host numpy arrays. This class's ``select`` never
    looks at them, so it is True here; a subclass that overrides ``select`` gets False (the numpy
    contract) unless it declares ``accepts_tensors = True`` itself, in the class that overrides it.
    """

    name = "none"
    accepts_tensors = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "select" in cls.__dict__ and not any("selects" in k.__dict__ for k in cls.__mro__[:-1]
                                                  if k is not Curator):
            raise TypeError(f"{cls.__name__} overrides select() but not selects(epoch); declare in which "
                            f"epochs select() looks at embeddings (return True to always score)")
        if "select" in cls.__dict__ and "accepts_tensors" not in cls.__dict__:
            cls.accepts_tensors = False  # an inherited True was about another select()
        if not isinstance(cls.accepts_tensors, bool):
            raise TypeError(f"{cls.__name__}.accepts_tensors = {cls.accepts_tensors!r}: declare True (select() "
                            f"takes torch tensors on any device) or False (host numpy arrays)")

    def __init__(self, context: CurationContext, **options):
        if not isinstance(context, CurationContext):
            raise TypeError(f"{type(self).__name__}: expected a CurationContext, got {type(context).__name__}; "
                            f"build curators with cxrfm.train.curation.build_curator")
        if options:
            raise ConfigError(
                f"--curate {self.name}: unknown option(s) {', '.join(sorted(options))}; "
                f"see cxrfm.train.curation.{type(self).__name__} for the options it takes")
        self.context = context
        self.n, self.budget, self.seed = context.n, context.budget, context.seed
        self.rng = np.random.default_rng(self.seed)

    def begin_epoch(self, epoch: int, embed: EmbedFn) -> None:
        """Called before each epoch; may call ``embed`` on row indices (counted as selection passes)."""

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Row indices to iterate this epoch."""
        return np.arange(self.n)

    def selects(self, epoch: int) -> bool:
        """Whether ``select`` looks at the batch's embeddings in ``epoch``; False spares the loop the
        scoring pass and trains on every pair of the batch."""
        return False

    def select(self, epoch: int, idx: np.ndarray, img, txt):
        """Which samples of a batch get a loss: (B,) bools, numpy or a bool tensor on any device.
        ``img``/``txt`` (B, D) are detached and L2-normalised: host numpy arrays, or torch tensors on the
        run's device when the class declares ``accepts_tensors`` (it should then compute on that device,
        as ``prototype`` does, rather than copy them to the host)."""
        return np.ones(len(idx), dtype=bool)

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch."""

    def kept_rows(self) -> np.ndarray:
        """The rows the curator keeps (for curation.json); all rows for ``none``."""
        return np.arange(self.n)

    def state_dict(self) -> dict:
        return {"name": self.name, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name", self.name) != self.name:
            raise ConfigError(
                f"resume: the run was curated with {state.get('name')!r}, not {self.name!r}; "
                f"resume with --curate {state.get('name')}")
        self.rng.bit_generator.state = state["rng"]

    def summary(self) -> dict:
        kept = self.kept_rows()
        return {"curator": self.name, "budget": self.budget, "n_kept": int(len(kept)), "n_total": self.n,
                "achieved_fraction": round(len(kept) / self.n, 6)}


def host_array(x) -> np.ndarray:
    """``x`` as a C-contiguous host numpy array (a tensor on any device is detached and copied once)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x)


def select_mask(curator: Curator, epoch: int, idx: np.ndarray, img, txt) -> np.ndarray:
    """The training loops' one call of ``curator.select``: (B,) bool numpy, one flag per row of ``idx``.

    ``img``/``txt`` go in as given (tensors on the run's device) when the curator ``accepts_tensors``, as
    host numpy arrays otherwise; the flags may come back as numpy or as a bool tensor on any device.
    """
    if not curator.accepts_tensors:
        img, txt = host_array(img), host_array(txt)
    keep = curator.select(epoch, idx, img, txt)
    if isinstance(keep, torch.Tensor):
        keep = keep.detach().cpu().numpy()
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    if keep.shape != (len(idx),):
        raise ConfigError(f"--curate {curator.name}: select() returned {keep.shape[0]} flags for a batch of "
                          f"{len(idx)}; it must return one bool per sample")
    return keep


def target_count(n: int, budget: float) -> int:
    return int(min(n, max(1, round(budget * n))))


def embed_rows(embed: EmbedFn, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``embed`` over ``rows`` in chunks of :data:`EMBED_CHUNK`; (img, txt) float32, row-aligned."""
    imgs, txts = [], []
    for start in range(0, len(rows), EMBED_CHUNK):
        img, txt = embed(rows[start:start + EMBED_CHUNK])
        imgs.append(np.asarray(img, dtype=np.float32))
        txts.append(np.asarray(txt, dtype=np.float32))
    return np.concatenate(imgs), np.concatenate(txts)

