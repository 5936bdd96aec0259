"""Training-step throughput (pairs/s) at tiny-cpu size: what the loop does vs plainer loops.

Three loops over the same seeded batches of real radiographs and their training texts, the same
model (the ``tiny-cpu`` preset: ConvNeXt ~1.1M params at 128 px + frozen MiniLM) and the same
CLIP loss/AdamW step, measured in this run on this machine:

* ``cxrfm``: images from the memory-mapped cache (``ImageCache.batch``), text-tower outputs computed
  once per unique text before training (the backbone is frozen) -- what ``cxrfm pretrain`` does;
* ``re-encode text``: the cache, but every step re-runs the frozen MiniLM on the batch's texts;
* ``plain``: every step decodes the PNGs (``read_image`` + ``letterbox``) and re-encodes the texts,
  as a loop without either cache does.

The one-off costs of the ``cxrfm`` loop (building the cache, encoding the unique texts) are printed too,
and an "epoch-equivalent" ratio that includes them, for ``--rows`` pairs. Ratios are what to quote.

    python benchmarks/bench_train.py --rows 256 --steps 4 --batch 64
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from cxrfm import (
    ImageCache, Manifest, build_model, letterbox, load_config, read_image, shared_data_dir, training_texts,
)
from cxrfm.train.losses import clip_loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="pairs in the pool (default 256)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per loop (default 4, after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=64, help="pairs per step (default 64, the tiny-cpu batch)")
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = shared_data_dir()
    if data is None:
        print("real data not found: set CXRFM_DATA", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    full = Manifest.load(data / "cxr" / "manifest.csv")
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    manifest = full.subset(np.sort(rng.choice(usable, size=min(args.rows, len(usable)), replace=False)))
    texts = training_texts(manifest)
    paths = manifest.image_paths()
    mcfg, _ = load_config(args.config)
    size = mcfg.image_size
    batches = [rng.choice(len(manifest), size=args.batch, replace=False) for _ in range(args.steps + 1)]
    print(f"{args.config}: {mcfg.image_tower} at {size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{len(manifest)} pairs ({len(set(texts))} unique texts), torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = ImageCache.build(manifest, size=size, cache_dir=tmp)
        cache_s = time.perf_counter() - t

        model = build_model(mcfg, seed=args.seed).train()
        unique = sorted(set(texts), key=len)
        t = time.perf_counter()
        with torch.no_grad():
            feats = torch.cat([model.text_features(unique[i:i + 256]) for i in range(0, len(unique), 256)])
        text_cache_s = time.perf_counter() - t
        row_feat = feats[torch.as_tensor([unique.index(x) for x in texts])]  # (N, H)

        def cached_images(idx):
            return cache.batch(idx)

        def decoded_images(idx):
            return torch.stack([letterbox(read_image(paths[i]), size) for i in idx])  # (B, 1, S, S)

        loops = {
            "cxrfm": (cached_images, lambda idx: row_feat[torch.as_tensor(idx)]),
            "re-encode text": (cached_images, lambda idx: [texts[i] for i in idx]),
            "plain": (decoded_images, lambda idx: [texts[i] for i in idx]),
        }
        # The loops take turns step by step, so a busy machine slows them alike.
        state = {}
        for name in loops:
            model = build_model(mcfg, seed=args.seed).train()
            state[name] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
        spent = dict.fromkeys(loops, 0.0)
        for i, idx in enumerate(batches):
            for name, (images_of, texts_of) in loops.items():
                model, opt = state[name]
                t = time.perf_counter()
                out = model(images_of(idx), texts_of(idx))
                loss = clip_loss(out.image_emb, out.text_emb, out.logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i > 0:  # step 0 is the warm-up
                    spent[name] += time.perf_counter() - t
        rate = {name: args.steps * args.batch / spent[name] for name in loops}
        for name in loops:
            print(f"  {name:15s} {rate[name]:7.1f} pairs/s")

    base = rate["cxrfm"]
    print(f"ratio cxrfm / re-encode text: {base / rate['re-encode text']:.2f}x")
    print(f"ratio cxrfm / plain:          {base / rate['plain']:.2f}x")
    n = len(manifest)
    one_off = cache_s + text_cache_s
    print(f"one-off: cache build {cache_s:.1f} s, text encoding {text_cache_s:.1f} s ({len(unique)} texts)")
    for epochs in (1, 10):
        ours = one_off + epochs * n / base
        plain = epochs * n / rate["plain"]
        print(f"{epochs:2d} epoch(s) over {n} pairs incl. one-off costs: cxrfm {ours:.1f} s, plain {plain:.1f} s, "
              f"ratio {plain / ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
