"""The OOD gate as the server uses it (cxrfm.inference.gate.OODGate, Analyzer): the inputs that passed
before issue 9 are refused, real CXRs of every shared source pass, and the verdict says why."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_gate_model_free import _sample, issue_inputs


@pytest.fixture(scope="module")
def model(run_dir):
    from cxrfm.models.dual import load_model

    return load_model(run_dir)


@pytest.fixture(scope="module")
def analyzer(run_dir, one_torch_thread):
    from cxrfm.inference.analyze import Analyzer

    return Analyzer(run_dir)


def test_server_refuses_what_passed_before(analyzer):
    from cxrfm.inference.analyze import Refused

    for name, data in issue_inputs().items():
        img = analyzer.decode(data, name)
        with pytest.raises(Refused) as e:  # the grey image alone (what Analyzer hands the gate) is enough
            analyzer.analyze(img)
        assert e.value.ood["score"] < e.value.ood["threshold"] == 0.0, name
        # the model's scores are reported beside the model-free margin, deciding nothing
        assert {"model_free", "knn", "text"} <= set(e.value.ood["components"]), name


def test_server_passes_real_cxrs_of_every_shared_source(analyzer, shared_data):
    for source, items in _sample(shared_data, per_source=6).items():
        ok = 0
        for it in items:
            img = analyzer.decode(it["path"].read_bytes(), it["path"].name)
            out = analyzer.analyze(img)
            ok += out["is_cxr"]
        assert ok >= len(items) - (1 if len(items) >= 6 else 0), source


def test_verdict_says_why_and_uses_the_source_colour(model, shared_data):
    from cxrfm.data.images import read_image
    from cxrfm.inference.gate import default_gate

    gate = default_gate(model)
    rng = np.random.default_rng(0)
    v = gate.verdict(torch.from_numpy(rng.random((1, 300, 400), dtype=np.float32)))
    assert not v["passed"] and "statistics" in v["reason"] and v["model_free"]["margin"] < 0
    cxr = next((shared_data / "pairs" / "images").glob("*.png"))
    v = gate.verdict(read_image(cxr), source=cxr)
    assert v["passed"] and v["reason"] is None and v["model_free"]["colourfulness"] == 0.0
    g = (read_image(cxr)[0].numpy() * 255).astype(np.uint8)
    tinted = np.stack([g, g // 2, g // 4], -1)  # the same film, but a colour source
    v = gate.verdict(read_image(cxr), source=tinted)
    assert not v["passed"] and "colour" in v["reason"]


def test_model_components_decide_only_with_a_weight(model):
    from cxrfm.errors import ConfigError
    from cxrfm.inference.gate import OODGate, default_reference_images

    ref = default_reference_images(40)
    both = OODGate(model, weights={"knn": 1.0}).fit(ref, tpr=0.95)
    assert both.threshold == 0.0 and both.model_threshold is not None
    imgs = [torch.rand(1, 128, 128) for _ in range(3)]
    comps = both.component_scores(imgs)
    expected = torch.minimum(comps["model_free"], both._model_score(comps) - both.model_threshold)
    torch.testing.assert_close(both.combine(comps), expected)  # an image must pass both
    alone = OODGate(model, weights={"knn": 1.0}, model_free=None).fit(ref)
    assert "model_free" not in alone.component_scores(imgs)
    with pytest.raises(ConfigError, match="nothing would decide"):
        OODGate(model, model_free=None)
