"""`cxrfm eval` / `cxrfm index` end to end on a real subset: results.json contract and user errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfm import cli
from cxrfm.data.schema import Manifest
from cxrfm.tasks import suite
from cxrfm.tasks.retrieval import load_index
from cxrfm.tasks.suite import evaluate, format_results_table

from tests.helpers import StandInModel, subset_manifest


@pytest.fixture(scope="module")
def manifest_file(cxr_manifest_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    path = d / "manifest.csv"
    m = subset_manifest(cxr_manifest_path, per_source=40)
    # absolute image paths: the manifest lives in a temp folder, the images stay in shared data
    table = m.table.drop(columns=["mask"]).assign(image=[str(p) for p in m.image_paths()])
    table.to_csv(path, index=False)
    return path


@pytest.fixture()
def standin_runs(monkeypatch, tmp_path):
    """Any folder holding `standin` loads as the stand-in model (the real loader is tested below)."""
    import cxrfm.models.dual as dual

    real = dual.load_model

    def fake(run_dir, *args, **kwargs):
        return StandInModel() if "standin" in str(run_dir) else real(run_dir, *args, **kwargs)

    monkeypatch.setattr(dual, "load_model", fake)
    run = tmp_path / "standin-run"
    run.mkdir()
    return run


def test_eval_cli_writes_results_contract(manifest_file, standin_runs, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = cli.main(["eval", "--model", str(standin_runs), "--data", str(manifest_file), "--out", str(out),
                   "--n-boot", "100", "--seed", "3", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.index("within") < printed.index("pooled")  # within-source first
    res = json.loads((out / "results.json").read_text())
    assert res["seed"] == 3 and res["tasks_requested"] == ["zeroshot", "retrieval"]
    assert res["data"]["content_hash"] == Manifest.load(manifest_file).content_hash()
    assert res["model"]["run_dir"].endswith("standin-run") and res["cxrfm_version"] and res["created"]
    zs = res["tasks"]["zeroshot"]
    for f in ("Pneumonia", "COVID-19", "Bacterial pneumonia"):
        r = zs["findings"][f]
        assert {"auroc", "ci", "n_pos", "n_neg", "within_source_auroc", "source_only_auroc", "per_source"} <= set(r)
        assert 0 <= r["ci"][0] <= r["auroc"] <= r["ci"][1] <= 1
    assert zs["mean_auroc"] is not None and "mean_within_source_auroc" in zs
    assert "Fracture" in zs["skipped_findings"]
    rt = res["tasks"]["retrieval"]
    for d in ("image_to_text", "text_to_image"):
        assert {"recall@1", "recall@5", "recall@10", "chance@1", "chance@5", "chance@10", "n"} <= set(rt[d])
    assert rt["image_to_text"]["n"] == 40
    # same seed -> same numbers, through the (now warm) image cache
    again = evaluate(StandInModel(), manifest_file, n_boot=100, seed=3, cache_dir=tmp_path / "cache", progress=False)
    assert again["tasks"]["zeroshot"]["findings"]["Pneumonia"]["ci"] == zs["findings"]["Pneumonia"]["ci"]
    assert again["tasks"]["retrieval"] == rt
    assert "Recall@k" in format_results_table(again)


def test_eval_cli_user_errors(manifest_file, standin_runs, tmp_path, capsys):
    # run dir without a model
    empty_run = tmp_path / "run-without-model"
    empty_run.mkdir()
    assert cli.main(["eval", "--model", str(empty_run), "--data", str(manifest_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "run-without-model: no config.json" in err and "cxrfm pretrain" in err
    # empty manifest
    empty = tmp_path / "empty.csv"
    empty.write_text("image,patient_id,source\n")
    assert cli.main(["eval", "--model", str(standin_runs), "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "has no rows" in capsys.readouterr().err
    # prompts that cover none of the findings the manifest can score
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps({"Fracture": {"positive": ["rib fracture."], "negative": ["no fracture."]}}))
    assert cli.main(["eval", "--model", str(standin_runs), "--data", str(manifest_file), "--out", str(tmp_path / "o"),
                     "--prompts", str(p), "--tasks", "zeroshot", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "none of the findings" in capsys.readouterr().err
    assert cli.main(["eval", "--model", str(standin_runs), "--data", str(manifest_file), "--out", str(tmp_path / "o"),
                     "--tasks", "zeroshot,probe-typo"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def _record_run(run, manifest_file, trained_patients, **status):
    """Give the stand-in run folder what pretraining records: status.json and training_data.json."""
    from cxrfm.run import RunDir

    rd = RunDir(run)
    rd.write_status(**status)
    rd.write_training_data(str(manifest_file), "hash", [f"r{i}" for i in range(len(trained_patients))],
                           list(trained_patients))


def test_eval_warns_on_unfinished_run_and_shared_patients(manifest_file, standin_runs, tmp_path, capsys):
    patients = sorted(Manifest.load(manifest_file).table["patient_id"].astype(str).unique())
    _record_run(standin_runs, manifest_file, patients[:7] + ["someone-else"], step=3, total_steps=10, finished=False,
                error="SIGTERM")
    out = tmp_path / "ev"
    assert cli.main(["eval", "--model", str(standin_runs), "--data", str(manifest_file), "--out", str(out),
                     "--tasks", "prevalence", "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    unfinished, shared = res["warnings"]
    assert "unfinished: training stopped at step 3 of ~10 (SIGTERM)" in unfinished
    assert shared.startswith(f"7 of {len(patients)} patients") and ", ..." in shared and patients[0] in shared
    assert "someone-else" not in shared
    assert printed.count("WARNING: ") == 2 and "step 3 of ~10" in printed
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Read these numbers with care" in page and "7 of" in page


def test_eval_is_quiet_for_a_finished_run_on_held_out_patients(manifest_file, standin_runs, tmp_path, capsys):
    _record_run(standin_runs, manifest_file, ["nobody-here"], step=10, total_steps=10, finished=True)
    res = evaluate(standin_runs, manifest_file, tasks="prevalence", progress=False)
    assert res["warnings"] == []
    assert "WARNING" not in format_results_table(res)


def test_eval_says_when_the_run_does_not_record_its_training_data(manifest_file, standin_runs):
    res = evaluate(standin_runs, manifest_file, tasks="prevalence", progress=False)
    assert len(res["warnings"]) == 1 and "does not record its training data" in res["warnings"][0]


def test_index_cli_roundtrip(manifest_file, standin_runs, tmp_path):
    out = tmp_path / "idx"
    assert cli.main(["index", "--model", str(standin_runs), "--data", str(manifest_file), "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    index = load_index(out)
    m = Manifest.load(manifest_file)
    assert index.ids == m.ids and len(index) == len(m)
    assert sum(r is not None for r in index.reports) == 40
    # an image is its own nearest neighbour
    model = StandInModel()
    from cxrfm.tasks.embed import embed_manifest

    emb = embed_manifest(model, m, cache_dir=tmp_path / "cache")
    _, rows = index.search(emb[:5], k=1)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4]


def _real_model_run(tmp_path):
    """A run dir holding an untrained tiny real DualEncoder, written as pretraining writes one."""
    try:
        from cxrfm.config import ModelConfig, config_to_dict
        from cxrfm.models.dual import save_model
        from cxrfm.models.factory import build_model
    except ImportError as e:
        pytest.skip(f"cxrfm.models not importable yet: {e}")
    cfg = ModelConfig(image_size=32, embed_dim=32)
    model = build_model(cfg, seed=0)
    run = tmp_path / "real-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    save_model(model, run / "model.safetensors")
    return run


@pytest.mark.slow
def test_eval_cli_through_real_model_loader(manifest_file, tmp_path):
    run = _real_model_run(tmp_path)
    out = tmp_path / "ev"
    rc = cli.main(["eval", "--model", str(run), "--data", str(manifest_file), "--out", str(out), "--n-boot", "50",
                   "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["image_size"] == 32
    assert np.isfinite(res["tasks"]["zeroshot"]["mean_auroc"])
    assert res["tasks"]["retrieval"]["image_to_text"]["n"] == 40


@pytest.mark.slow
def test_eval_after_tiny_pretrain(manifest_file, tmp_path):
    """The whole path: `pretrain` writes a run dir, `cxrfm eval` loads it and scores it."""
    try:
        from cxrfm.train.loop import pretrain
    except ImportError as e:
        pytest.skip(f"cxrfm.train.loop.pretrain not importable yet: {e}")
    run = pretrain(manifest_file, tmp_path / "run", config="tiny-cpu", curate="none", budget=1.0, epochs=1,
                   overrides={"image_size": 32, "embed_dim": 32, "batch_size": 32}, progress=False,
                   cache_dir=tmp_path / "cache", max_steps=2)
    out = tmp_path / "ev"
    assert cli.main(["eval", "--model", str(run), "--data", str(manifest_file), "--out", str(out), "--n-boot", "50",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["run_dir"] == str(run.resolve())
    assert res["tasks"]["zeroshot"]["n_findings"] >= 3
    assert all(0 <= r["auroc"] <= 1 for r in res["tasks"]["zeroshot"]["findings"].values())
    assert res["tasks"]["retrieval"]["text_to_image"]["n"] == res["tasks"]["retrieval"]["n_texts"]
    # max_steps=2 stopped the run early, and it trained on the very patients it is evaluated on
    unfinished, shared = res["warnings"]
    assert "the run is unfinished: training stopped at step 2" in unfinished and "--resume" in unfinished
    n_patients = Manifest.load(manifest_file).table["patient_id"].nunique()
    assert shared.startswith(f"{n_patients} of {n_patients} patients") and "memory, not generalisation" in shared
