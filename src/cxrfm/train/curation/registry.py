"""The curator registry (timm's ``@register_model`` shape): ``--curate NAME`` looks here, once.

A new curator is one module with a :class:`~cxrfm.train.curation.base.Curator` subclass decorated with
:func:`register_curator`, imported by this package's ``__init__``; ``tests/test_curator_contract.py``
then checks it without further wiring.
"""
from __future__ import annotations

from ...errors import ConfigError
from .base import Curator, CurationContext

# name -> class; a plain dict so that tests and benchmarks may register a probe curator for one process
CURATORS: dict[str, type[Curator]] = {"none": Curator}


def register_curator(cls: type[Curator]) -> type[Curator]:
    """Class decorator: make ``cls`` available as ``--curate cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Curator)):
        raise TypeError(f"register_curator: {cls!r} is not a Curator subclass")
    if cls.name in CURATORS and CURATORS[cls.name] is not cls:
        raise ValueError(f"curator name {cls.name!r} is taken by {CURATORS[cls.name].__name__}")
    CURATORS[cls.name] = cls
    return cls


def list_curators() -> list[str]:
    """Registered curator names, sorted."""
    return sorted(CURATORS)


def curator_class(name: str) -> type[Curator]:
    """The class registered as ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in CURATORS:
        raise ConfigError(f"--curate {name!r}: unknown curator; choose one of {', '.join(list_curators())}")
    return CURATORS[name]


def build_curator(name: str, n: int | None = None, budget: float = 1.0, seed: int = 0, *,
                  context: CurationContext | None = None, **options) -> Curator:
    """The curator named ``name`` with its ``options``.

    Give either a ready ``context`` (what the loop does) or ``n``/``budget``/``seed`` (plus optional
    ``texts`` / ``text_features`` / ``thumbnails``), from which the context is made.
    """
    cls = curator_class(name)
    if context is None:
        if n is None:
            raise TypeError("build_curator: give context= or n=")
        context = CurationContext(n=n, budget=budget, seed=seed, texts=options.pop("texts", None),
                                  text_features=options.pop("text_features", None),
                                  thumbnails=options.pop("thumbnails", None))
    return cls(context, **options)
