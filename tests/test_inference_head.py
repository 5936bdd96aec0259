"""What is served is what was evaluated: `eval` fits the findings head, `serve` answers with it.

A tiny run (the session's ``run_dir``) is copied, evaluated with the report task on labelled real
CXRs, and then analysed: the served probabilities must be the saved head's, the served draft the
same function of them, and a head from other weights must be refused with the reason.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import HELD_OUT as _HELD_OUT

HELD_OUT = _HELD_OUT[0]  # a held-out CXR the tiny run's gate accepts


@pytest.fixture(scope="module")
def evaluated(run_dir, shared_data, tmp_path_factory, one_torch_thread):
    from cxrfm.data.schema import Manifest
    from cxrfm.tasks.suite import evaluate

    tmp = tmp_path_factory.mktemp("head")
    run = tmp / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run_dir / name, run / name)
    m = Manifest.load(shared_data / "cxr" / "manifest.csv")
    t = m.table
    rows = [i for src in sorted(t["source"].unique()) for i in np.flatnonzero(t["source"].to_numpy() == src)[:40]]
    df = t.iloc[rows].copy()
    df["image"] = [str(m.root / p) for p in df["image"]]
    df["mask"] = ""
    df.to_csv(tmp / "data.csv", index=False)
    res = evaluate(run, tmp / "data.csv", tasks="report", out=tmp / "eval", n_boot=20, progress=False, html=False,
                   cache_dir=tmp / "cache")
    return run, res


def _image(shared_data):
    from cxrfm.data.images import read_image

    path = next((shared_data / "cxr" / "images").rglob(HELD_OUT))
    return read_image(path)


def test_eval_saves_the_head_it_scored(evaluated):
    from cxrfm.run import RunDir

    run, res = evaluated
    structured = res["tasks"]["report"]["structured"]
    saved = json.loads((RunDir(run).head("findings") / "head.json").read_text())
    assert structured["head_file"].endswith("head.json")
    assert structured["head"]["kind"] == "zero-shot+platt"
    assert sorted(saved["calibration"]) == structured["calibrated"] and structured["calibrated"]


def test_served_probabilities_and_draft_are_the_evaluated_heads(evaluated, shared_data):
    import torch

    from cxrfm.data.images import letterbox
    from cxrfm.inference.analyze import Analyzer
    from cxrfm.inference.heads import load_findings_head
    from cxrfm.inference.report import structured_report
    from cxrfm.inference.zero_shot import load_prompts

    run, _ = evaluated
    analyzer = Analyzer(run)
    assert analyzer.head_note is None and analyzer.head.kind == "zero-shot+platt"
    img = _image(shared_data)
    out = analyzer.analyze(img)
    served = {f["finding"]: f["probability"] for f in out["findings"]}
    head, note = load_findings_head(run, analyzer.model, analyzer.findings, load_prompts())
    with torch.no_grad():
        emb = analyzer.model.encode_image(letterbox(img, analyzer.model.image_size)[None], normalize=True)
    expected = dict(zip(head.findings, head.predict(emb)[0]))
    raw = dict(zip(head.findings, head.zero_shot_scores(emb)[0]))
    assert note is None
    assert served == pytest.approx(expected, abs=1e-9)
    calibrated = [f for f in head.findings if f in head.calibration]
    assert any(abs(served[f] - raw[f]) > 1e-3 for f in calibrated)  # calibration changed what is served
    assert out["report"] == structured_report(served, evidence=out["evidence"])
    assert out["head"]["kind"] == "zero-shot+platt"
    assert {f["head"] for f in out["findings"]} <= {"zero-shot+platt", "zero-shot"}


def test_head_from_other_weights_is_not_used(evaluated, tmp_path):
    from cxrfm.inference.heads import load_findings_head
    from cxrfm.inference.zero_shot import load_prompts
    from cxrfm.models.dual import load_model
    from cxrfm.run import RunDir

    run, _ = evaluated
    other = tmp_path / "run"
    shutil.copytree(run, other)
    path = RunDir(other).head("findings") / "head.json"
    saved = json.loads(path.read_text())
    saved["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(saved))
    prompts = load_prompts()
    head, note = load_findings_head(other, load_model(other), list(prompts), prompts)
    assert head.kind == "zero-shot" and not head.calibration
    assert "other model weights" in note and str(path) in note


def test_corrupt_index_and_missing_reference_are_clear_errors(tmp_path):
    from cxrfm.errors import CxrfmError
    from cxrfm.inference.gate import reference_images_from_manifest
    from cxrfm.inference.index import build_index, load_index, save_index

    idx = save_index(build_index(np.eye(4, dtype=np.float32), list("abcd")), tmp_path / "idx")
    (idx / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(CxrfmError, match="unreadable index.*cxrfm index"):
        load_index(idx)
    with pytest.raises(CxrfmError, match="no such manifest"):
        reference_images_from_manifest(tmp_path / "nowhere.csv")


def test_analyze_returns_the_images_named_concepts(evaluated, run_dir, shared_data, tmp_path):
    from cxrfm.cli import main
    from cxrfm.inference.analyze import Analyzer

    run, _ = evaluated
    plain = Analyzer(run)
    assert plain.concepts is None and plain.describe()["concepts"] is None
    assert main(["concepts", "train", "--model", str(run), "--data", str(run_dir.parent / "train_manifest.csv"),
                 "--epochs", "30", "--cache-dir", str(tmp_path / "cache")]) == 0  # into RUN/concepts
    analyzer = Analyzer(run)
    out = analyzer.analyze(_image(shared_data))
    assert 1 <= len(out["concepts"]) <= 5
    acts = [c["activation"] for c in out["concepts"]]
    assert acts == sorted(acts, reverse=True) and all(a > 0 for a in acts)
    assert all(isinstance(c["name"], str) and c["name"] for c in out["concepts"])
    assert analyzer.describe()["concepts"]["n_features"] == len(analyzer.concepts.names)
