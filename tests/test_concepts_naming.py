"""Naming SAE features: enrichment statistics, evidence, text labels, one image's top concepts, text search."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import fisher_exact

from cxrfm.data.findings import FINDINGS
from cxrfm.inference import concept_naming as N
from cxrfm.inference.concepts import Concepts, search_concepts, text_labels, top_concepts
from cxrfm.inference.sae import ConceptsError, MatryoshkaSAE, SAEConfig
from tests.helpers import StandInModel


def test_enrichment_matches_a_hand_computed_table():
    # 10 top rows (8 have the property), 30 other rows (6 have it), 2 unknown rows left out
    in_top = np.array([True] * 10 + [False] * 30 + [True, False])
    has = np.array([1] * 8 + [0] * 2 + [1] * 6 + [0] * 24 + [np.nan, np.nan], dtype=float)[:, None]
    e = N.enrichment(in_top, has)
    a, b, c, d = 8.5, 2.5, 6.5, 24.5
    assert e["odds_ratio"][0] == pytest.approx(a * d / (b * c))
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    assert e["ci_low"][0] == pytest.approx(math.exp(math.log(a * d / (b * c)) - N.Z95 * se))
    assert e["p"][0] == pytest.approx(fisher_exact([[8, 2], [6, 24]], alternative="greater")[1])
    assert e["n_top"][0] == 8 and e["n_top_known"][0] == 10


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"source": rng.choice(["a", "b"], n), "view": rng.choice(["PA", "AP"], n),
                      "sex": rng.choice(["M", "F"], n), "age": rng.integers(1, 90, n).astype(float)})
    labels = np.full((n, len(FINDINGS)), np.nan)
    labels[:, FINDINGS.index("Pleural Effusion")] = rng.integers(0, 2, n)
    reports = [("small effusion seen" if labels[i, FINDINGS.index("Pleural Effusion")] == 1 else "clear lungs today")
               + f" case {i % 7}" for i in range(n)]
    return t, labels, reports


def test_a_feature_firing_on_one_finding_is_named_after_it():
    t, labels, reports = _table()
    y = labels[:, FINDINGS.index("Pleural Effusion")] == 1
    codes = np.zeros((len(t), 3))
    codes[y, 0] = 1.0 + np.arange(y.sum()) / 100  # feature 0: effusion rows
    codes[t["source"].to_numpy() == "b", 1] = 1.0  # feature 1: a source
    ev = N.NamingEvidence(t, labels, reports)
    names = N.name_features(codes, ev, [str(i) for i in range(len(t))])
    assert names[0]["findings"][0]["value"] == "Pleural Effusion" and names[0]["name"].startswith("Pleural Effusion")
    assert names[0]["findings"][0]["ci"][0] > 1
    assert any(w["value"] == "effusion" for w in names[0]["words"])
    assert names[1]["metadata"][0]["value"] == "source=b" and not names[1]["findings"]
    assert names[2]["n_active"] == 0 and names[2]["name"] == "unnamed" and names[2]["top_ids"] == []
    assert ev.fallback is None


def test_without_labels_naming_falls_back_to_metadata_and_text_and_says_so():
    t, _, _ = _table()
    ev = N.NamingEvidence(t, None, [None] * len(t))
    assert "no finding has known labels" in ev.fallback and "no report text" in ev.fallback
    codes = np.zeros((len(t), 1))
    codes[t["sex"].to_numpy() == "F", 0] = 1.0
    named = N.name_features(codes, ev, list(map(str, range(len(t)))), text=[[{"phrase": "female breast shadows",
                                                                               "cosine": 0.5}]])
    assert named[0]["name"] == '"female breast shadows" · sex=F'


def _concepts_with_direction(model, phrase: str, d: int = 32) -> Concepts:
    sae = MatryoshkaSAE(d, SAEConfig(sizes=(4,), k=1), generator=torch.Generator().manual_seed(0))
    from cxrfm.inference.concepts import centred_phrases
    from cxrfm.inference.concept_phrases import CONCEPT_PHRASES

    dirs, center = centred_phrases(model, CONCEPT_PHRASES)
    with torch.no_grad():
        sae.W_dec[2] = torch.as_tensor(dirs[CONCEPT_PHRASES.index(phrase)], dtype=torch.float32)
    names = [{"name": f"f{i}", "top_ids": [f"img{i}"], "text": []} for i in range(4)]
    return Concepts(sae, names, {}, center)


def test_text_label_and_search_find_the_feature_pointing_at_a_phrase():
    model = StandInModel(dim=32)
    c = _concepts_with_direction(model, "pleural effusion")
    labels, _ = text_labels(model, c.sae)
    assert labels[2][0]["phrase"] == "pleural effusion" and labels[2][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    hits = search_concepts("pleural effusion", model, c, k=2)
    assert hits[0]["feature"] == 2 and hits[0]["top_ids"] == ["img2"]
    with pytest.raises(ConceptsError, match="non-empty"):
        search_concepts("  ", model, c)
    with pytest.raises(ConceptsError, match="dimensional"):
        text_labels(StandInModel(dim=16), c.sae)


def test_top_concepts_of_one_image_are_its_strongest_features_with_names():
    sae = MatryoshkaSAE(8, SAEConfig(sizes=(6,), k=2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 3], sae.W_enc[1, 1] = 2.0, 1.0
    c = Concepts(sae, [{"name": f"concept {i}", "text": [{"phrase": f"p{i}"}]} for i in range(6)], {})
    x = np.zeros(8, np.float32)
    x[0], x[1] = 1.0, 1.0
    out = top_concepts(x, c, k=5)
    assert [o["feature"] for o in out] == [3, 1] and out[0]["name"] == "concept 3" and out[0]["text"] == ["p3"]
    with pytest.raises(ConceptsError, match="do not match"):
        top_concepts(np.zeros(5, np.float32), c)


def test_a_run_without_concepts_has_none_and_one_with_them_loads(tmp_path):
    from cxrfm.inference.concepts import run_concepts
    from cxrfm.inference.sae import save_sae
    from cxrfm.run import RunDir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"w")
    assert run_concepts(run) is None
    sae = MatryoshkaSAE(8, SAEConfig(sizes=(4,), k=2))
    save_sae(sae, RunDir(run).concepts_dir, {"run": {"path": str(run), "weights_sha256": RunDir(run).weights_sha256()}})
    assert run_concepts(run).sae.d_in == 8
