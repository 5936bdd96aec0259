"""The findings head: what turns an image embedding into per-finding probabilities.

One object answers for ``eval`` and for ``serve``, so the served probabilities are the evaluated ones
by construction. Three kinds of answer, per finding, best first:

* ``linear-probe``: a logistic regression on the frozen image embedding, trained by the ``probe`` task
  on the training part's labels (Alain & Bengio 2016; the CLIP paper's linear-probe protocol);
* ``zero-shot+platt``: the zero-shot prompt score (CheXzero) recalibrated by Platt scaling
  (Platt 1999) on the training part's known labels: a logistic regression on logit(score);
* ``zero-shot``: the raw prompt softmax, when no labels were available to calibrate it.

``eval`` fits the head and saves it in the run folder (``RunDir.head("findings")``); ``serve`` loads
it when its model weights and prompts are the ones it was fitted with, and says which head answered
each finding. A head from other weights or other prompts is refused with the reason (never mixed in).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import RunDirError
from ..run import RunDir
from .zero_shot import build_zero_shot_classifier, zero_shot_scores

HEAD_FILE = "head.json"
# Platt scaling needs both classes: fewer known positives or negatives than this keeps the raw score
MIN_CALIBRATION_LABELS = 5
KINDS = ("linear-probe", "zero-shot+platt", "zero-shot")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def prompts_hash(prompts: Mapping[str, Mapping[str, Sequence[str]]], findings: Sequence[str]) -> str:
    """A short hash of the prompt ensembles of ``findings``: a head is only valid with its prompts."""
    blob = json.dumps({f: prompts[f] for f in findings}, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file (the model weights a head belongs to), or None when it is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FindingsHead:
    """Per-finding probabilities from an image embedding; see the module docstring for the kinds."""

    findings: list[str]
    classifier: torch.Tensor  # (F, 2, D) positive / negative prompt embeddings
    logit_scale: float
    prompts_hash: str
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)  # finding -> (a, b) on logit
    probe: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # finding -> (w (D,), b)
    fitted_on: dict = field(default_factory=dict)  # data hash, rows, split: where the head learned

    @classmethod
    def zero_shot(cls, model, findings: Sequence[str], prompts: Mapping, logit_scale: float | None = None
                  ) -> "FindingsHead":
        """The uncalibrated zero-shot head of ``model`` for ``findings`` (prompts from ``prompts``)."""
        findings = list(findings)
        scale = float(model.logit_scale if logit_scale is None else logit_scale)
        return cls(findings, build_zero_shot_classifier(model, findings, prompts), scale,
                   prompts_hash(prompts, findings))

    # -- answering
    def zero_shot_scores(self, emb: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, F) raw prompt-softmax probabilities."""
        return zero_shot_scores(emb, self.classifier, self.logit_scale)

    def predict(self, emb: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, F) probabilities: each finding answered by its best available kind."""
        x = np.asarray(emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else emb, dtype=np.float64)
        out = self.zero_shot_scores(x)
        for j, f in enumerate(self.findings):
            if f in self.probe:
                w, b = self.probe[f]
                out[:, j] = _sigmoid(x @ w + b)
            elif f in self.calibration:
                a, b = self.calibration[f]
                out[:, j] = _sigmoid(a * _logit(out[:, j]) + b)
        return out

    def kind_of(self, finding: str) -> str:
        if finding in self.probe:
            return "linear-probe"
        return "zero-shot+platt" if finding in self.calibration else "zero-shot"

    @property
    def kind(self) -> str:
        """The best kind any finding uses (what a one-word summary of the head says)."""
        kinds = {self.kind_of(f) for f in self.findings}
        return next((k for k in KINDS if k in kinds), "zero-shot")

    def describe(self) -> dict:
        """Which head answers each finding, and where it was fitted (what the API returns)."""
        return {"kind": self.kind, "per_finding": {f: self.kind_of(f) for f in self.findings},
                "fitted_on": dict(self.fitted_on)}

    # -- fitting
    def fit_calibration(self, train_emb: np.ndarray, train_labels: np.ndarray,
                        min_labels: int = MIN_CALIBRATION_LABELS) -> "FindingsHead":
        """Platt-scale each finding's zero-shot score on known training labels (1 / 0 / NaN, (N, F))."""
        from sklearn.linear_model import LogisticRegression

        raw = self.zero_shot_scores(train_emb)
        cal: dict[str, tuple[float, float]] = {}
        for j, f in enumerate(self.findings):
            y = train_labels[:, j]
            known = ~np.isnan(y)
            if int((y[known] == 1).sum()) < min_labels or int((y[known] == 0).sum()) < min_labels:
                continue
            lr = LogisticRegression(C=1.0).fit(_logit(raw[known, j])[:, None], y[known].astype(int))
            cal[f] = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        self.calibration = cal
        return self

    def set_probe(self, finding: str, weight: np.ndarray, bias: float) -> None:
        """Answer ``finding`` with a linear probe ``sigmoid(emb @ weight + bias)`` on the embedding."""
        if finding not in self.findings:
            raise RunDirError(f"probe head for {finding!r}: not one of this head's findings {self.findings}")
        w = np.asarray(weight, dtype=np.float64).reshape(-1)
        if w.shape[0] != self.classifier.shape[-1]:
            raise RunDirError(f"probe head for {finding!r}: weight of dimension {w.shape[0]} != embedding "
                              f"dimension {self.classifier.shape[-1]}")
        self.probe[finding] = (w, float(bias))

    # -- saving
    def to_json(self, weights_sha256: str | None) -> dict:
        return {"format": "cxrfm.findings_head/1", "findings": self.findings, "logit_scale": self.logit_scale,
                "prompts_hash": self.prompts_hash, "weights_sha256": weights_sha256,
                "calibration": {f: list(v) for f, v in self.calibration.items()},
                "probe": {f: {"weight": w.tolist(), "bias": b} for f, (w, b) in self.probe.items()},
                "fitted_on": self.fitted_on,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def save(self, run_dir: str | Path) -> Path:
        """Write the head into the run folder (atomically) for ``serve`` to use."""
        run = RunDir(run_dir)
        path = run.head("findings") / HEAD_FILE
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_json(file_sha256(run.weights)), indent=1), encoding="utf-8")
        return path


def load_findings_head(run_dir: str | Path, model, findings: Sequence[str], prompts: Mapping,
                       logit_scale: float | None = None) -> tuple[FindingsHead, str | None]:
    """The run's saved head when it fits this model and these prompts, else the zero-shot head.

    Returns (head, note): ``note`` says why a saved head was not used (None when it was, or none exists).
    """
    head = FindingsHead.zero_shot(model, findings, prompts, logit_scale)
    run = RunDir(run_dir)
    path = run.head("findings") / HEAD_FILE
    if not path.is_file():
        return head, None
    saved = run.read_json(path) or {}
    if saved.get("weights_sha256") != file_sha256(run.weights):
        return head, f"{path}: fitted on other model weights; re-run `cxrfm eval` to refit it"
    if saved.get("prompts_hash") != head.prompts_hash:
        return head, f"{path}: fitted with other prompts; re-run `cxrfm eval` with these prompts"
    if abs(float(saved.get("logit_scale", head.logit_scale)) - head.logit_scale) > 1e-6:
        return head, f"{path}: fitted at another logit scale; re-run `cxrfm eval`"
    head.calibration = {f: (float(a), float(b)) for f, (a, b) in saved.get("calibration", {}).items()
                        if f in head.findings}
    for f, p in saved.get("probe", {}).items():
        if f in head.findings:
            head.set_probe(f, np.asarray(p["weight"]), float(p["bias"]))
    head.fitted_on = dict(saved.get("fitted_on") or {})
    return head, None
