"""Synthetic curation data and the loop protocol, shared by the curator tests (a helper module, not a test
module: test modules never import each other)."""
from __future__ import annotations

import json

import numpy as np

DIM = 16


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_pool(sizes, seed=0, noise=0.15, outliers=0, duplicates=0, text_noise=None):
    """Clustered (img, txt) embeddings. Returns img, txt, cluster id (-1 outlier, -2 duplicate).

    ``text_noise=0`` gives every pair of a cluster the same text, as label-derived template reports do.
    """
    rng = np.random.default_rng(seed)
    k = len(sizes)
    t_centres, i_centres = unit(rng.normal(size=(k, DIM))), unit(rng.normal(size=(k, DIM)))
    cid = np.repeat(np.arange(k), sizes)
    text_noise = noise if text_noise is None else text_noise
    txt = unit(t_centres[cid] + text_noise * rng.normal(size=(len(cid), DIM)))
    img = unit(i_centres[cid] + noise * rng.normal(size=(len(cid), DIM)))
    if outliers:
        # near cluster 0 in direction, but far from every member: beyond the 3-sd band
        o_txt = unit(t_centres[0] + 0.9 * rng.normal(size=(outliers, DIM)))
        o_img = unit(i_centres[0] + 0.9 * rng.normal(size=(outliers, DIM)))
        txt, img = np.vstack([txt, o_txt]), np.vstack([img, o_img])
        cid = np.concatenate([cid, -np.ones(outliers, int)])
    if duplicates:
        # near-copies of one pair at the centre of cluster 0 (the dense core): same text, image
        # jittered very slightly
        d_txt = np.repeat(unit(t_centres[:1] + 0.01 * rng.normal(size=(1, DIM))), duplicates, axis=0)
        d_img = unit(i_centres[:1] + 1e-3 * rng.normal(size=(duplicates, DIM)))
        txt, img = np.vstack([txt, d_txt]), np.vstack([img, d_img])
        cid = np.concatenate([cid, -2 * np.ones(duplicates, int)])
    perm = rng.permutation(len(cid))
    return img[perm], txt[perm], cid[perm]


def batches(curator, epoch, rng, batch_size=32):
    rows = rng.permutation(curator.epoch_rows(epoch))
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def drive(curator, img, txt, epochs=2, seed=0, batch_size=32):
    """Run the loop protocol (cxrfm.train.loop); returns the rows that got a loss in each epoch."""
    rng = np.random.default_rng(seed)
    embed = lambda idx: (img[idx], txt[idx])  # noqa: E731
    trained = []
    for epoch in range(epochs):
        curator.begin_epoch(epoch, embed)
        got = []
        for idx in batches(curator, epoch, rng, batch_size):
            if curator.selects(epoch):  # as the loop does: no scoring pass unless declared
                keep = curator.select(epoch, idx, img[idx], txt[idx])
            else:
                keep = np.ones(len(idx), dtype=bool)
            assert keep.dtype == bool and keep.shape == idx.shape
            got.append(idx[keep])
        curator.end_epoch(epoch)
        trained.append(np.sort(np.concatenate(got)))
    return trained


def json_round_trip(state):
    """What the loop does on save: JSON for plain values, arrays to safetensors (here: copied)."""
    arrays = {k: v.copy() for k, v in state.items() if isinstance(v, np.ndarray)}
    plain = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    return {**plain, **arrays}
