"""Image-report retrieval (Recall@k, both directions) and a saved embedding index for serving.

Protocol as in ConVIRT (Zhang et al., 2020) and GLoRIA (Huang et al., ICCV 2021): every row with a
report is a pair; image -> text ranks the distinct report texts for each image, text -> image ranks
the images for each distinct text. Identical report texts are one target (several images of a case
often share the case's notes), so for text -> image every image carrying that text is relevant.
Chance level (a random ranking) is reported beside each Recall@k because it depends on how many
candidates there are: Recall@10 among 50 reports and among 5,000 are different claims.

The index itself (exact cosine search, saved for serving) is :mod:`cxrfm.inference.index`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..inference.index import (INDEX_FILE, ITEMS_FILE, META_FILE, EmbeddingIndex,  # noqa: F401 - re-exported
                               build_index, load_index, save_index)
from ..metrics import bootstrap_mean_ci, chance_recall_at_k, hits_at_k_from_ranking
from .embed import embed_texts, report_texts

if TYPE_CHECKING:
    from .suite import EvalContext

KS: tuple[int, ...] = (1, 5, 10)


def index_manifest(model_or_run, data, out: str | Path | None = None, cache_dir: str | Path | None = None,
                   progress: bool = False, images=None) -> EmbeddingIndex:
    """Embed every image of a manifest and build (and with ``out``, save) its search index."""
    from ..data.schema import Manifest
    from ..errors import ManifestError
    from .embed import embed_manifest
    from ..models.dual import load_model

    run_dir = Path(model_or_run) if isinstance(model_or_run, (str, Path)) else None
    model = load_model(run_dir) if run_dir is not None else model_or_run
    manifest = Manifest.load(data) if isinstance(data, (str, Path)) else data
    if len(manifest) == 0:
        raise ManifestError(f"{manifest.path or 'manifest'}: has no rows; nothing to index")
    emb = embed_manifest(model, manifest, cache_dir=cache_dir, progress=progress, images=images)
    meta = {"model": str(run_dir.resolve()) if run_dir else type(model).__name__,
            "data": str(manifest.path.resolve()) if manifest.path else None,
            "root": str(manifest.root), "data_hash": manifest.content_hash(), "image_size": int(model.image_size)}
    index = build_index(emb, manifest.ids, report_texts(manifest), meta)
    if out is not None:
        save_index(index, out)
    return index


def _direction(queries: np.ndarray, targets: np.ndarray, relevant: list[list[int]], ks: Sequence[int],
               groups: Sequence | None = None, rng: np.random.Generator | None = None, n_boot: int = 0) -> dict:
    """Recall@k and chance of one direction; with ``groups`` (the patient of each query), ``rng`` and
    ``n_boot``, also ``recall@k_ci``: a patient-level bootstrap 95 % CI."""
    index = build_index(targets, [str(i) for i in range(len(targets))])
    _, ranked = index.search(queries, max(ks))  # (Q, K)
    hits = hits_at_k_from_ranking(ranked, relevant, len(targets), ks)
    chance = chance_recall_at_k([len(r) for r in relevant], len(targets), ks)
    out: dict = {"n": len(queries), "n_targets": len(targets)}
    for k in ks:
        out[f"recall@{k}"] = float(hits[k].mean())
        out[f"chance@{k}"] = chance[k]
        if groups is not None and rng is not None and n_boot > 0:
            out[f"recall@{k}_ci"] = list(bootstrap_mean_ci(hits[k].astype(float), groups, rng, n_boot))
    return out


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_of_image: Sequence[int],
                     ks: Sequence[int] = KS, patient_of_image: Sequence | None = None,
                     rng: np.random.Generator | None = None, n_boot: int = 0) -> dict:
    """Image -> text and text -> image Recall@k with chance level.

    ``text_emb`` (T, D) holds the *distinct* texts; ``text_of_image[i]`` is image ``i``'s text row.
    Every text must belong to at least one image. With ``patient_of_image``, ``rng`` and ``n_boot``,
    each Recall@k gets a patient-level bootstrap CI (a text's patient is that of its first image).
    """
    text_of_image = np.asarray(text_of_image, dtype=np.int64)
    if len(text_of_image) != len(image_emb):
        raise CxrfmError(f"retrieval_recall: {len(text_of_image)} text links for {len(image_emb)} images")
    images_of_text: list[list[int]] = [[] for _ in range(len(text_emb))]
    for i, t in enumerate(text_of_image):
        images_of_text[t].append(i)
    pat_img = list(patient_of_image) if patient_of_image is not None else None
    pat_txt = [pat_img[imgs[0]] for imgs in images_of_text] if pat_img is not None else None
    return {
        "image_to_text": _direction(image_emb, text_emb, [[int(t)] for t in text_of_image], ks, pat_img, rng, n_boot),
        "text_to_image": _direction(text_emb, image_emb, images_of_text, ks, pat_txt, rng, n_boot),
    }


def run(context: "EvalContext") -> dict:
    """The ``retrieval`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .suite import TaskSkipped

    texts = report_texts(context.manifest)
    rows = [i for i, t in enumerate(texts) if t is not None]
    if not rows:
        raise TaskSkipped("no row has report text (the manifest's `report` column is empty or absent)")
    distinct: dict[str, int] = {}
    text_of_image = [distinct.setdefault(texts[i], len(distinct)) for i in rows]
    if len(distinct) < 2:
        raise TaskSkipped(f"only {len(distinct)} distinct report text among {len(rows)} rows; retrieval needs >= 2")
    image_emb = context.image_embeddings(np.asarray(rows))  # (R, D)
    text_emb = embed_texts(context.model, list(distinct), progress=context.progress)  # (T, D)
    patients = context.manifest.table["patient_id"].to_numpy()[np.asarray(rows)]
    out = retrieval_recall(image_emb, text_emb, text_of_image, KS, patient_of_image=patients,
                           rng=context.rng("retrieval"), n_boot=context.n_boot)
    out.update({
        "n_images": len(rows), "n_texts": len(distinct),
        "relevance": "identical report text (images sharing a report are all relevant to it)",
    })
    return out


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="retrieval", run=run, title="Image-report retrieval", needs=("report_text",),
    result_keys=("image_to_text", "text_to_image", "n_images", "n_texts"),
    console="cxrfm.reporting.sections.retrieval:console", html="cxrfm.reporting.sections.retrieval:html",
    default=True, order=20, summary="Recall@1/5/10 image<->report with chance"))
