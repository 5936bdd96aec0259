"""The self-contained HTML report, from a synthetic results dict that has every task.

The dict follows the results.json contract (cxrfm.tasks.suite) with one task of each kind, a
skipped task, a finding whose source alone predicts it (COVID-19, as in the bundled data), PNG files
the tasks saved and one PNG that was deleted. When Debian's chromium is installed the page is
also rendered headless and the screenshot checked for content.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrfm.reporting.html import render_results_file, shortcut_flags, write_report
from cxrfm.tasks.registry import list_tasks

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _write_png(path: Path, seed: int) -> str:
    import matplotlib.image

    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(0.5, 0.15, (48, 48, 3)), 0, 1)
    img[12:36, 8:20, 0] = 1.0  # a red "lung mask" so the overlay is visibly an overlay
    matplotlib.image.imsave(path, img)
    return str(path)


def synthetic_results(folder: Path) -> dict:
    """A complete results dict; PNGs are written under ``folder`` (one referenced file is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    overlays = {k: {"image": f"images/{k}.png", "dice": d, "path": _write_png(folder / f"segmentation_{k}.png", i)}
                for i, (k, d) in enumerate((("best", 0.97), ("median", 0.92), ("worst", 0.41)))}
    zs_findings = {
        "COVID-19": {"auroc": 0.93, "ci": [0.90, 0.96], "n_pos": 277, "n_neg": 1651, "prevalence": 0.14,
                     "per_source": {"covid-chestxray-dataset": 0.61}, "within_source_auroc": 0.61,
                     "source_only_auroc": 0.99},
        "Pneumonia": {"auroc": 0.71, "ci": [0.68, 0.74], "n_pos": 904, "n_neg": 800, "prevalence": 0.53,
                      "per_source": {"kermany-pediatric-cxr": 0.74, "nih-chestxray14": 0.58},
                      "within_source_auroc": 0.66, "source_only_auroc": 0.62},
        "Cardiomegaly": {"auroc": 0.64, "ci": [0.55, 0.72], "n_pos": 40, "n_neg": 430, "prevalence": 0.09,
                         "per_source": {}, "within_source_auroc": None, "source_only_auroc": 0.5},
    }
    fr = ["0.01", "0.1", "1.0"]
    return {
        "cxrfm_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00", "seed": 0, "n_boot": 1000,
        "model": {"run_dir": "/runs/tiny-cpu", "type": "DualEncoder", "image_size": 224,
                  "config": {"image_tower": "convnext-atto", "text_tower": "minilm", "embed_dim": 256},
                  "curation": {"data_fraction": 0.4, "compute_fraction": 0.35, "curator": "prototype"}},
        "data": {"path": "/data/manifest.csv", "content_hash": "abc123def4567890", "n_rows": 2067,
                 "sources": {"kermany-pediatric-cxr": 1173, "nih-chestxray14": 478}},
        "tasks_requested": ["zeroshot", "retrieval", "probe", "segmentation", "report", "ood", "shortcut",
                            "mystery"],
        "timing_s": {"zeroshot": 3.2, "retrieval": 1.1},
        "tasks": {
            "zeroshot": {"findings": zs_findings, "mean_auroc": 0.76, "mean_within_source_auroc": 0.635,
                         "mean_source_only_auroc": 0.70, "skipped_findings": {"Fracture": "0 known positives"},
                         "prompts": "builtin", "n_rows": 2000},
            "retrieval": {"image_to_text": {"recall@1": 0.05, "recall@5": 0.2, "recall@10": 0.31, "chance@1": 0.01,
                                            "chance@5": 0.05, "chance@10": 0.1, "n": 239, "n_targets": 100},
                          "text_to_image": {"recall@1": 0.04, "recall@5": 0.18, "recall@10": 0.3, "chance@1": 0.01,
                                            "chance@5": 0.04, "chance@10": 0.09, "n": 100, "n_targets": 239},
                          "n_images": 239, "n_texts": 100},
            "probe": {"split": {"how": "seeded patient-level split", "n_train": 1500, "n_eval": 500},
                      "fractions": [0.01, 0.1, 1.0], "classifier": "logistic regression",
                      "findings": {"Pneumonia": {"auroc": dict(zip(fr, (0.6, 0.7, 0.8))),
                                                 "within_source_auroc": dict(zip(fr, (0.55, 0.62, 0.7))),
                                                 "ci": {k: [0.5, 0.9] for k in fr}, "source_only_auroc": 0.62}},
                      "baseline": {"findings": {"Pneumonia": {"auroc": dict(zip(fr, (0.52, 0.58, 0.75)))}},
                                   "mean_auroc": dict(zip(fr, (0.52, 0.58, 0.75))),
                                   "description": "from scratch"},
                      "mean_auroc": dict(zip(fr, (0.6, 0.7, 0.8))),
                      "mean_within_source_auroc": dict(zip(fr, (0.55, 0.62, 0.7))),
                      "plot": str(folder / "probe_label_efficiency.png")},
            "segmentation": {"dice": {"mean": 0.91, "ci": [0.9, 0.92], "median": 0.92},
                             "hd95": {"mean": 7.5, "median": 6.0, "n_undefined": 0, "unit": "pixels"},
                             "baseline": {"dice": {"mean": 0.85, "ci": [0.83, 0.87]}, "hd95": {"mean": 11.0},
                                          "description": "the same decoder on a random encoder"},
                             "overlays": overlays, "n": 300},
            "report": {"n": 120, "reference": {"kind": "mixed", "report_text": 20, "row_labels": 100},
                       "headline_method": "structured", "headline_rule": "fixed before scoring",
                       "label_f1": {"micro_14": 0.31, "macro_14": 0.2, "micro_5": 0.25, "macro_5": 0.18,
                                    "micro_14_ci": [0.27, 0.35]},
                       "bleu4": 0.02, "rouge_l": 0.12,
                       "retrieval": {"label_f1": {"micro_14": 0.28, "macro_14": 0.17, "micro_5": 0.2,
                                                  "macro_5": 0.15, "micro_14_ci": [0.24, 0.32]},
                                     "bleu4": 0.05, "rouge_l": 0.18},
                       "structured": {"label_f1": {"micro_14": 0.31, "macro_14": 0.2, "micro_5": 0.25,
                                                   "macro_5": 0.18, "micro_14_ci": [0.27, 0.35]},
                                      "bleu4": 0.02, "rouge_l": 0.12},
                       "radeval": {"skipped": "the RadEval package is not installed"},
                       "examples": [{"id": "images/a.png", "reference_kind": "report_text",
                                     "reference": "No acute disease.", "retrieval": "Clear lungs.",
                                     "structured": "LUNGS:\n  The lungs are clear."}]},
            "ood": {"auroc": 0.97, "fpr95": 0.08, "n_in": 100, "n_out": 60, "auroc_text": 0.9, "fpr95_text": 0.3,
                    "auroc_knn": 0.95, "fpr95_knn": 0.12, "tpr_at_gate": 0.95, "fpr_at_gate": 0.07},
            "shortcut": {"attributes": {"source": {"auroc": 0.99}, "sex": {"auroc": 0.62}, "view": 0.85},
                         "error_clusters": [{"cluster": 0, "n": 40, "error_rate": 0.6, "top_source": "nih"}]},
            "mystery": {"skipped": "no row has a mask (the manifest's mask column is empty)"},
        },
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    results = synthetic_results(folder)
    (folder / "results.json").write_text(json.dumps(results))
    path = render_results_file(folder / "results.json", tasks=list_tasks())
    return results, path, path.read_text(encoding="utf-8")


def test_sections_for_every_task_in_order(rendered):
    _, path, page = rendered
    assert path.name == "report.html"
    ids = re.findall(r'<section id="task-([a-z]+)"', page)
    assert ids == ["zeroshot", "retrieval", "probe", "segmentation", "report", "ood", "shortcut", "mystery"]
    assert "no row has a mask" in page and "skipped" in page


def test_within_source_leads_and_shortcut_is_flagged(rendered):
    results, _, page = rendered
    summary = page[page.index("id='summary'"):page.index("id='run'")]
    assert summary.index("within-source AUROC") < summary.index("pooled AUROC")
    assert "Shortcut warning" in summary and "COVID-19" in summary and "0.990" in summary
    zs = page[page.index('id="task-zeroshot"'):page.index('id="task-retrieval"')]
    header = zs[zs.index("<thead>"):zs.index("</thead>")]
    assert header.index("within-source AUROC") < header.index("pooled AUROC")
    covid_row = zs[zs.index("<td>COVID-19"):].split("</tr>")[0]
    assert "shortcut" in covid_row
    assert zs.count('<tr class="flag">') == 1  # Pneumonia (0.62) and Cardiomegaly (0.5) are not flagged
    assert [(t, f) for t, f, _ in shortcut_flags(results)] == [("zeroshot", "COVID-19")]
    sc = page[page.index('id="task-shortcut"'):page.index('id="task-mystery"')]
    assert "Warning" in sc and "source" in sc and "view" in sc


def test_self_contained_and_images_embedded(rendered):
    results, _, page = rendered
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page and "@import" not in page and "<script" not in page
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    for s in imgs:  # every embedded image decodes to a PNG
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    seg = page[page.index('id="task-segmentation"'):page.index('id="task-report"')]
    assert seg.count("<img") >= 4  # dice bars + best / median / worst overlays
    assert "0.910" in seg and "11.000" in seg and "Dice 0.410" in seg and "images/worst.png" in seg
    # the probe plot is re-drawn from the numbers, so its (never written) file is not reported missing
    assert "figure not found" not in page
    assert "Curation" in page and "0.400" in page and "abc123def4567890" in page


def test_missing_figure_is_a_note(tmp_path):
    results = synthetic_results(tmp_path)
    Path(results["tasks"]["segmentation"]["overlays"]["worst"]["path"]).unlink()
    page = write_report(results, tmp_path, tasks=list_tasks()).read_text(encoding="utf-8")
    assert "figure not found" in page and "segmentation_worst.png" in page
    full = write_report(synthetic_results(tmp_path), tmp_path, tasks=list_tasks()).read_text(encoding="utf-8")
    assert page.count('src="data:image/png') == full.count('src="data:image/png') - 1


def test_screenshot_in_headless_chromium(rendered, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); the HTML checks above still ran")
    _, path, _ = rendered
    out = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "screenshot_report.py"), str(path), str(out),
                           "--height", "1600"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("L"), dtype=np.float32)
    assert img.shape == (1600, 1280)
    assert img.std() > 10  # not a blank page: text, tables and figures
    assert (img < 100).mean() > 0.005  # some dark pixels (text)
