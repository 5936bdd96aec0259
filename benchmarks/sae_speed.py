"""How long the concepts SAE takes to train on 100k embeddings of the real dimension, on this CPU.

Synthetic embeddings stand in for a real model's (the issue allows it for the speed figure): each is a
sparse non-negative mix of ``--true-features`` fixed unit directions in ``--dim`` dimensions plus a little
noise, L2-normalised like the model's outputs. The SAE (:mod:`cxrfm.inference.sae`) trains on ``--n`` of
them; R² and the dead fraction are measured on ``--n-test`` more drawn the same way. The printout gives
the wall time of ``train_sae`` alone (data generation excluded) and ``uptime``'s load, since the machine is
shared.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from cxrfm.inference.sae import SAEConfig, evaluate_sae, train_sae


def synthetic(n: int, dim: int, n_true: int, active: float, rng: np.random.Generator) -> np.ndarray:
    dic_rng = np.random.default_rng(12345)  # the dictionary is the same for every draw
    dic = dic_rng.normal(size=(n_true, dim)).astype(np.float32)
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 10_000):
        m = min(10_000, n - i)
        codes = (rng.random((m, n_true)) < active / n_true) * rng.exponential(1.0, (m, n_true))
        x = codes.astype(np.float32) @ dic + 0.02 * rng.normal(size=(m, dim)).astype(np.float32)
        out[i:i + m] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512, help="embedding dimension (base-gpu's embed_dim is 512)")
    ap.add_argument("--true-features", type=int, default=1024)
    ap.add_argument("--active", type=float, default=12.0, help="true features per embedding, on average")
    ap.add_argument("--sizes", default="128,512,2048")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    x = synthetic(a.n, a.dim, a.true_features, a.active, rng)
    x_test = synthetic(a.n_test, a.dim, a.true_features, a.active, rng)
    cfg = SAEConfig(sizes=tuple(int(s) for s in a.sizes.split(",")), k=a.k, epochs=a.epochs,
                    batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    sae, hist = train_sae(x, cfg, progress=lambda e, info: print(f"  epoch {e}: loss {info['loss']:.4f} "
                                                                 f"({time.perf_counter() - t0:.0f} s)", flush=True))
    seconds = time.perf_counter() - t0
    m = evaluate_sae(sae, x_test)
    print(f"SAE {cfg.sizes} k={cfg.k}, {a.epochs} epochs, batch {a.batch_size}, {a.threads} thread(s) on "
          f"{a.n} x {a.dim} synthetic embeddings: {seconds:.1f} s ({seconds / 60:.2f} min); held-out R² {m['r2']:.3f}, "
          f"dead {m['dead_fraction']:.1%}; load average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
