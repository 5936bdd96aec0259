"""The OOD gate (cxrfm.tasks.ood) on real data: held-out CXRs vs the non-CXR families of
cxrfm.tasks.ood_sources (package images: skimage, matplotlib, pydicom/pydicom-data DICOMs; synthetic)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def model(run_dir):
    from cxrfm.models.dual import load_model

    return load_model(run_dir)


@pytest.fixture(scope="module")
def held_out_cxrs(run_dir, shared_data):
    train = {Path(p).name for p in pd.read_csv(run_dir.parent / "train_manifest.csv")["image"]}
    man = pd.read_csv(shared_data / "cxr" / "manifest.csv")
    man = man[~man["image"].map(lambda p: Path(p).name).isin(train)]
    return [shared_data / "cxr" / p for p in man["image"].sample(150, random_state=1)]


def test_non_cxr_sources_are_real_and_exclude_chest(shared_data):
    from cxrfm.tasks.ood import non_cxr_images

    imgs = non_cxr_images()
    names = [n for n, _ in imgs]
    assert len(imgs) >= 150
    assert any(n.startswith("pydicom-data/") for n in names) and any(n.startswith("skimage/") for n in names)
    assert not any("RG1_" in n for n in names)  # the chest CR of pydicom-data is in-distribution
    for _, x in imgs:
        assert x.ndim == 3 and x.shape[0] == 1 and float(x.min()) >= 0 and float(x.max()) <= 1


def test_ood_task_separates_cxrs_from_other_images(model, held_out_cxrs):
    from cxrfm.tasks.ood import default_reference_images, non_cxr_items, ood_task

    items = non_cxr_items()
    res = ood_task(model, held_out_cxrs, [it.gray for it in items], reference=default_reference_images(150),
                   out_sources=[it.rgb for it in items])
    print("ood_task:", {k: v for k, v in res.items() if k != "model_free_provenance"})
    assert res["n_in"] == 150 and res["n_out"] == len(items)
    # the decision is the model-free check's, and the results name it so; the model's scores stand beside
    assert res["decision"] == "model_free" and res["auroc"] == res["model_free_auroc"]
    assert res["model_free_auroc"] > 0.99 and res["model_free_refusal"] >= 0.99
    assert res["model_free_false_refusal"] <= 0.02  # 0.4 % on 1,205 test films (benchmarks/ood_gate.py)
    assert 0.0 <= res["model_auroc"] <= 1.0 and 0.0 <= res["model_auroc_text"] <= 1.0
    assert res["model_auroc"] == res["auroc_knn"] and "fitted_by" in res["model_free_provenance"]
    lo, hi = res["auroc_ci"]
    assert lo <= res["auroc"] <= hi and res["prevalence"] == pytest.approx(150 / (150 + res["n_out"]))
    assert res["tpr_at_gate"] >= 0.98 and res["fpr_at_gate"] <= 0.01


def test_gate_is_cxr_and_public_ood_score(model, held_out_cxrs):
    import cxrfm
    from cxrfm.data.images import read_image
    from cxrfm.inference.gate import OODGate, default_reference_images
    from cxrfm.tasks.ood import skimage_image

    gate = OODGate(model).fit(default_reference_images(100))
    assert gate.threshold == 0.0 and gate.model_threshold is None  # the model-free check decides alone
    passed = [gate.is_cxr(read_image(p), source=p)[0] for p in held_out_cxrs[:20]]
    assert sum(passed) >= 19
    ok, score = gate.is_cxr(skimage_image("astronaut"))
    assert not ok and score < gate.threshold
    assert cxrfm.ood_score(skimage_image("astronaut"), model=model, gate=gate) == pytest.approx(score)
    # without a gate: the server's default gate (fitted on the bundled sample), cached per model
    from cxrfm.inference.gate import default_gate

    dg = default_gate(model)
    assert default_gate(model) is dg
    s_cxr = [cxrfm.ood_score(read_image(p), model=model) for p in held_out_cxrs[:10]]
    s_photo = cxrfm.ood_score(skimage_image("astronaut"), model=model)
    assert sum(s >= dg.threshold for s in s_cxr) >= 9 and s_photo < dg.threshold


def test_gate_needs_enough_reference_images(model):
    from cxrfm.errors import ConfigError
    from cxrfm.inference.gate import OODGate
    from cxrfm.tasks.ood import skimage_image

    with pytest.raises(ConfigError, match="at least"):
        OODGate(model).fit([skimage_image("camera")] * 3)


def test_activation_aware_score_matches_the_tanl_formula():
    import torch

    from cxrfm.inference.tanl import activation_aware_scores

    g = torch.Generator().manual_seed(0)
    v, t, nt = (torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1) for n in (3, 4, 6))
    tau = 0.1
    expected = []
    for x in v:  # S_aa = 1/M sum_m sum_i e^{v t_i} / (sum_j e^{v t_j} + sum_{j<=m} e^{v t~_j})
        pos, neg = torch.exp(t @ x / tau).double(), torch.exp(nt @ x / tau).double()
        expected.append(np.mean([float(pos.sum() / (pos.sum() + neg[:m].sum())) for m in range(1, 7)]))
    got = activation_aware_scores(v, t, nt, tau).exp().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_test_time_update_is_deterministic_bounded_and_off_by_default(model, held_out_cxrs, one_torch_thread):
    import torch

    from cxrfm.data.images import read_image
    from cxrfm.errors import ConfigError
    from cxrfm.inference.gate import (
        OODGate,
        _label_embeddings,
        default_reference_images,
        neglabel_scores,
    )
    from cxrfm.inference.embed import embed_image_list as embed_images
    from cxrfm.inference.tanl import TestTimeSettings
    from cxrfm.tasks.ood import non_cxr_images

    ref = [read_image(p) for p in default_reference_images(30)]
    cxrs = [read_image(p) for p in held_out_cxrs[:24]]
    others = [x for _, x in non_cxr_images()][:24]
    order = np.random.default_rng(0).permutation(48)
    stream = [(cxrs + others)[i] for i in order]
    batches = [stream[i:i + 8] for i in range(0, 48, 8)]
    settings = TestTimeSettings(memory_size=16, score_memory=40, batch_size=8)

    def text_scores(gate):
        return torch.cat([gate.component_scores(b)["text"] for b in batches])

    off = OODGate(model, weights={"text": 1.0}).fit(ref)
    assert off.tanl is None
    s_off = text_scores(off)
    torch.testing.assert_close(s_off, text_scores(off))  # stateless when off: the same images, the same scores
    pos, neg = _label_embeddings(model)
    torch.testing.assert_close(s_off[:8], neglabel_scores(embed_images(model, batches[0]), pos, neg, off.tau))

    on_a = OODGate(model, weights={"text": 1.0}, test_time_update=True, test_time=settings).fit(ref)
    first, first_id_rows = on_a.tanl.ranked_labels().clone(), on_a.tanl.id_queue.clone()
    s_a = text_scores(on_a)
    on_b = OODGate(model, weights={"text": 1.0}, test_time_update=True, test_time=settings).fit(ref)
    s_b = text_scores(on_b)
    assert torch.equal(s_a, s_b)  # deterministic: the same stream gives the same scores
    assert not torch.allclose(s_a, s_off)  # and they are not the NegLabel scores
    assert on_a.tanl.n_updates == len(batches)
    rows = on_a.tanl.memory_rows()
    assert rows == {"id": 16, "ood": 16, "scores": 40}, rows  # bounded: 55 + 32 seed rows and 48 images seen
    assert not torch.equal(first_id_rows, on_a.tanl.id_queue)  # test images were filed as confidently CXR
    assert not torch.equal(first, on_a.tanl.ranked_labels())  # and the stream moved the activated labels
    on_a.reset_memory()
    torch.testing.assert_close(on_a.component_scores(batches[0])["text"], s_b[:8])  # reset = fresh after fit
    with pytest.raises(ConfigError, match="text"):
        OODGate(model, test_time_update=True)  # default weights have no text term: refuse, don't no-op


def test_ood_task_with_and_without_test_time_update(model, held_out_cxrs, one_torch_thread):
    from cxrfm.tasks.ood import default_reference_images, non_cxr_images, ood_task

    out = [x for _, x in non_cxr_images()]
    ref = default_reference_images(100)
    w = {"pixels": 1.0, "text": 1.0}
    res = {tta: ood_task(model, held_out_cxrs, out, reference=ref, weights=w, rng=np.random.default_rng(0),
                         test_time_update=tta) for tta in (False, True)}
    for tta, r in res.items():
        print(f"ood_task test_time_update={tta}:", {k: round(v, 4) for k, v in r.items() if isinstance(v, float)})
    assert "test_time_update" not in res[False] and res[True]["test_time_update"]["n_updates"] >= 5
    assert res[True]["auroc_pixels"] == res[False]["auroc_pixels"]  # only the text term adapts
    for r in res.values():
        assert r["auroc"] > 0.9 and 0.0 <= r["auroc_text"] <= 1.0
        assert 0.85 <= r["tpr_at_gate"] <= 1.0  # the text term stays calibrated on the fit CXRs as labels change
