"""The concepts task: shortcut ranking and the bottleneck probe on planted cases, the task end to end, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cxrfm.tasks.concepts as task  # noqa: F401 - registers the task
from cxrfm.inference.concepts import load_concepts
from cxrfm.inference.sae import ConceptsError, MatryoshkaSAE, SAEConfig, save_sae
from cxrfm.tasks.concept_probe import bottleneck_probe, fast_auroc, rank_shortcuts
from cxrfm.tasks.suite import evaluate
from tests.helpers import StandInModel, subset_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fast_auroc_agrees_with_the_metric():
    from cxrfm.metrics import auroc

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.normal(size=(200, 3)) + y[:, None] * np.array([0.0, 1.0, -1.0])
    assert np.allclose(fast_auroc(y, s), [auroc(y, s[:, j]) for j in range(3)])


def test_the_feature_errors_and_an_attribute_share_ranks_first():
    rng = np.random.default_rng(0)
    n, m = 600, 20
    codes = rng.exponential(1.0, (n, m)) * (rng.random((n, m)) < 0.3)
    marked = rng.random(n) < 0.5
    codes[:, 7] = marked * rng.uniform(1, 2, n)  # feature 7 = the artefact
    errors = np.where(marked, rng.random(n) < 0.6, rng.random(n) < 0.1).astype(float)
    errors[:20] = np.nan  # unlabelled rows are left out
    attrs = {"source": np.where(marked, "x", "y").astype(object), "sex": rng.choice(["M", "F"], n).astype(object)}
    ranked = rank_shortcuts(codes, {"Pneumonia": errors}, attrs, names=[f"n{i}" for i in range(m)])
    top = ranked[0]
    assert top["feature"] == 7 and top["attribute"] == "source" and top["finding"] == "Pneumonia"
    assert top["auroc"] > 0.95 and top["name"] == "n7" and top["error_auroc"] > 0.7
    assert {"feature", "attribute", "auroc", "name"} <= set(top)
    blind = rank_shortcuts(codes, {"Pneumonia": errors}, None)  # no annotation: error loading alone
    assert blind[0]["feature"] == 7 and blind[0]["attribute"] is None


def test_bottleneck_probe_recovers_the_informative_features():
    rng = np.random.default_rng(1)
    n = 400
    y = (rng.random(n) < 0.4).astype(float)
    codes = rng.exponential(1.0, (n, 30)) * (rng.random((n, 30)) < 0.4)
    codes[:, 4] += 2 * y
    emb = np.concatenate([codes, rng.normal(size=(n, 10))], axis=1)
    src = np.where(np.arange(n) % 2, "a", "b")
    r = bottleneck_probe(codes[:300], emb[:300], y[:300], codes[300:], emb[300:], y[300:], src[300:], k=3)
    assert r["features"][0] == 4 and r["auroc"] > 0.9 and r["within_source"] and r["n_sources"] == 2
    assert r["ratio"] == pytest.approx(r["auroc"] / r["dense_auroc"])


def test_small_training_sets_get_a_smaller_dictionary():
    small, large = task.task_sae_config(300, 0), task.task_sae_config(1250, 0)
    assert small.n_features < large.n_features and small.k <= small.n_features // 2
    assert large.sizes == SAEConfig().sizes and large.epochs >= 20


@pytest.fixture(scope="module")
def concepts_result(tmp_path_factory, cxr_manifest_path):
    out = tmp_path_factory.mktemp("concepts_eval")
    m = subset_manifest(cxr_manifest_path, per_source=60)
    res = evaluate(StandInModel(), m, tasks="concepts", out=out, n_boot=50, cache_dir=out / "cache", progress=False)
    return res, out


def test_the_task_writes_the_contract_keys_and_a_report_section(concepts_result):
    res, out = concepts_result
    r = res["tasks"]["concepts"]
    assert 0.5 < r["r2"] <= 1 and 0 <= r["dead_fraction"] <= 1
    assert 0 <= r["dead_fraction_train"] <= 1 and r["dead_fraction"] <= r["rare_fraction"] <= 1
    assert r["dead_fraction"] <= r["negligible_fraction"] <= 1
    assert r["measured_on"].endswith("(held-out patients)") and r["split"]["n_eval"] > 0
    assert r["bottleneck"], "no finding had enough labels for the bottleneck probe"
    for b in r["bottleneck"].values():
        assert 0 <= b["auroc"] <= 1 and 0 <= b["dense_auroc"] <= 1 and len(b["features"]) == 10
    assert isinstance(r["shortcuts"], list)
    for s in r["shortcuts"]:
        assert {"feature", "attribute", "auroc", "name"} <= set(s)
    assert r["features"] and all((out / g["thumbnails_png"]).read_bytes()[:4] == b"\x89PNG"
                                 for g in r["features"] if g.get("thumbnails_png"))
    assert (out / "concepts" / "sae.json").is_file() and (out / "concepts" / "names.json").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Concept bottleneck" in html and "Features" in html and "data:image/png;base64" in html


def test_a_concepts_folder_of_another_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"weights of this run")
    sae = MatryoshkaSAE(8, SAEConfig(sizes=(4,), k=2))
    save_sae(sae, tmp_path / "c", {"run": {"path": "elsewhere", "weights_sha256": "0" * 64}})
    with pytest.raises(ConceptsError, match="another run"):
        load_concepts(tmp_path / "c", run)


def test_cli_trains_names_and_searches_concepts(run_dir, tmp_path, capsys):
    from cxrfm.cli import main

    data = run_dir.parent / "train_manifest.csv"
    out = tmp_path / "concepts"
    assert main(["concepts", "train", "--model", str(run_dir), "--data", str(data), "--out", str(out),
                 "--epochs", "30", "--cache-dir", str(tmp_path / "cache")]) == 0
    said = capsys.readouterr().out
    assert "R²" in said and "90/10 patient split" in said
    info = json.loads((out / "sae.json").read_text())
    assert info["metrics"]["measured_on"] == "held-out embeddings" and info["config"]["epochs"] == 30
    names = json.loads((out / "names.json").read_text())["features"]
    assert len(names) == info["config"]["sizes"][-1] and all("name" in n for n in names)
    assert main(["concepts", "search", "pleural effusion", "--model", str(run_dir), "--concepts", str(out)]) == 0
    assert capsys.readouterr().out.count("feature") == 5


def test_cli_text_embeddings_need_reports(run_dir, tmp_path, capsys):
    from cxrfm.cli import main

    data = run_dir.parent / "train_manifest.csv"  # 100 rows, few with report text
    code = main(["concepts", "train", "--model", str(run_dir), "--data", str(data), "--out", str(tmp_path / "c"),
                 "--embeddings", "text"])
    assert code == 2 and "have report text" in capsys.readouterr().err


def test_cli_trains_concepts_over_report_text(run_dir, tmp_path, cxr_manifest_path, capsys):
    from cxrfm.cli import main
    from cxrfm.data.schema import Manifest

    m = Manifest.load(cxr_manifest_path)
    rows = [i for i, r in enumerate(m.reports()) if isinstance(r, str) and r.strip()][:80]
    df = m.table.iloc[rows].copy()
    df["image"] = [str(m.root / p) for p in df["image"]]
    df["mask"] = ""
    df.to_csv(tmp_path / "notes.csv", index=False)
    out = tmp_path / "text_concepts"
    assert main(["concepts", "train", "--model", str(run_dir), "--data", str(tmp_path / "notes.csv"), "--out", str(out),
                 "--embeddings", "text", "--epochs", "20"]) == 0
    info = json.loads((out / "sae.json").read_text())
    assert info["embedding"] == "text" and info["data"]["n_rows"] < 80
    assert json.loads((out / "names.json").read_text())["features"][0]["words"] is not None


def test_a_given_concepts_folder_of_another_dimension_is_refused(tmp_path, cxr_manifest_path):
    from cxrfm.tasks.suite import EvalContext
    from cxrfm.tasks.zero_shot import load_prompts

    save_sae(MatryoshkaSAE(16, SAEConfig(sizes=(4,), k=2)), tmp_path / "c", {"run": None})
    ctx = EvalContext(model=StandInModel(dim=32), manifest=subset_manifest(cxr_manifest_path, per_source=30),
                      n_boot=20, cache_dir=tmp_path / "cache", prompts=load_prompts())
    ctx.concepts = tmp_path / "c"
    with pytest.raises(ConceptsError, match="16-dimensional"):
        task.run(ctx)
