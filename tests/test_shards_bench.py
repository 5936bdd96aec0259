"""benchmarks/bench_gpu.py and bench_scale.py run at CI size on CPU, so they are ready when a GPU is lent."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402
import bench_scale  # noqa: E402


def test_bench_gpu_runs_tiny_on_cpu_with_the_pipeline_on_and_off(shared_data, tmp_path, one_torch_thread):
    out = tmp_path / "gpu.jsonl"
    assert bench_gpu.main(["--config", "tiny-cpu", "--set", "image_size=32", "--batches", "4", "--steps", "2",
                           "--warmup", "1", "--workers", "0", "--images", "16", "--device", "cpu",
                           "--peak-tflops", "1.0", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["batch"], r["pipeline"]) for r in lines] == [(4, "off"), (4, "on")]
    for r in lines:
        assert r["loss_finite"] and r["step_s"] > 0 and r["pairs_per_s"] == 4 / r["step_s"]
        assert r["tflop_per_step"] > 0 and r["peak_memory_gib"] > 0
        assert abs(r["mfu"] - r["achieved_tflops"] / 1.0) < 1e-12  # MFU = achieved / the given peak


def test_bench_gpu_reports_no_mfu_without_a_known_peak():
    import torch

    assert bench_gpu.peak_tflops(torch.device("cpu"), None) is None


def test_bench_scale_small(shared_data, tmp_path, one_torch_thread):
    out = tmp_path / "scale.json"
    assert bench_scale.main(["--rows", "3000", "--batch", "256", "--images", "8", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["manifest"]["rows"] == 3000 and res["manifest"]["texts"] == 3000
    assert res["curation"]["warmup_rows"] == 300 and res["curation"]["select_ms_median"] > 0
    assert res["decode"]["images"] == 8 and res["decode"]["decode_stored_at_224_images_per_s"]["cpu"] > 0
