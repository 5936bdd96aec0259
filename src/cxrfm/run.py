"""RunDir: the one owner of a run folder's layout.

A run folder is what ``cxrfm pretrain`` writes and everything after it reads (``eval``, ``serve``,
``index``, the benchmarks). Only this module knows the file names; everything else asks a
:class:`RunDir` for a path, so the layout can change in one place::

    RUN/
      config.json          model + train config and the data identity (written first)
      model.safetensors    the weights (safetensors only: never a pickle)
      curation.json        what the curator kept, and the compute it spent
      metrics.jsonl        one JSON line per logged training step
      status.json          step, total_steps, finished, weights_sha256 (what the weights on disk are)
      training_data.json   the data the run trained on: manifest, content hash, patient ids
      tokenizer/           a trainable checkpoint text tower's tokenizer
      state/               resumable trainer state (trainer.json, the commit point, + <kind>-<step> tensors)
      heads/               heads trained after pretraining (``eval`` fits them; ``serve`` uses them)
      concepts/            sparse-autoencoder concepts (``cxrfm concepts train``)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunDirError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CURATION = "curation.json"
METRICS = "metrics.jsonl"
STATUS = "status.json"
TRAINING_DATA = "training_data.json"
TOKENIZER_DIR = "tokenizer"
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

    def state_file(self, kind: str, step: int) -> Path:
        """One checkpoint tensor file (``kind`` = model, optimizer, curator) of ``step``."""
        return self.path / STATE_DIR / f"{kind}-{int(step)}.safetensors"

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def training_data_file(self) -> Path:
        return self.path / TRAINING_DATA

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

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
            raise RunDirError(f"{self.path}: no model in this folder (missing {', '.join(missing)}); train one "
                              f"with `cxrfm pretrain --out {self.path}` or pass the --out folder of a finished run")
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
        return self.status()["finished"] is True

    # -- what the run is
    def status(self, verify: bool = False) -> dict:
        """``{step, total_steps, finished, weights_sha256, error}`` of the weights in this folder.

        ``finished`` is True only for a run that reached its last step, False for one that stopped
        (SIGTERM, ``max_steps``, a kill, a non-finite loss: ``error`` says which when known), and None
        when the folder holds no training record (weights saved outside ``cxrfm pretrain``). While a
        run is unfinished ``total_steps`` is an estimate (a curator may shrink later epochs). The
        checkpoint's ``trainer.json`` is the commit point, so its step and flag win over ``status.json``.
        With ``verify=True`` the weights file is hashed and ``weights_match`` says whether it is the
        recorded one (False: the file changed after the run wrote it).
        """
        out = {"step": None, "total_steps": None, "finished": None, "weights_sha256": None, "error": None}
        out.update({k: v for k, v in (self.read_json(self.status_file) or {}).items() if k in out})
        state = self.read_trainer_state()
        if state is not None:
            trainer = state.get("trainer", {})
            out["step"] = trainer.get("step", out["step"])
            out["finished"] = bool(trainer.get("done", False))
            out["weights_sha256"] = state.get("weights_sha256", out["weights_sha256"])
            out["total_steps"] = state.get("total_steps", out["total_steps"])
        if verify:
            actual = self.weights_sha256() if self.weights.is_file() else None
            out["weights_match"] = None if out["weights_sha256"] is None else actual == out["weights_sha256"]
        return out

    def weights_sha256(self) -> str:
        """sha256 of ``model.safetensors`` as it is on disk now."""
        return sha256_file(self.weights)

    def write_status(self, **fields) -> Path:
        """Merge ``fields`` into ``status.json`` (atomically); the trainer calls this at every checkpoint."""
        from .atomic import atomic_path

        status = {**(self.read_json(self.status_file) or {}), **fields}
        with atomic_path(self.status_file) as tmp:
            Path(tmp).write_text(json.dumps(status, indent=1) + "\n", encoding="utf-8")
        return self.status_file

    def write_training_data(self, manifest: str | Path | None, data_hash: str, row_ids: list[str],
                            patient_ids: list[str]) -> Path:
        """Record which data the run trains on: the manifest, its content hash and every patient id."""
        from .atomic import atomic_path

        patients = sorted({str(p) for p in patient_ids})
        info = {"manifest": None if manifest is None else str(manifest), "data_hash": data_hash,
                "n_rows": len(row_ids), "n_patients": len(patients),
                "patients_sha256": hashlib.sha256("\n".join(patients).encode()).hexdigest(),
                "patient_ids": patients}
        with atomic_path(self.training_data_file) as tmp:
            Path(tmp).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        return self.training_data_file

    def training_data(self) -> dict | None:
        """``{manifest, data_hash, n_rows, n_patients, patients_sha256, patient_ids}``, or None for a
        run written before this was recorded."""
        return self.read_json(self.training_data_file)

    def training_patients(self) -> frozenset[str] | None:
        """The patient ids of the rows the run was offered for training (None when not recorded)."""
        info = self.training_data()
        return None if info is None else frozenset(str(p) for p in info.get("patient_ids", []))

    def shared_patients(self, patient_ids) -> list[str]:
        """The ids among ``patient_ids`` that the run also trained on, sorted (empty when not recorded):
        an evaluation on them measures memory, not generalisation."""
        train = self.training_patients()
        if not train:
            return []
        return sorted({str(p) for p in patient_ids} & train)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
