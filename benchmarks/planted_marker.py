"""Planted-marker benchmark: does concept shortcut discovery find an artefact the model learned?

RaVL-style (Varma et al., NeurIPS 2024) check on real chest X-rays with a shortcut we control:

1. Pediatric films (kermany-pediatric-cxr: pneumonia vs normal) are split by patient (seeded) into a
   training part and an audit part. In the training part a marker (``--marker``: a bright square, a
   letter, a word of burned-in text, a ring) is stamped in a corner of 90 % of the pneumonia films and of
   none of the normal ones; in the audit part it is stamped on half the films, independently of the class.
2. A tiny-cpu dual encoder is pretrained on the training part (label-derived pseudo-reports), an SAE
   (the ``concepts`` task's settings) is trained on its training embeddings.
3. Discovery sees no marker annotation: features are ranked by how much the audit part's zero-shot
   pneumonia errors load on them (:func:`cxrfm.tasks.concept_probe.rank_shortcuts`, error loading alone).
   The *marker feature* is the one whose activation best predicts the marker on the audit part (this
   uses the annotation, for scoring only). Printed: its rank among the suspects, precision@1 and @5 (the
   share of the top suspects whose activation predicts the marker at AUROC >= 0.75); and the same with
   a feature that fires on the *unmarked* films (AUROC <= 0.25) also counting, as "either direction".
4. Mitigation: the top suspect is mean-ablated (its activation set to its audit mean in every audit
   embedding) and the
   worst-group zero-shot AUROC (groups: marked / unmarked films) is compared before and after.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/planted_marker.py --marker square --seed 0

Zero-shot uses the template-matched prompts (the sentences the pseudo-reports were written from): a tiny
model trained for minutes has no zero-shot skill with held-out phrasings, and the benchmark asks about
its errors, not its skill. The last line is ``marker feature rank: R``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrfm import FINDINGS, Manifest, auroc, letterbox, read_image, shared_data_dir, split_patients
from cxrfm.inference.zero_shot import TEMPLATE_PROMPTS_FILE, build_zero_shot_classifier, load_prompts, zero_shot_scores
from cxrfm.tasks.concept_probe import fast_auroc, rank_shortcuts
from cxrfm.tasks.concepts import task_sae_config

MARKERS = ("square", "letter", "text", "ring")
FINDING = "Pneumonia"
SOURCE = "kermany-pediatric-cxr"
MARKER_AUROC = 0.75  # a suspect "is" the marker when its activation predicts the marker this well
CORNERS = ("tl", "tr", "bl", "br")


def stamp(img: np.ndarray, kind: str, corner: str = "tr", scale: float = 1 / 9) -> np.ndarray:
    """Draw marker ``kind`` in ``corner`` of a (S, S) uint8 image, ``scale`` of the side across."""
    from PIL import Image, ImageDraw, ImageFont

    s = img.shape[0]
    m, pad = max(6, int(s * scale)), max(2, s // 32)
    x0 = pad if corner in ("tl", "bl") else s - pad - m
    y0 = pad if corner in ("tl", "tr") else s - pad - m
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    if kind == "square":
        draw.rectangle([x0, y0, x0 + m, y0 + m], fill=255)
    elif kind == "ring":
        draw.ellipse([x0, y0, x0 + m, y0 + m], outline=255, width=max(1, m // 5))
    elif kind == "letter":
        draw.text((x0, y0 - m // 4), "R", fill=255, font=ImageFont.load_default(size=int(m * 1.3)))
    elif kind == "text":
        x0 = pad if corner in ("tl", "bl") else s - pad - 3 * m
        draw.text((x0, y0), "PORT", fill=255, font=ImageFont.load_default(size=m))
    else:
        raise SystemExit(f"unknown marker {kind!r}; choose from {', '.join(MARKERS)}")
    return np.asarray(pil)


def build_data(out: Path, kind: str, seed: int, n_train: int, n_audit: int, size: int, corner: str,
               marked_fraction: float = 0.9, scale: float = 1 / 9) -> pd.DataFrame:
    """Stamped copies of the images and a manifest with split (train / audit) and marker columns."""
    from PIL import Image

    data = shared_data_dir()
    if data is None:
        raise SystemExit("real data not found: set CXRFM_DATA to the shared data folder")
    m = Manifest.load(data / "cxr" / "manifest.csv")
    m = m.subset(np.flatnonzero(m.table["source"].to_numpy() == SOURCE))
    y = m.labels()[:, FINDINGS.index(FINDING)]
    parts = split_patients(m, (0.6, 0.4), seed=seed, names=("train", "audit"))
    rng = np.random.default_rng(seed)
    rows = []
    for part, n in (("train", n_train), ("audit", n_audit)):
        idx = np.flatnonzero((parts == part) & np.isfinite(y))
        idx = np.sort(rng.permutation(idx)[:n])
        marked = ((rng.random(len(idx)) < marked_fraction) & (y[idx] == 1) if part == "train"
                  else rng.random(len(idx)) < 0.5)
        rows += [(i, part, bool(k)) for i, k in zip(idx, marked)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = m.image_paths()
    table = []
    for i, part, marked in rows:
        img = (letterbox(read_image(paths[i]), size)[0].numpy() * 255).astype(np.uint8)
        if marked:
            img = stamp(img, kind, corner if corner != "random" else CORNERS[int(rng.integers(4))], scale)
        name = f"images/{part}_{i}.png"
        Image.fromarray(img).save(out / name)
        r = m.table.iloc[i].to_dict()
        r.update(image=name, mask="", split=part if part == "train" else "test", marker=int(marked))
        table.append(r)
    df = pd.DataFrame(table)
    df.to_csv(out / "manifest.csv", index=False)
    return df


def worst_group_auroc(y: np.ndarray, s: np.ndarray, groups: np.ndarray) -> tuple[float, dict]:
    per = {str(g): auroc(y[groups == g], s[groups == g]) for g in np.unique(groups)}
    return min(per.values()), per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--marker", default="square", help=f"one of {', '.join(MARKERS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corner", default="tr", help=f"{', '.join(CORNERS)} or random")
    ap.add_argument("--marked-fraction", type=float, default=0.9, help="share of training positives marked")
    ap.add_argument("--marker-scale", type=float, default=1 / 9, help="marker size as a share of the side")
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-audit", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=64, help="the model's input size")
    ap.add_argument("--sizes", default=None, help="SAE dictionary sizes (default: the concepts task's for this size)")
    ap.add_argument("--k", type=int, default=None, help="SAE active features (default: the concepts task's)")
    ap.add_argument("--sae-on", choices=("train", "all"), default="train",
                    help="embeddings the SAE learns from: the training part, or training + audit parts (no labels "
                         "either way; only the audit part holds the marker apart from the class)")
    ap.add_argument("--ablate", type=int, default=1, help="how many top suspects to mean-ablate")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default runs/planted_marker/KIND-SEED)")
    ap.add_argument("--json", type=Path, default=None, help="append the result as one JSON line here")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)  # the trainer draws from its own seeded generators; this only pins torch init order
    out = a.out or Path("runs/planted_marker") / f"{a.marker}-{a.corner}-{a.seed}"
    t0 = time.time()
    df = build_data(out, a.marker, a.seed, a.n_train, a.n_audit, 2 * a.image_size, a.corner, a.marked_fraction,
                    a.marker_scale)
    from cxrfm import embed_manifest, load_model, pretrain

    run = out / "run"
    from cxrfm import RunDir

    if not RunDir(run).is_finished():  # a killed run resumes instead of being evaluated half-trained
        pretrain(out / "manifest.csv", run, config="tiny-cpu", curate="none", epochs=a.epochs, seed=a.seed,
                 overrides={"image_size": a.image_size}, progress=False, cache_dir=out / "cache",
                 resume=RunDir(run).config.exists())
    model = load_model(run)
    man = Manifest.load(out / "manifest.csv")
    emb = embed_manifest(model, man, cache_dir=out / "cache")
    tr, au = np.flatnonzero(df["split"] == "train"), np.flatnonzero(df["split"] == "test")
    from cxrfm.inference.sae import reconstruct, train_sae

    import dataclasses

    cfg = task_sae_config(len(emb) if a.sae_on == "all" else len(tr), a.seed)
    if a.sizes or a.k:
        cfg = dataclasses.replace(cfg, sizes=tuple(int(v) for v in a.sizes.split(",")) if a.sizes else cfg.sizes,
                                  k=a.k or cfg.k)
    sae, _ = train_sae(emb if a.sae_on == "all" else emb[tr], cfg)
    codes = reconstruct(sae, emb[au])[0]
    y = man.labels()[au, FINDINGS.index(FINDING)] == 1
    marker = df["marker"].to_numpy()[au] == 1
    cls = build_zero_shot_classifier(model, [FINDING], load_prompts(TEMPLATE_PROMPTS_FILE))
    s = zero_shot_scores(emb[au], cls)[:, 0]
    from cxrfm.tasks.shortcut import youden_threshold

    errors = ((s >= youden_threshold(y, s)) != y).astype(float)
    suspects = rank_shortcuts(codes, {FINDING: errors}, None, top=codes.shape[1], labels={FINDING: y.astype(float)})
    marker_auc = np.nan_to_num(fast_auroc(marker, codes), nan=0.5)
    marker_feature = int(np.argmax(marker_auc))
    order = [x["feature"] for x in suspects]
    rank = order.index(marker_feature) + 1 if marker_feature in order else codes.shape[1] + 1
    is_marker = [marker_auc[f] >= MARKER_AUROC for f in order[:5]]
    p1, p5 = float(bool(is_marker[:1] and is_marker[0])), float(np.mean(is_marker)) if is_marker else 0.0
    # a feature that fires on the unmarked films (marker AUROC <= 1 - MARKER_AUROC) encodes the marker too,
    # by its absence: reported beside, as "either direction"
    strength = np.abs(marker_auc - 0.5) + 0.5
    either = [strength[f] >= MARKER_AUROC for f in order[:5]]
    either_feature = int(np.argmax(strength))
    rank_either = order.index(either_feature) + 1 if either_feature in order else codes.shape[1] + 1
    before, per_before = worst_group_auroc(y, s, marker)
    after = per_after = None
    if order:
        f = order[:a.ablate]
        # mean ablation: the features' activations are replaced by their audit means, so only what they say
        # about each image is removed (zeroing them would also move every embedding by the mean contribution)
        a_f = codes[:, f] - codes[:, f].mean(axis=0)
        contrib = a_f @ (sae.W_dec[f].detach().numpy() * float(sae.scale))  # (N, D)
        ablated = emb[au] - contrib
        ablated /= np.linalg.norm(ablated, axis=1, keepdims=True)
        after, per_after = worst_group_auroc(y, zero_shot_scores(ablated, cls)[:, 0], marker)
    res = {"marker": a.marker, "corner": a.corner, "seed": a.seed, "n_train": int(len(tr)), "n_audit": int(len(au)),
           "zero_shot_auroc": auroc(y, s), "auroc_by_group_before": per_before, "worst_group_before": before,
           "auroc_by_group_after": per_after, "worst_group_after": after, "ablated": order[:a.ablate],
           "marker_feature": marker_feature, "marker_feature_auroc": float(marker_auc[marker_feature]),
           "top_suspects": suspects[:5], "precision_at_1": p1, "precision_at_5": p5, "rank": rank,
           "top5_marker_auroc": [float(marker_auc[f]) for f in order[:5]], "rank_either": rank_either,
           "precision_at_1_either": float(bool(either[:1] and either[0])),
           "precision_at_5_either": float(np.mean(either)) if either else 0.0,
           "n_features": int(codes.shape[1]), "seconds": round(time.time() - t0, 1)}
    if a.json:
        with open(a.json, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(res, default=float) + "\n")
    print(f"zero-shot {FINDING} AUROC on the audit part {res['zero_shot_auroc']:.3f}; worst-group (marked/unmarked) "
          f"{before:.3f} -> {after if after is None else round(after, 3)} after ablating feature(s) {order[:a.ablate]}")
    print(f"marker feature {marker_feature} (marker AUROC {marker_auc[marker_feature]:.3f}); precision@1 {p1:.2f} "
          f"precision@5 {p5:.2f}; {res['seconds']} s")
    print(f"either direction (a feature firing on unmarked films counts): rank {rank_either}, precision@1 "
          f"{res['precision_at_1_either']:.2f}, precision@5 {res['precision_at_5_either']:.2f}")
    print(f"marker feature rank: {rank}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
