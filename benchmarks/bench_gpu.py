"""Training-step throughput of a preset: pairs/s, step time, peak memory and model FLOPs utilisation.

One process, one device: the ``cxrfm pretrain`` step (forward under the preset's autocast, CLIP/SigLIP
loss, backward, gradient clipping, AdamW) at each batch size of ``--batches``, with the data pipeline

* ``off``: the images are already on the device (the model's ceiling), and
* ``on``: the images stream from tar shards (``cxrfm shard``) through ``--workers`` DataLoader
  processes (:class:`cxrfm.train.shard_stream.ShardStream`), decoded and moved every step,

so that the loader's share is the difference. The same texts are used in both (a fixed list of report
sentences), so the difference is the image path. FLOPs per step are counted once with
``torch.utils.flop_counter.FlopCounterMode`` on one forward (backward = 2 x forward for trainable
towers, as :mod:`cxrfm.train.accounting` counts); MFU = FLOPs per step / step time / ``--peak-tflops``
(by default the dense bf16 peak of a known GPU; none on CPU, so MFU is not reported there). Peak
memory: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU.

    python benchmarks/bench_gpu.py --config base-gpu --batches 64,128,256,512 --workers 8 --steps 20
    python benchmarks/bench_gpu.py --config tiny-cpu --set image_size=32 --batches 4 --steps 2 --workers 0
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrfm import load_config
from cxrfm.train.losses import contrastive_loss
from cxrfm.train.optim import make_optimizer

# Dense bf16 tensor-core peaks (vendor datasheets), TFLOP/s, matched on the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}
TEXTS = ["The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.",
         "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
         "Patchy opacity in the right lower lobe, concerning for pneumonia.",
         "Endotracheal tube terminates 4 cm above the carina. No acute cardiopulmonary process."]


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_flops(model, batch: int, image_size: int, device) -> float:
    """FLOPs of one training step at ``batch``: forward x (1 + 2 when the tower trains)."""
    from cxrfm.train.accounting import measure_forward_flops

    model.eval()
    img = measure_forward_flops(model.image, torch.zeros(1, 1, image_size, image_size, device=device))
    txt = measure_forward_flops(model.text_features, TEXTS) / len(TEXTS)
    model.train()
    text_trains = any(p.requires_grad for p in model.text.backbone.parameters())
    return batch * (3 * img + (3 if text_trains else 1) * txt)


def make_shards(folder: Path, size: int, images: int) -> Path:
    """Shards of ``images`` real radiographs from the shared data (the bench's default source)."""
    from cxrfm import Manifest, shared_data_dir, write_shards

    data = shared_data_dir()
    if data is None:
        raise SystemExit("no --shards and no real data (set CXRFM_DATA) to make them from")
    full = Manifest.load(data / "cxr" / "manifest.csv")
    rows = np.sort(np.random.default_rng(0).choice(len(full), size=min(images, len(full)), replace=False))
    full.subset(rows).save(folder / "manifest.csv")
    return write_shards(folder / "manifest.csv", folder / "shards", size=size, per_shard=max(1, images // 8))


def image_batches(args, shards_dir: Path | None, batch: int, image_size: int, device):
    """An endless iterator of (B, 1, S, S) device tensors, streamed from shards or one synthetic batch."""
    if shards_dir is None:
        x = torch.rand(batch, 1, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
        while True:
            yield x
    from cxrfm import ShardSet
    from cxrfm.train.shard_stream import ShardStream, stream_loader

    shards = ShardSet.open(shards_dir)
    wanted = np.ones(shards.n_samples, dtype=bool)
    epoch = 0
    while True:
        stream = ShardStream(shards, wanted, seed=0, epoch=epoch, rank=0, world=1, workers=max(1, args.workers),
                             buffer=256, image_size=image_size)
        it = stream_loader(stream)
        pending = []
        for _, x in it:
            pending.append(x)
            if len(pending) == batch:
                yield torch.stack(pending).to(device, non_blocking=True).float().div_(255.0)
                pending = []
        epoch += 1


def run_one(args, model_cfg, train_cfg, batch: int, pipeline: str, shards_dir, device, peak) -> dict:
    from cxrfm import build_model

    model = build_model(model_cfg, seed=0).to(device).train()
    opt = make_optimizer(model, train_cfg)
    s = model.image_size
    flops = step_flops(model, batch, s, device)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    use_bf16 = device.type == "cuda" and train_cfg.precision == "bf16"
    batches = image_batches(args, shards_dir if pipeline == "on" else None, batch, s, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        x = next(batches)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            out = model(x, texts)
        loss = contrastive_loss(model_cfg.loss, out.image_emb.float(), out.text_emb.float(), out.logit_scale.float(),
                                None if out.logit_bias is None else out.logit_bias.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = float(np.median(times))
    mem = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"config": args.config, "device": str(torch.cuda.get_device_name(device) if device.type == "cuda"
                                                 else "cpu"),
            "batch": batch, "pipeline": pipeline, "workers": args.workers if pipeline == "on" else 0,
            "step_s": step, "pairs_per_s": batch / step, "tflop_per_step": flops / 1e12,
            "achieved_tflops": flops / step / 1e12, "mfu": None if peak is None else flops / step / 1e12 / peak,
            "peak_memory_gib": mem, "memory_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
            "loss_finite": bool(torch.isfinite(loss).item())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="base-gpu", help="preset or config JSON (default base-gpu)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", default="64,128,256,512", help="batch sizes (default 64,128,256,512)")
    ap.add_argument("--pipeline", default="off,on", help="off, on or both (default off,on)")
    ap.add_argument("--shards", type=Path, default=None, help="shard folder (default: made from --images real rows)")
    ap.add_argument("--images", type=int, default=512, help="real rows to make shards of when no --shards")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers for pipeline on (default 8)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    args = ap.parse_args(argv)

    overrides = {}
    for kv in args.overrides:  # KEY=VALUE, VALUE read as JSON when it parses (as `cxrfm pretrain --set`)
        key, _, value = kv.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    model_cfg, train_cfg = load_config(args.config, overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    pipelines = [p for p in args.pipeline.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        shards_dir = args.shards
        if "on" in pipelines and shards_dir is None:
            shards_dir = make_shards(Path(tmp), size=max(model_cfg.image_size, 32), images=args.images)
        for batch in [int(b) for b in args.batches.split(",")]:
            for pipeline in pipelines:
                try:
                    res = run_one(args, model_cfg, train_cfg, batch, pipeline, shards_dir, device, peak)
                except torch.OutOfMemoryError:
                    res = {"config": args.config, "batch": batch, "pipeline": pipeline, "error": "out of memory"}
                    torch.cuda.empty_cache()
                line = json.dumps(res)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as f:
                        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
