"""RunDir: the one owner of a run folder's layout.

A run folder is what ``cxrfm pretrain`` writes and everything after it reads (``eval``, ``serve``,
``index``, the benchmarks). Only this module knows the file names; everything else asks a
:class:`RunDir` for a path, so the layout can change in one place::

    RUN/
      config.json          model + train config and the data identity (written first)
      model.safetensors    the weights (safetensors only: never a pickle)
      curation.json        what the curator kept, and the compute it spent
      metrics.jsonl        one JSON line per logged training step
      state/               resumable trainer state (trainer.json + tensors)
      heads/               heads trained after pretraining (``eval`` fits them; ``serve`` uses them)
      concepts/            sparse-autoencoder concepts (``cxrfm concepts train``)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunDirError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CURATION = "curation.json"
METRICS = "metrics.jsonl"
STATE_DIR = "state"
TRAINER_JSON = "trainer.json"
HEADS_DIR = "heads"
CONCEPTS_DIR = "concepts"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder; ``RunDir(path)`` never touches the disk until asked."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    # -- the files
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def curation(self) -> Path:
        return self.path / CURATION

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def trainer_state(self) -> Path:
        return self.path / STATE_DIR / TRAINER_JSON

    @property
    def heads_dir(self) -> Path:
        return self.path / HEADS_DIR

    def head(self, name: str) -> Path:
        """The folder of one trained head (e.g. ``findings``)."""
        return self.path / HEADS_DIR / name

    @property
    def concepts_dir(self) -> Path:
        return self.path / CONCEPTS_DIR

    # -- reading
    def exists(self) -> bool:
        return self.config.is_file() and self.weights.is_file()

    def require(self) -> "RunDir":
        """Raise a RunDirError naming what is missing unless the folder holds a loadable model."""
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run folder; pass the --out folder of `cxrfm pretrain`")
        missing = [p.name for p in (self.config, self.weights) if not p.is_file()]
        if missing:
            raise RunDirError(f"{self.path}: not a finished run folder (missing {', '.join(missing)}); "
                              "pass the --out folder of a `cxrfm pretrain` run")
        return self

    def read_json(self, path: Path) -> Any | None:
        """A JSON file of this run, or None when it is absent; a corrupt file is a RunDirError."""
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path}: unreadable JSON ({e}); re-run the step that wrote it") from e

    def read_config(self) -> dict | None:
        return self.read_json(self.config)

    def read_curation(self) -> dict | None:
        return self.read_json(self.curation)

    def read_trainer_state(self) -> dict | None:
        return self.read_json(self.trainer_state)

    def is_finished(self) -> bool:
        """True when the trainer recorded that it ran to its last step."""
        state = self.read_trainer_state() or {}
        return bool(state.get("trainer", {}).get("done", False))
