"""Image-report retrieval on the real covid-chestxray rows (with clinical notes) + index save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfm.errors import RunDirError
from cxrfm.metrics import chance_recall_at_k, recall_at_k
from cxrfm.tasks.embed import FileImages, report_texts
from cxrfm.tasks.retrieval import build_index, load_index, retrieval_recall, save_index
from cxrfm.tasks.suite import evaluate

from tests.helpers import StandInModel, subset_manifest


class OracleTextModel(StandInModel):
    """Stand-in whose text tower returns the mean image embedding of the rows carrying that text:
    a perfectly aligned model, so retrieval must score near 1."""

    def __init__(self, manifest, images):
        super().__init__()
        texts = report_texts(manifest)
        rows = [i for i, t in enumerate(texts) if t]
        emb = self.encode_image(images.batch(rows))
        self.table: dict[str, torch.Tensor] = {}
        for i, r in enumerate(rows):
            self.table.setdefault(texts[r], torch.zeros(emb.shape[1]))
            self.table[texts[r]] += emb[i]

    def encode_text(self, texts, normalize=True):
        x = torch.stack([self.table.get(t, torch.ones(32)) for t in texts])
        return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def subset(cxr_manifest_path):
    return subset_manifest(cxr_manifest_path, per_source=50)


def test_retrieval_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 16)).astype(np.float32)
    txt = rng.normal(size=(20, 16)).astype(np.float32)
    link = np.r_[np.arange(20), rng.integers(0, 20, 30)]  # every text has >= 1 image; some several
    res = retrieval_recall(img, txt, link, ks=(1, 5, 10))
    n_img = img / np.linalg.norm(img, axis=1, keepdims=True)
    n_txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = n_img @ n_txt.T
    i2t = recall_at_k(sim, [[t] for t in link])
    t2i = recall_at_k(sim.T, [list(np.flatnonzero(link == t)) for t in range(20)])
    for k in (1, 5, 10):
        assert res["image_to_text"][f"recall@{k}"] == pytest.approx(i2t[k])
        assert res["text_to_image"][f"recall@{k}"] == pytest.approx(t2i[k])
    assert res["image_to_text"]["chance@1"] == pytest.approx(1 / 20)
    counts = np.bincount(link)
    assert res["text_to_image"]["chance@5"] == pytest.approx(chance_recall_at_k(counts, 50, (5,))[5])
    assert res["text_to_image"]["n"] == 20 and res["image_to_text"]["n"] == 50


def test_suite_retrieval_on_real_notes_oracle_vs_random(subset):
    images = FileImages(subset, 32)
    texts = report_texts(subset)
    n_text_rows = sum(t is not None for t in texts)
    assert n_text_rows == 50  # the covid-chestxray rows of the subset carry notes, the others none
    oracle = OracleTextModel(subset, images)
    res = evaluate(oracle, subset, tasks=["retrieval"], n_boot=10, progress=False, images=images)
    r = res["tasks"]["retrieval"]
    assert r["n_images"] == n_text_rows and r["n_texts"] == len({t for t in texts if t})
    # texts shared by several images are their mean, so an image may sit nearer another text's mean
    assert r["image_to_text"]["recall@1"] > max(0.6, 10 * r["image_to_text"]["chance@1"])
    assert r["text_to_image"]["recall@10"] > 0.9
    for direction in ("image_to_text", "text_to_image"):  # patient-level bootstrap CI around each recall
        for k in (1, 5, 10):
            lo, hi = r[direction][f"recall@{k}_ci"]
            assert lo <= r[direction][f"recall@{k}"] <= hi
    rand = evaluate(StandInModel(), subset, tasks=["retrieval"], n_boot=10, progress=False, images=images)
    i2t = rand["tasks"]["retrieval"]["image_to_text"]
    # an untrained model stays within a few chance levels (bounded by noise, not by 0.5)
    assert i2t["recall@10"] < 0.6 and i2t["chance@10"] == pytest.approx(10 / r["n_texts"])


def test_index_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    ids = [f"images/{i}.png" for i in range(30)]
    reports = [f"report {i}" if i % 3 else None for i in range(30)]
    index = build_index(emb, ids, reports, meta={"model": "runs/x"})
    save_index(index, tmp_path / "idx")
    back = load_index(tmp_path / "idx")
    assert back.ids == ids and back.reports == reports and back.meta["model"] == "runs/x" and back.meta["n"] == 30
    scores, rows = back.search(emb[[4, 7]], k=3)
    assert list(rows[:, 0]) == [4, 7] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(RunDirError, match="cxrfm index"):
        load_index(tmp_path / "nothing")
