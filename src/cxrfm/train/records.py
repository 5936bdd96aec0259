"""What a pretraining run writes about itself besides the weights: metrics.jsonl and curation.json.

``metrics.jsonl`` gets one line per ``log_every`` steps and one per epoch; a resumed run first drops the
lines written after its checkpoint, so a run killed and resumed any number of times ends with the same
lines as an uninterrupted one. ``curation.json`` states what the curator kept and the compute spent,
against a ``none`` run of the same setup (:mod:`.accounting`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..run import RunDir
from .accounting import Accounting, none_run_accounting, summarize
from .checkpoint import normalise, split_arrays, write_json

CURATION_NOTES = ("data_fraction = pairs the curator kept / training pairs available; compute_fraction = "
                  "this run's compute units / those of a `none` run of the same epochs on the same data")


def new_epoch_stats() -> dict:
    return {"loss_sum": 0.0, "steps": 0, "seen": 0, "kept": 0, "skipped": 0}


class MetricsLog:
    """``metrics.jsonl`` of a run (written by the main rank only), with the step-window averages."""

    def __init__(self, run: RunDir, is_main: bool):
        self.run, self.is_main = run, is_main
        self.window = self._empty_window()

    @staticmethod
    def _empty_window() -> dict:
        return {"loss": 0.0, "steps": 0, "kept": 0, "t0": time.perf_counter()}

    def start_epoch(self) -> None:
        self.window = self._empty_window()

    def append(self, line: dict) -> None:
        if self.is_main:
            with open(self.run.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def trim(self, step: int, epoch: int, has_state: bool) -> None:
        """On resume, drop lines written after the checkpoint (they will be written again)."""
        path = self.run.metrics
        if not self.is_main or not path.exists():
            return
        if not has_state:
            path.unlink()
            return
        keep = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if line.get("step", 0) <= step and (line.get("type") != "epoch" or line["epoch"] < epoch):
                keep.append(raw)
        path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def record_step(self, res: dict, stats: dict, *, step: int, epoch: int, log_every: int, logit_scale: float,
                    bar) -> None:
        """Add one step's result to the epoch ``stats`` and the window; every ``log_every`` steps, a line."""
        window = self.window
        stats["seen"] += res["seen"]
        stats["kept"] += res["kept"]
        if res["loss"] is None:
            stats["skipped"] += 1
        else:
            stats["loss_sum"] += res["loss"]
            stats["steps"] += 1
            window["loss"] += res["loss"]
            window["steps"] += 1
        window["kept"] += res["kept"]
        bar.update(1)
        if step % log_every == 0:
            dt = max(time.perf_counter() - window["t0"], 1e-9)
            loss = window["loss"] / window["steps"] if window["steps"] else None
            self.append({"type": "step", "step": step, "epoch": epoch, "loss": loss, "lr": res["lr"],
                         "logit_scale": logit_scale, "kept": window["kept"], "pairs_per_s": window["kept"] / dt})
            bar.set_postfix(loss=f"{loss:.3f}" if loss is not None else "-", pairs_s=f"{window['kept'] / dt:.0f}")
            self.window = self._empty_window()

    def record_epoch(self, stats: dict, *, step: int, epoch: int, rows: int, logit_scale: float,
                     units: float) -> None:
        self.append({"type": "epoch", "step": step, "epoch": epoch,
                     "loss": stats["loss_sum"] / stats["steps"] if stats["steps"] else None, "steps": stats["steps"],
                     "skipped_batches": stats["skipped"], "rows": rows, "seen": stats["seen"],
                     "kept": stats["kept"], "logit_scale": logit_scale, "compute_units": units})


def write_curation(run: RunDir, *, curator, acc: Accounting, ids: list[str], n_without_text: int, curate: str,
                   budget: float, seed: int, epochs: int, batch_size: int, n_unique_texts: int,
                   text_cached: bool, text_trainable: bool, schedule: dict | None = None) -> Path:
    """``curation.json``: kept ids, data and compute fractions against a ``none`` run, the curator's summary;
    with a ``schedule`` (epochs chosen from a compute budget, :mod:`.schedule`), it and this run's compute
    against the preset's full-data run (``compute_fraction_of_full_preset``)."""
    n = len(ids)
    kept = np.asarray(curator.kept_rows(), dtype=np.int64)
    ref = none_run_accounting(n, epochs, batch_size, n_unique_texts, text_cached=text_cached,
                              text_trainable=text_trainable, image_flops=acc.image_flops_per_sample,
                              text_flops=acc.text_flops_per_sample)
    info = {
        "curate": curate, "budget": budget, "seed": seed, "epochs": epochs,
        "n_available": n, "n_kept": int(len(kept)), "n_without_text": n_without_text,
        "data_fraction": len(kept) / n,
        **summarize(acc, ref),
        **({"schedule": schedule, "compute_fraction_of_full_preset": acc.units() / schedule["full_run_units"]}
           if schedule else {}),
        "kept_ids": [ids[i] for i in kept],
        "summary": curator.summary(),
        "notes": CURATION_NOTES,
    }
    return write_json(run.curation, normalise(info))


def write_debug_fingerprint(*, rank: int, world: int, step: int, curator, weights: dict, acc: Accounting) -> None:
    """With $CXRFM_DEBUG_DIR set, every rank writes hashes of its curator state and weights there
    (tests/test_distributed.py checks that all ranks agree)."""
    folder = os.environ.get("CXRFM_DEBUG_DIR")
    if not folder:
        return

    def digest(obj) -> str:
        skeleton, arrays = split_arrays(obj)
        h = hashlib.sha256(json.dumps(normalise(skeleton), sort_keys=True).encode())
        for k in sorted(arrays):
            h.update(k.encode())
            h.update(arrays[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    kept = np.asarray(curator.kept_rows(), dtype=np.int64)
    info = {"rank": rank, "world": world, "step": step, "kept_rows": digest({"kept": kept}),
            "curator_state": digest(curator.state_dict()), "weights": digest(weights), "accounting": acc.to_dict()}
    write_json(Path(folder) / f"rank-{rank}.json", info)
