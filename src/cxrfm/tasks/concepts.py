"""The ``concepts`` task: an SAE over the model's image embeddings, scored on held-out patients, and used.

Rows come from :func:`cxrfm.tasks.split.resolve_split` (a training manifest, the ``split`` column, or a
seeded patient split). The SAE is trained on the training rows' embeddings (or loaded from a concepts
folder given as ``context.concepts``, refused when it comes from another run) and then:

- reconstruction R² and the dead fraction on the evaluation rows (other patients): ``r2``, ``dead_fraction``;
  beside it, second looks at the dictionary: ``dead_fraction_train`` (features that fire on none of the
  training rows), ``rare_fraction`` (under 1 % of the evaluation rows) and ``negligible_fraction`` (features
  whose removal lowers the evaluation R² by under 1e-4: firing is not the same as mattering);
- a concept bottleneck per finding, 10 features against the dense probe on the same split, within
  source where possible: ``bottleneck.<finding>.{auroc, dense_auroc}``;
- RaVL-like shortcut suspects on the evaluation rows: features that predict a nuisance attribute
  (source, view, sex, age band) and on which a finding's zero-shot errors load: ``shortcuts``;
- a grid of named features with their top images (``features``; thumbnails saved beside results.json).

Result keys: ``r2``, ``dead_fraction``, ``bottleneck``, ``shortcuts`` (a list of
{feature, attribute, auroc, name, ...}), ``features``, ``sae``, ``split``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.findings import FINDINGS
from ..inference.concepts import Concepts, load_concepts, thumbnail_strip, train_concepts
from ..inference.sae import SAEConfig, evaluate_sae
from ..run import RunDir
from .concept_probe import BOTTLENECK_K, bottleneck_probe, rank_shortcuts
from .split import resolve_split

if TYPE_CHECKING:
    from .suite import EvalContext

MIN_TRAIN_ROWS = 64
GRID = 12  # features shown in the report
THUMBS = 6  # thumbnails per feature
TARGET_STEPS = 1600  # what the default 80 epochs give on ~1,250 training embeddings


def task_sae_config(n_train: int, seed: int) -> SAEConfig:
    """Settings for ``n_train`` training embeddings: the defaults (chosen on a validation part,
    docs/concepts.md), a quarter-size dictionary under 1,000 rows (a large one over few embeddings leaves
    features dead), and enough epochs for about :data:`TARGET_STEPS` optimiser steps."""
    base = SAEConfig(seed=seed)
    sizes, k = (base.sizes, base.k) if n_train >= 1000 else (tuple(max(2, s // 4) for s in base.sizes),
                                                               max(1, base.k // 4))
    steps_per_epoch = max(1, n_train // base.batch_size)
    epochs = int(np.clip(-(-TARGET_STEPS // steps_per_epoch), 20, 400))
    return SAEConfig(sizes=sizes, k=k, epochs=epochs, batch_size=base.batch_size, lr=base.lr, seed=seed)


def _train_embeddings(context: "EvalContext", split) -> np.ndarray:
    if not split.train_external:
        return context.image_embeddings(split.train_rows)
    from .embed import embed_manifest

    return embed_manifest(context.model, split.train.subset(split.train_rows), cache_dir=context.cache_dir,
                          batch_size=context.batch_size)


def _concepts(context: "EvalContext", train_m, emb_tr: np.ndarray, emb_te: np.ndarray) -> tuple[Concepts, str]:
    folder = getattr(context, "concepts", None)
    if folder is not None:
        import torch

        concepts = load_concepts(folder, context.run_dir)
        concepts.sae.check_input(torch.as_tensor(emb_te[:1]))  # another dimension: an error naming the fix
        return concepts, f"loaded from {folder}"
    out = context.out_dir / "concepts" if context.out_dir is not None else None
    cfg = task_sae_config(len(emb_tr), int(context.rng("concepts/sae").integers(2**31)))
    concepts = train_concepts(context.model, context.run_dir, train_m, emb_tr, out=out, config=cfg, held_out=emb_te)
    how = f"trained on the {len(emb_tr)} training rows' embeddings" + (f", saved in {out}" if out else "")
    if out is not None and context.run_dir is not None and not (RunDir(context.run_dir).concepts_dir / "sae.json").exists():
        # like the findings head: what eval fitted is what `serve` / `analyze` then use for this run
        shutil.copytree(out, RunDir(context.run_dir).concepts_dir, ignore=shutil.ignore_patterns("state"))
        how += f" and copied into the run ({RunDir(context.run_dir).concepts_dir}) for analyze/serve"
    return concepts, how


def _bottleneck(context, concepts, train_m, eval_m, emb_tr, emb_te, codes_tr, codes_te) -> dict:
    y_tr_all, y_te_all = train_m.labels(), eval_m.labels()
    sources = eval_m.table["source"].astype(str).to_numpy()
    names = [concepts.name(f) for f in range(codes_tr.shape[1])]
    wanted = list(context.findings) if context.findings is not None else list(FINDINGS)
    out = {}
    for f in wanted:
        j = FINDINGS.index(f)
        ktr, kte = np.isfinite(y_tr_all[:, j]), np.isfinite(y_te_all[:, j])
        y_tr, y_te = y_tr_all[ktr, j], y_te_all[kte, j]
        if min((y_tr == 1).sum(), (y_tr == 0).sum()) < context.min_pos or \
                (y_te == 1).sum() < context.min_pos or (y_te == 0).sum() < context.min_neg:
            continue
        out[f] = bottleneck_probe(codes_tr[ktr], emb_tr[ktr], y_tr, codes_te[kte], emb_te[kte], y_te, sources[kte],
                                  k=BOTTLENECK_K, names=names)
    return out


def _zero_shot_errors(context, eval_m, emb_te) -> dict[str, np.ndarray]:
    """finding -> (N,) 1 = zero-shot error at Youden's threshold, 0 = correct, NaN = unlabelled."""
    from ..inference.zero_shot import build_zero_shot_classifier, zero_shot_scores
    from .shortcut import youden_threshold

    labels = eval_m.labels()
    wanted = list(context.findings) if context.findings is not None else list(FINDINGS)
    usable = [f for f in wanted if f in context.prompts
              and (labels[:, FINDINGS.index(f)] == 1).sum() >= context.min_pos
              and (labels[:, FINDINGS.index(f)] == 0).sum() >= context.min_neg]
    if not usable:
        return {}
    scores = zero_shot_scores(emb_te, build_zero_shot_classifier(context.model, usable, context.prompts),
                              context.logit_scale)
    out = {}
    for i, f in enumerate(usable):
        y = labels[:, FINDINGS.index(f)]
        known = np.isfinite(y)
        t = youden_threshold(y[known] == 1, scores[known, i])
        e = np.full(len(y), np.nan)
        e[known] = ((scores[known, i] >= t) != (y[known] == 1)).astype(float)
        out[f] = e
    return out


def _grid(context, concepts, train_m, bottleneck: dict, shortcuts: list) -> list[dict]:
    """The features worth showing: shortcut suspects, then bottleneck features, then the most active."""
    picks = [s["feature"] for s in shortcuts] + [f for r in bottleneck.values() for f in r["features"][:2]]
    by_activity = sorted(range(len(concepts.names)), key=lambda f: -concepts.names[f]["n_active"])
    picks = list(dict.fromkeys(picks + by_activity))[:GRID]
    paths = dict(zip(train_m.ids, train_m.image_paths()))
    out = []
    for f in picks:
        n = concepts.names[f]
        entry = {k: n.get(k) for k in ("feature", "name", "n_active", "findings", "words", "metadata", "text")}
        entry["top_ids"] = n.get("top_ids", [])[:THUMBS]
        if context.out_dir is not None and entry["top_ids"]:
            png = context.out_dir / "concepts" / f"feature_{f}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(thumbnail_strip([paths[i] for i in entry["top_ids"] if i in paths]))
            entry["thumbnails_png"] = str(Path("concepts") / png.name)
        out.append(entry)
    return out


def run(context: "EvalContext") -> dict:
    """The ``concepts`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`)."""
    from .shortcut import attribute_values
    from .suite import TaskSkipped

    split = resolve_split(context)
    if len(split.train_rows) < MIN_TRAIN_ROWS:
        raise TaskSkipped(f"{len(split.train_rows)} training rows; an SAE needs >= {MIN_TRAIN_ROWS}")
    train_m = split.train.subset(split.train_rows)
    eval_m = context.manifest.subset(split.eval_rows)
    emb_tr, emb_te = _train_embeddings(context, split), context.image_embeddings(split.eval_rows)
    concepts, how = _concepts(context, train_m, emb_tr, emb_te)
    metrics, metrics_train = evaluate_sae(concepts.sae, emb_te), evaluate_sae(concepts.sae, emb_tr)
    codes_tr, codes_te = concepts.encode(emb_tr), concepts.encode(emb_te)
    bottleneck = _bottleneck(context, concepts, train_m, eval_m, emb_tr, emb_te, codes_tr, codes_te)
    errors = _zero_shot_errors(context, eval_m, emb_te)
    names = [concepts.name(f) for f in range(codes_te.shape[1])]
    y_te = {f: eval_m.labels()[:, FINDINGS.index(f)] for f in errors}
    shortcuts = rank_shortcuts(codes_te, errors, attribute_values(eval_m), names, labels=y_te) if errors else []
    ratios = [r["ratio"] for r in bottleneck.values() if r.get("ratio") is not None]
    return {
        "r2": metrics["r2"], "dead_fraction": metrics["dead_fraction"], "mean_active": metrics["mean_active"],
        "dead_fraction_train": metrics_train["dead_fraction"], "rare_fraction": metrics["rare_fraction"],
        "negligible_fraction": metrics["negligible_fraction"],
        "r2_nested": metrics["r2_nested"], "measured_on": f"{len(emb_te)} evaluation rows (held-out patients)",
        "sae": {"how": how, "config": concepts.sae.config.to_json(), "n_features": concepts.sae.config.n_features},
        "bottleneck": bottleneck, "bottleneck_k": BOTTLENECK_K,
        "bottleneck_mean_ratio": float(np.mean(ratios)) if ratios else None,
        "shortcuts": shortcuts,
        "shortcut_findings": sorted(errors),
        "features": _grid(context, concepts, train_m, bottleneck, shortcuts),
        "naming_fallback": concepts.info.get("fallback"),
        "split": split.describe(),
    }


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="concepts", run=run, title="Concepts (sparse autoencoder)", needs=(),
    result_keys=("r2", "dead_fraction", "bottleneck", "shortcuts", "features"),
    console="cxrfm.reporting.sections.concepts:console", html="cxrfm.reporting.sections.concepts:html",
    default=False, order=75, summary="SAE features named from the data; bottleneck probe; shortcut suspects"))
