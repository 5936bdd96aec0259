"""Concepts: an SAE over a run's image embeddings, its features named, and what they are used for.

- :func:`train_concepts` trains the SAE (:mod:`cxrfm.inference.sae`) on a manifest's image embeddings,
  names every feature (:mod:`cxrfm.inference.concept_naming`: enriched findings, report words and
  metadata, plus the nearest phrases of :data:`~cxrfm.inference.concept_phrases.CONCEPT_PHRASES` through
  the model's own text tower) and saves weights, settings and names in a concepts folder
  (``RunDir(run).concepts_dir`` by default);
- :func:`load_concepts` reads one back, refusing a folder trained on another run;
- :func:`top_concepts` gives one image's strongest features with their names (what ``analyze`` shows);
- :func:`search_concepts` goes from text to features ("pleural effusion" -> features -> their images);
- :func:`thumbnail_strip` draws a feature's top images side by side (a PNG).

Text labels compare a feature's decoder direction with phrase embeddings after removing the phrases'
mean: the shared component of every phrase (the modality gap of CLIP-style models, Liang et al. 2022)
would otherwise make one generic phrase the nearest to everything.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from ..data.schema import Manifest
from ..run import RunDir
from .concept_naming import NamingEvidence, name_features
from .concept_phrases import CONCEPT_PHRASES
from .embed import DualEncoderLike, embed_texts
from .sae import (ConceptsError, MatryoshkaSAE, SAEConfig, evaluate_sae, load_sae, read_sae_json, reconstruct,
                  save_sae, train_sae)

NAMES_JSON = "names.json"
N_PHRASES = 3


@dataclass
class Concepts:
    """A trained SAE with one name entry per feature and the centre of the phrase embeddings."""

    sae: MatryoshkaSAE
    names: list[dict]
    info: dict
    text_center: np.ndarray | None = None

    def name(self, feature: int) -> str:
        return self.names[feature]["name"] if feature < len(self.names) else f"feature {feature}"

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Sparse codes (N, M) of image embeddings (N, D) with the inference threshold."""
        return reconstruct(self.sae, np.atleast_2d(np.asarray(embeddings, dtype=np.float32)))[0]


def feature_directions(sae: MatryoshkaSAE) -> np.ndarray:
    """(M, D) unit vectors: the direction each feature adds to an embedding."""
    w = sae.W_dec.detach().numpy().astype(np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def centred_phrases(model: DualEncoderLike, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unit phrase directions (P, D) after removing their mean, the mean (D,))."""
    t = embed_texts(model, list(phrases)).astype(np.float64)
    center = t.mean(axis=0)
    d = t - center
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12), center


def text_labels(model: DualEncoderLike, sae: MatryoshkaSAE, phrases: Sequence[str] = CONCEPT_PHRASES,
                top: int = N_PHRASES) -> tuple[list[list[dict]], np.ndarray]:
    """Per feature, its ``top`` nearest phrases ({phrase, cosine}); and the phrase centre used."""
    dirs, center = centred_phrases(model, phrases)
    if dirs.shape[1] != sae.d_in:
        raise ConceptsError(f"the text tower gives {dirs.shape[1]}-dimensional embeddings but the concepts were "
                            f"trained on {sae.d_in}-dimensional ones; use the model the concepts were trained on")
    cos = feature_directions(sae) @ dirs.T  # (M, P)
    order = np.argsort(-cos, axis=1)[:, :top]
    return [[{"phrase": phrases[j], "cosine": float(cos[f, j])} for j in order[f]] for f in range(len(cos))], center


def top_concepts(embedding: np.ndarray, concepts: Concepts, k: int = 5) -> list[dict]:
    """One image's ``k`` strongest features: [{feature, activation, name, text}], strongest first.

    ``embedding`` is the image's (D,) or (1, D) embedding from the model the concepts were trained on."""
    codes = concepts.encode(np.asarray(embedding, dtype=np.float32).reshape(1, -1))[0]  # (M,)
    order = [int(f) for f in np.argsort(-codes, kind="stable")[:k] if codes[f] > 0]
    return [{"feature": f, "activation": float(codes[f]), "name": concepts.name(f),
             "text": [p["phrase"] for p in concepts.names[f].get("text", [])] if f < len(concepts.names) else []}
            for f in order]


def search_concepts(query: str, model: DualEncoderLike, concepts: Concepts, k: int = 5) -> list[dict]:
    """Features nearest to ``query`` through the text tower: [{feature, cosine, name, top_ids}]."""
    if not isinstance(query, str) or not query.strip():
        raise ConceptsError("the concept search needs a non-empty text, e.g. 'pleural effusion'")
    t = embed_texts(model, [query.strip()]).astype(np.float64)[0]
    if concepts.text_center is not None:
        t = t - concepts.text_center
    if t.shape[0] != concepts.sae.d_in:
        raise ConceptsError(f"the text tower gives {t.shape[0]}-dimensional embeddings but the concepts were "
                            f"trained on {concepts.sae.d_in}-dimensional ones; use the model they were trained on")
    cos = feature_directions(concepts.sae) @ (t / max(np.linalg.norm(t), 1e-12))  # (M,)
    order = np.argsort(-cos, kind="stable")[:k]
    return [{"feature": int(f), "cosine": float(cos[f]), "name": concepts.name(int(f)),
             "top_ids": concepts.names[int(f)].get("top_ids", []) if int(f) < len(concepts.names) else []}
            for f in order]


def thumbnail_strip(paths: Sequence[str | Path], size: int = 64) -> bytes:
    """A PNG of the images side by side, each letterboxed to ``size`` px (unreadable ones left black)."""
    from PIL import Image

    from ..data.images import letterbox, read_image
    from ..errors import ImageReadError

    tiles = []
    for p in paths:
        try:
            tiles.append(letterbox(read_image(p), size)[0])  # (S, S)
        except ImageReadError:
            tiles.append(torch.zeros(size, size))
    strip = torch.cat(tiles, dim=1) if tiles else torch.zeros(size, size)  # (S, n*S)
    buf = io.BytesIO()
    Image.fromarray((strip.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the concepts folder
def name_concepts(sae: MatryoshkaSAE, model: DualEncoderLike | None, manifest: Manifest, embeddings: np.ndarray
                  ) -> tuple[list[dict], np.ndarray | None, str | None]:
    """(names, text centre, fallback note) from the SAE codes of ``manifest``'s rows (``embeddings``)."""
    codes = reconstruct(sae, embeddings)[0]
    labels = manifest.labels()
    evidence = NamingEvidence(manifest.table, labels if np.isfinite(labels).any() else None, manifest.reports())
    text, center = text_labels(model, sae) if model is not None else (None, None)
    return name_features(codes, evidence, manifest.ids, text), center, evidence.fallback


def save_names(folder: str | Path, names: list[dict], center: np.ndarray | None, fallback: str | None) -> Path:
    path = Path(folder) / NAMES_JSON
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"fallback": fallback, "phrases": list(CONCEPT_PHRASES),
                                         "text_center": None if center is None else [float(v) for v in center],
                                         "features": names}, indent=1), encoding="utf-8")
    return path


def load_concepts(folder: str | Path, run: str | Path | None = None) -> Concepts:
    """The concepts in ``folder``; with ``run`` (a run folder) a folder from another run is refused."""
    sha = RunDir(run).weights_sha256() if run is not None and RunDir(run).weights.is_file() else None
    sae, info = load_sae(folder, sha)
    path = Path(folder) / NAMES_JSON
    names, center = [], None
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConceptsError(f"{path}: unreadable ({e}); re-run `cxrfm concepts train`") from e
        names = data.get("features", [])
        center = np.asarray(data["text_center"]) if data.get("text_center") is not None else None
        info["fallback"] = data.get("fallback")
    return Concepts(sae, names, info, center)


def run_concepts(run: str | Path) -> Concepts | None:
    """The concepts in ``RunDir(run).concepts_dir`` (checked against the run's weights), or None when the
    run has none yet: what ``analyze`` loads at start-up."""
    folder = RunDir(run).concepts_dir
    return load_concepts(folder, run) if (folder / "sae.json").is_file() else None


def run_identity(run: str | Path) -> dict:
    rd = RunDir(run).require()
    return {"path": str(rd.path.resolve()), "weights_sha256": rd.weights_sha256()}


def train_concepts(model: DualEncoderLike, run: str | Path | None, manifest: Manifest, embeddings: np.ndarray,
                   out: str | Path | None = None, config: SAEConfig | None = None,
                   held_out: np.ndarray | None = None,
                   progress: Callable[[int, dict], None] | None = None, embedding: str = "image") -> Concepts:
    """Train, name and save concepts for ``run`` from ``embeddings`` (row-aligned with ``manifest``).

    ``out`` defaults to ``RunDir(run).concepts_dir``; training resumes from ``out/state`` when the same
    settings and embeddings left one there. With neither ``run`` nor ``out`` nothing is written (a model
    object evaluated without a run folder). ``held_out`` embeddings (other patients) give the R² and
    dead fraction stored in ``sae.json``; without them the training embeddings are used and said so.
    ``embedding`` records what the rows' embeddings are ("image", or "text": their reports)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) != len(manifest):
        raise ConceptsError(f"{len(embeddings)} embeddings for a manifest of {len(manifest)} rows; they must be "
                            f"row-aligned")
    dim = getattr(getattr(model, "config", None), "embed_dim", None)
    if dim is not None and embeddings.ndim == 2 and embeddings.shape[1] != int(dim):
        raise ConceptsError(f"embeddings of dimension {embeddings.shape[1]} do not match the run's embed_dim {dim} "
                            f"({run}); embed the images with this run's model")
    ident = run_identity(run) if run is not None else None
    out = Path(out) if out is not None else (RunDir(run).concepts_dir if run is not None else None)
    if out is not None and (out / "sae.json").is_file() and ident is not None and \
            (read_sae_json(out).get("run") or {}).get("weights_sha256") != ident["weights_sha256"]:
        raise ConceptsError(f"{out}: holds concepts of another run; choose another --out or delete it")
    sae, history = train_sae(embeddings, config, state_dir=out / "state" if out is not None else None,
                             progress=progress)
    metrics = evaluate_sae(sae, held_out if held_out is not None else embeddings)
    metrics["measured_on"] = "held-out embeddings" if held_out is not None else "the training embeddings"
    names, center, fallback = name_concepts(sae, model, manifest, embeddings)
    meta = {"run": ident, "embedding": embedding, "data": {"path": str(manifest.path or ""), "n_rows": len(manifest)},
            "metrics": metrics, "history": history}
    if out is not None:
        save_sae(sae, out, meta)
        save_names(out, names, center, fallback)
    info = {"format": "in memory", "d_in": sae.d_in, "config": sae.config.to_json(), **meta, "fallback": fallback}
    return Concepts(sae, names, info, center)
