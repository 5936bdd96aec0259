"""How the data path and curation grow with N, measured on this machine (docs/scale.md quotes it).

Three measurements, each single-threaded (per core) unless stated:

* ``manifest``: a synthetic manifest of ``--rows`` rows (per-finding label columns, a report of a few
  sentences, patients, a split) written as CSV, then ``Manifest.load`` (read + validate),
  ``content_hash`` and ``training_texts`` (what every ``cxrfm pretrain`` start pays), with peak RSS.
* ``curation``: the ``prototype`` curator (CheXficient's per-batch selection) built for ``--rows``
  rows: its warm-up k-means on 10 % of them (one-off per run) and ``select`` on a gathered global batch
  of ``--batch`` pairs of 512-d embeddings (assignment, bands, farthest-point sampling, Sinkhorn EMA),
  the per-step cost as the training loop pays it, from the scoring output on its device to the flags on
  the host, along two paths: ``numpy`` (the output copied to the host first: a curator without
  ``accepts_tensors``, and every run before the loops handed tensors over) and ``tensor`` (``select``
  on the output where it lies), on the CPU and, when CUDA is available (``--device auto``, the
  default), on the GPU too; with the farthest-point sampling's share and its dependent steps (picks one
  band at a time on the CPU; lockstep steps on a GPU), and how many steps give the same flags on every
  path. Embeddings are seeded random unit vectors (the cost does not depend on values).
* ``decode``: ``--images`` real radiographs written to shards at 256 px, then the streaming path per
  image: PNG decode + resize to 224 (``decode_sample``), the same from shards written at 224 (decode
  only), the whole stream (tar read, shuffle buffer, decode + resize) in one process, and the source
  files (``read_image`` + letterbox); bytes per stored sample (storage per pair).
* ``memory`` (``--config``, default base-gpu): activation bytes autograd saves per sample under bf16
  autocast (on CPU), and parameter + gradient + AdamW bytes: the inputs of the per-rank memory estimate.

    python benchmarks/bench_scale.py --rows 1000000 --batch 2048 --images 256 --out scale.json
    python benchmarks/bench_scale.py --rows 1000000 --batch 2048 --parts curation --out scale.json  # a GPU box
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

from cxrfm import FINDINGS

SENTENCES = ["The lungs are clear.", "No pleural effusion or pneumothorax.", "Heart size is normal.",
             "Mild cardiomegaly.", "Small left pleural effusion.", "Patchy opacity in the right lower lobe.",
             "No acute cardiopulmonary process.", "Endotracheal tube terminates 4 cm above the carina.",
             "Degenerative changes of the thoracic spine.", "Mild pulmonary vascular congestion."]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_table(n: int, seed: int):
    import pandas as pd

    rng = np.random.default_rng(seed)
    sents = np.array(SENTENCES)
    picks = rng.integers(0, len(SENTENCES), size=(n, 4))
    table = {"image": [f"files/p{i // 3:07d}/s{i:08d}.jpg" for i in range(n)],
             "patient_id": [f"p{i // 3:07d}" for i in range(n)], "source": ["mimic-cxr"] * n,
             "view": rng.choice(["PA", "AP", "LATERAL"], size=n),
             "report": [" ".join(s) for s in sents[picks]],
             "split": rng.choice(["train", "val", "test"], p=[0.8, 0.1, 0.1], size=n)}
    for f in FINDINGS[:14]:
        table[f] = rng.choice(["1", "0", "-1", ""], p=[0.1, 0.2, 0.05, 0.65], size=n)
    return pd.DataFrame(table)


def bench_manifest(n: int, seed: int, folder: Path) -> dict:
    from cxrfm import Manifest, training_texts

    t = time.perf_counter()
    path = folder / "manifest.csv"
    synthetic_table(n, seed).to_csv(path, index=False)
    made = time.perf_counter() - t
    rss0 = peak_rss_mb()
    got: dict = {}
    load = timed(lambda: got.update(m=Manifest.load(path)))
    hashed = timed(lambda: got["m"].content_hash())
    text_s = timed(lambda: got.update(texts=training_texts(got["m"], skip=True)))
    texts = got["texts"]
    return {"rows": n, "csv_mb": path.stat().st_size / 2**20, "write_csv_s": made, "load_validate_s": load,
            "content_hash_s": hashed, "training_texts_s": text_s, "texts": sum(x is not None for x in texts),
            "peak_rss_mb_before_load": rss0, "peak_rss_mb_after": peak_rss_mb()}


def curation_paths(device: str) -> list[tuple[str, str]]:
    """(device, path) pairs the curation part measures: the loop's numpy path (the scoring output copied to
    the host, then ``select``) and its tensor path (``select`` on the output where it lies), on the CPU and,
    with ``--device auto`` when CUDA is available or ``--device cuda``, on the GPU too."""
    devices = ["cpu"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device auto (the CPU paths only)")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    elif device not in ("cpu", "auto"):
        raise SystemExit(f"--device {device!r}: choose auto, cpu or cuda")
    return [(d, path) for d in devices for path in ("numpy", "tensor")]


def bench_curation(n: int, batch: int, seed: int, repeats: int = 20, device: str = "auto") -> dict:
    """The ``prototype`` warm-up once, then, from the same warmed-up state, ``repeats`` select steps on the
    same batches along every path of :func:`curation_paths`: as the training loop calls it
    (``split_embeddings`` of the (B, 2D) scoring output, then ``select_mask``), timed from the output on
    its device to the flags on the host. Each path starts with one untimed step (the state's move to the
    device, kernel start-up); the flags of every step are compared with the first path's."""
    from cxrfm.train.curation import CurationContext, build_curator, prototype, select_mask
    from cxrfm.train.inputs import split_embeddings

    dim = 512
    embed_s = 0.0

    def embed(rows):
        nonlocal embed_s
        t = time.perf_counter()
        g = np.random.default_rng([seed, int(rows[0]), len(rows)])
        a = g.standard_normal((len(rows), dim)).astype(np.float32)
        b = g.standard_normal((len(rows), dim)).astype(np.float32)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        embed_s += time.perf_counter() - t
        return a, b

    warmed = build_curator("prototype", context=CurationContext(n=n, budget=0.2, seed=seed))
    t, c = time.perf_counter(), time.process_time()
    warmed.begin_epoch(0, embed)
    warm = time.perf_counter() - t - embed_s
    warm_cpu = time.process_time() - c - embed_s  # (embed's wall time, about its CPU time single-threaded)
    state = warmed.state_dict()
    plan = [np.random.default_rng([seed, 1, step]).choice(n, size=batch, replace=False) for step in range(1 + repeats)]

    # the farthest-point share of select, and its dependent steps: sum(m) one band at a time (the CPU
    # path), max(m) with every band in lockstep (the GPU path)
    fps = {"wall": 0.0, "cpu": 0.0, "picks": [], "lockstep_steps": [], "sync": None}
    real_groups = prototype.farthest_point_groups

    def timed_groups(x, groups, lockstep=None):
        w, c = time.perf_counter(), time.process_time()
        out = real_groups(x, groups, lockstep)
        fps["sync"]()
        fps["wall"] += time.perf_counter() - w
        fps["cpu"] += time.process_time() - c
        fps["picks"].append(sum(m for _, m, _ in groups))
        fps["lockstep_steps"].append(max((m for _, m, _ in groups), default=0))
        return out

    paths, reference = {}, None
    prototype.farthest_point_groups = timed_groups
    try:
        for dev_name, path in curation_paths(device):
            dev = torch.device(dev_name)
            sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
            fps.update(sync=sync, picks=[], lockstep_steps=[])
            cur = build_curator("prototype", context=CurationContext(n=n, budget=0.2, seed=seed))
            cur.load_state_dict(state)
            times, cpu, fps_wall, fps_cpu, flags = [], [], [], [], []
            for step, idx in enumerate(plan):
                img, txt = embed(idx)
                z = torch.from_numpy(np.concatenate([img, txt], axis=1)).to(dev)  # as the scoring pass leaves it
                sync()
                fps["wall"] = fps["cpu"] = 0.0
                t, c = time.perf_counter(), time.process_time()
                keep = select_mask(cur, 0, idx, *split_embeddings(z, dim, tensors=path == "tensor"))  # on the host
                if step == 0:
                    continue  # untimed: moves the state to the device, starts the kernels
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                fps_wall.append(fps["wall"])
                fps_cpu.append(fps["cpu"])
                flags.append(keep)
            reference = reference or (f"{dev_name}/{path}", flags)
            paths[f"{dev_name}/{path}"] = {
                "select_ms_median": 1000 * float(np.median(times)),
                "select_ms_p90": 1000 * float(np.quantile(times, 0.9)),
                "select_cpu_ms_median": 1000 * float(np.median(cpu)),
                "fps_ms_median": 1000 * float(np.median(fps_wall)),
                "fps_cpu_ms_median": 1000 * float(np.median(fps_cpu)),
                "fps_picks_median": float(np.median(fps["picks"][1:])),
                "fps_lockstep_steps_median": float(np.median(fps["lockstep_steps"][1:])),
                "kept_per_step_median": float(np.median([k.sum() for k in flags])),
                f"steps_with_the_same_flags_as_{reference[0]}": sum(np.array_equal(a, b)
                                                                    for a, b in zip(flags, reference[1]))}
    finally:
        prototype.farthest_point_groups = real_groups
    main_path = list(paths)[-1]  # the tensor path on the last device: what a run there pays
    return {"rows": n, "batch": batch, "dim": dim, "steps": repeats, "device": main_path.split("/")[0],
            "warmup_rows": int(warmed.embedded_rows), "warmup_kmeans_s": warm, "warmup_kmeans_cpu_s": warm_cpu,
            **paths[main_path], "paths": paths}


def print_curation_paths(res: dict) -> None:
    """One line per path, for reading (the JSON line after it holds the same figures)."""
    same = next(k for k in next(iter(res["paths"].values())) if k.startswith("steps_with_the_same_flags"))
    print(f"prototype select, batch {res['batch']} x {2 * res['dim']}-d, N = {res['rows']}, {res['steps']} steps "
          f"(wall ms; CPU ms of this process):", flush=True)
    for name, r in res["paths"].items():
        print(f"  {name:<12} median {r['select_ms_median']:8.2f} ms  p90 {r['select_ms_p90']:8.2f} ms  "
              f"cpu {r['select_cpu_ms_median']:8.2f} ms  farthest-point {r['fps_ms_median']:7.2f} ms  "
              f"{same.replace('_', ' ')}: {r[same]}/{res['steps']}", flush=True)


def bench_decode(n_images: int, seed: int, folder: Path) -> dict:
    from cxrfm import Manifest, letterbox, read_image
    from cxrfm.data.shards import ShardSet, decode_sample, write_shards
    from cxrfm import shared_data_dir
    from cxrfm.train.shard_stream import ShardStream

    data = shared_data_dir()
    if data is None:
        return {"error": "real data not found: set CXRFM_DATA"}
    full = Manifest.load(data / "cxr" / "manifest.csv")
    rows = np.sort(np.random.default_rng(seed).choice(len(full), size=min(n_images, len(full)), replace=False))
    sub = full.subset(rows)
    sub.save(folder / "img.csv")
    write_s = timed(lambda: write_shards(folder / "img.csv", folder / "shards", size=256, per_shard=64))
    write_shards(folder / "img.csv", folder / "shards224", size=224, per_shard=64)  # at the training size
    shards, at224 = ShardSet.open(folder / "shards"), ShardSet.open(folder / "shards224")
    raw = [(d, e) for s in range(len(shards.shards)) for _, d, e in shards.iter_raw(s)]
    raw224 = [(d, e) for s in range(len(at224.shards)) for _, d, e in at224.iter_raw(s)]
    wanted = np.ones(shards.n_samples, dtype=bool)
    runs = {
        "decode_resize_256_to_224": lambda: [decode_sample(d, e, 224) for d, e in raw],
        "decode_stored_at_224": lambda: [decode_sample(d, e, 224) for d, e in raw224],
        "stream_256_to_224": lambda: list(iter(ShardStream(shards, wanted, seed=0, epoch=0, rank=0, world=1,
                                                           workers=1, buffer=256, image_size=224))),
        "source_read_letterbox_224": lambda: [letterbox(read_image(p), 224) for p in sub.image_paths()],
    }
    out = {"images": len(raw), "shard_write_images_per_s": {k: len(raw) / v for k, v in write_s.items()}}
    for name, fn in runs.items():
        out[f"{name}_images_per_s"] = {k: len(raw) / v for k, v in timed(fn).items()}
    out["bytes_per_sample_256px"] = sum(s.bytes for s in shards.shards) / len(raw)
    out["bytes_per_sample_224px"] = sum(s.bytes for s in at224.shards) / len(raw224)
    return out


def timed(fn) -> dict:
    """Seconds of ``fn()``: wall clock, and this process's CPU time (per core when the machine is shared)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - w, "cpu": time.process_time() - c}


def bench_memory(config: str, batch: int = 2) -> dict:
    """Bytes autograd saves for the backward per sample (the activations), under bf16 autocast on CPU,
    and the parameter/gradient/AdamW bytes of the trainable parameters (fp32: 4 + 4 + 8 per parameter)."""
    from cxrfm import build_model, load_config

    model_cfg, _ = load_config(config)
    model = build_model(model_cfg, seed=0).train()
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    s = model.image_size
    x = torch.rand(batch, 1, s, s)
    texts = ["The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."] * batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, texts)
    out.image_emb.float().sum().backward()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"config": config, "image_size": s, "saved_activation_mb_per_sample": saved / batch / 2**20,
            "trainable_params_m": trainable / 1e6, "frozen_params_m": frozen / 1e6,
            "param_grad_adam_gb": (16 * trainable + 4 * frozen) / 2**30,
            "note": "CPU autocast bf16; SDPA on GPU (flash/memory-efficient) saves no (N, N) attention maps, "
                    "so this is an upper bound for the attention part"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic manifest / curator")
    ap.add_argument("--batch", type=int, default=2048, help="gathered global batch for select (default 2048)")
    ap.add_argument("--images", type=int, default=256, help="real images for the decode measurement")
    ap.add_argument("--parts", default="manifest,curation,decode", help="any of manifest,curation,decode,memory")
    ap.add_argument("--config", default="base-gpu", help="preset for the memory part (default base-gpu)")
    ap.add_argument("--device", default="auto",
                    help="curation part: the numpy and tensor paths of select on the CPU, and on the GPU too with "
                         "auto (the default) when CUDA is available, or cuda; cpu: the CPU only")
    ap.add_argument("--repeats", type=int, default=20, help="timed select steps per curation path (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # per core
    result: dict = {"threads": 1, "load_average_at_start": list(__import__("os").getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for part in args.parts.split(","):
            t = time.perf_counter()
            if part == "manifest":
                result[part] = bench_manifest(args.rows, args.seed, tmp)
            elif part == "curation":
                result[part] = bench_curation(args.rows, args.batch, args.seed, args.repeats, device=args.device)
                print_curation_paths(result[part])
            elif part == "decode":
                result[part] = bench_decode(args.images, args.seed, tmp)
            elif part == "memory":
                result[part] = bench_memory(args.config)
            else:
                print(f"unknown part {part!r}", file=sys.stderr)
                return 2
            print(json.dumps({part: result[part], "wall_s": round(time.perf_counter() - t, 1)}), flush=True)
    result["load_average_at_end"] = list(__import__("os").getloadavg())
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
