"""The ``anatomy`` task: supervised heart / lung segmentation, few-shot in-context segmentation against
its baselines, and the cardiothoracic ratio (CTR), on a manifest with ``mask_<structure>`` columns.

Rows: the fixed patient-disjoint split of :func:`cxrfm.data.anatomy.anatomy_split` (train / val /
test, 60/20/20); everything is fitted on ``train`` and scored on ``test``. A manifest with fewer than
``min_patients`` patients with masks falls back to the suite's split (:func:`resolve_split`) and says
so under ``split.how``. Every ``mask_<structure>`` column counts, whatever its name.

* ``supervised``: :func:`cxrfm.train.anatomy.fit_supervised` on the training rows (every structure
  at once) -> per structure Dice (mean, patient-bootstrap CI, median) and HD95 in pixels at each
  image's own size; best / median / worst overlays (mean Dice over structures) with the CTR lines.
* ``fewshot``: the in-context segmenter of ``settings.model_dir`` (else
  :func:`cxrfm.models.anatomy_store.default_anatomy_dir`) at each k, several draws of k supports from
  the training rows; ``baselines``: atlas, supervised on the k shots, label fractions, frozen-encoder
  decoder (:mod:`cxrfm.tasks.anatomy_fewshot`).
* ``ctr``: :func:`cxrfm.inference.anatomy.cardiothoracic_ratio` on the supervised model's heart and
  lungs with the manifest's ``view`` (refused rows counted, not scored); MAE against ``ctr_reference``
  where the test rows have it, else against the CTR of the reference masks; cardiomegaly (CTR > 0.5)
  agreement: accuracy and Cohen's kappa with patient-bootstrap CIs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import CxrfmError
from ..train.anatomy import SupervisedSettings
from .anatomy_fewshot import (AnatomyData, draw_supports, fewshot_atlas, fewshot_model, fewshot_supervised, fit_on,
                              frozen_decoder, label_fractions, pretraining_check, summarize_draws, predict_positions)
from .registry import TaskSkipped
from .segmentation import DecoderSettings, dice_score, hd95

if TYPE_CHECKING:
    from .suite import EvalContext

MIN_PATIENTS = 10
CTR_STRUCTURES = ("heart", "left_lung", "right_lung")
OVERLAY_FILES = {"best": "anatomy_best.png", "median": "anatomy_median.png", "worst": "anatomy_worst.png"}


@dataclass(frozen=True)
class AnatomySettings:
    """What the task trains and draws. The default is the full evaluation: 13 U-Net fits (1 on all
    training rows and 3 label fractions of ``supervised.steps`` steps, 3 k x 3 draws of ``shot_steps``),
    about half an hour on 2 CPU cores; :meth:`tiny` is for tests and smoke runs."""

    # the U-Net (also for label fractions): 600 steps of 8 images at 128 px, ~5 min on 2 cores
    supervised: SupervisedSettings = SupervisedSettings()
    shot_steps: int | None = 200  # steps of the U-Net trained on k shots (None: supervised.steps)
    ks: tuple[int, ...] = (1, 3, 5)
    draws: int = 3  # support sets drawn per k
    fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 1.0)  # label_fraction baseline (1.0 reuses the main fit)
    atlas_size: int = 192  # common side the atlas letterboxes its support masks to
    decoder: DecoderSettings = DecoderSettings()  # the frozen-encoder decoder baseline
    model_dir: str | None = None  # the in-context model's folder (None: default_anatomy_dir())
    threshold: float = 0.5
    min_patients: int = MIN_PATIENTS  # below this, the suite's split instead of anatomy_split
    baselines: bool = True

    @classmethod
    def tiny(cls, **overrides) -> "AnatomySettings":
        """Seconds on a CPU (tests, smoke runs): 32 px U-Net, 3 steps, 2 draws, 50 / 100 % of the labels,
        one decoder epoch. Its numbers say nothing about the models."""
        return replace(cls(supervised=SupervisedSettings(size=32, steps=3, batch_size=2), draws=2,
                           fractions=(0.5, 1.0), atlas_size=32, decoder=DecoderSettings(epochs=1, batch_size=8)),
                       **overrides)

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------- rows
def mask_columns(table) -> dict[str, str]:
    """``{structure: column}``: the ``mask_<structure>`` columns holding mask files
    (:func:`cxrfm.data.anatomy.structure_columns`; a metadata column such as ``mask_source`` is not one)."""
    from ..data.anatomy import structure_columns

    return structure_columns(table)


def split_rows(context: "EvalContext", settings: AnatomySettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train rows, test rows, description) among the rows with at least one structure mask."""
    from ..data.anatomy import anatomy_split
    from .split import EVAL_FRACTION, patient_train_eval_rows, resolve_split

    m = context.manifest
    cols = list(mask_columns(m.table).values())
    has = m.table[cols].notna().to_numpy().any(axis=1) & (m.table[cols].astype(str).apply(
        lambda c: c.str.strip() != "").to_numpy().any(axis=1))
    pids = m.table["patient_id"].astype(str).to_numpy()
    n_pat = len(set(pids[has]))
    if n_pat >= settings.min_patients:
        parts = anatomy_split(m)
        train, test = np.flatnonzero((parts == "train") & has), np.flatnonzero((parts == "test") & has)
        how = ("cxrfm.data.anatomy.anatomy_split: fixed patient-disjoint train / val / test (60/20/20, seed 0); "
               "fitted and supports drawn on train, scored on test, val unused")
        if getattr(context, "train_manifest", None) is not None:
            how += "; --train-data is not used by this task (supports come from the evaluated manifest)"
        n_val = int(((parts == "val") & has).sum())
    else:
        split = resolve_split(context)
        if split.train_external:
            train, test = patient_train_eval_rows(m, EVAL_FRACTION, context.seed)
            inner = (f"seeded patient-level split of the evaluation manifest (seed {context.seed}, "
                     f"{EVAL_FRACTION:.0%} of rows to test)")
        else:
            train, test, inner = split.train_rows, split.eval_rows, split.how
        train, test = train[has[train]], test[has[test]]
        how = (f"only {n_pat} patients have masks (< {settings.min_patients}, too few for anatomy_split's "
               f"60/20/20), so the suite's split: {inner}")
        n_val = 0
    if not len(train) or not len(test):
        raise TaskSkipped(f"{len(train)} training and {len(test)} test rows have a structure mask ({how}); both "
                          f"parts need at least one")
    return train, test, {"how": how, "n_train": int(len(train)), "n_val": n_val, "n_test": int(len(test)),
                         "n_test_patients": int(len(set(pids[test]))), "n_patients_with_masks": n_pat}


def load_data(context: "EvalContext", train: np.ndarray, test: np.ndarray) -> AnatomyData:
    from ..data.anatomy import load_structures

    m = context.manifest
    rows = np.concatenate([train, test])
    try:
        images, masks = load_structures(m, rows, list(mask_columns(m.table)))
    except CxrfmError as e:
        raise TaskSkipped(f"anatomy masks cannot be used: {e}") from None
    ids = [str(m.table["image"].iloc[int(r)]) for r in rows]
    return AnatomyData(ids, m.table["patient_id"].astype(str).to_numpy()[rows], images, masks,
                       np.arange(len(train)), np.arange(len(train), len(rows)))


# ---------------------------------------------------------------- supervised
def score_supervised(data: AnatomyData, preds: dict, rng: np.random.Generator, n_boot: int) -> tuple[dict, dict]:
    """Per structure Dice / HD95 on the test rows, and {test position: mean Dice over its structures}."""
    from ..metrics import bootstrap_mean_ci

    out, per_image = {}, {}
    for s in data.structures:
        q = data.with_mask(s, data.test)
        if not len(q):
            out[s] = {"skipped": f"no test row has a {s} mask"}
            continue
        dice = np.array([dice_score(preds[int(p)][s], data.masks[s][p]) for p in q])
        hd = np.array([hd95(preds[int(p)][s], data.masks[s][p]) for p in q])
        ok = np.isfinite(hd)
        for p, d in zip(q, dice):
            per_image.setdefault(int(p), []).append(float(d))
        out[s] = {"dice": {"mean": float(dice.mean()), "ci": list(bootstrap_mean_ci(dice, data.pids[q], rng, n_boot)),
                           "median": float(np.median(dice))},
                  "hd95": {"mean": float(hd[ok].mean()) if ok.any() else None,
                           "median": float(np.median(hd[ok])) if ok.any() else None,
                           "n_undefined": int((~ok).sum()), "unit": "pixels at the image's own size"},
                  "n": int(len(q))}
    return out, {p: float(np.mean(v)) for p, v in per_image.items()}


def save_overlays(data: AnatomyData, preds: dict, per_image: dict, views: Sequence, out_dir,
                  reference: Sequence | None = None) -> dict:
    """Best / median / worst test image (mean Dice over structures): reference green, prediction red, and
    the CTR width lines measured on the prediction (with ``reference[position]``, the reference CTR)."""
    if not per_image:
        return {}
    pos = sorted(per_image, key=lambda p: (per_image[p], p))
    picks = {"worst": pos[0], "median": pos[len(pos) // 2], "best": pos[-1]}
    out = {}
    for name, p in picks.items():
        entry = {"image": data.ids[p], "dice": per_image[p], "path": None}
        if out_dir is not None:
            entry["path"] = str(_draw(data, p, preds[p], views[p], Path(out_dir) / OVERLAY_FILES[name],
                                      f"{name}: mean Dice {per_image[p]:.3f}\n{data.ids[p]}",
                                      None if reference is None else reference[p]))
        out[name] = entry
    return out


def _draw(data: AnatomyData, p: int, pred: dict, view, path: Path, title: str, reference=None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..atomic import atomic_path
    from ..inference.anatomy import cardiothoracic_ratio

    img = data.images[p][0].numpy()
    fig = Figure(figsize=(3.4, 3.7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    for s in data.structures:
        for m, colour in ((data.masks[s][p], "lime"), (pred.get(s), "red")):
            if m is not None and m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=0.9)
    if all(s in pred for s in CTR_STRUCTURES):
        ctr = cardiothoracic_ratio(*(pred[s] for s in CTR_STRUCTURES), view=view)
        if ctr.ratio is not None:
            for (row, x0, x1), colour in ((ctr.thorax_line, "#00c8ff"), (ctr.heart_line, "#ff3b30")):
                ax.plot([x0, x1], [row, row], color=colour, lw=1.5, ls="--")
            title += f"\npredicted CTR {ctr.ratio:.3f}" + ("" if reference is None else f" (reference {reference:.3f})")
    ax.set_title(title, fontsize=6)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ---------------------------------------------------------------- CTR
def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary ratings; None when chance agreement is 1 (both raters constant)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return None if pe >= 1 - 1e-12 else (po - pe) / (1 - pe)


def group_bootstrap(stat: Callable[[np.ndarray], float | None], groups: Sequence, rng: np.random.Generator,
                    n_boot: int, alpha: float = 0.05) -> list[float] | None:
    """Percentile CI of ``stat(row indices)`` resampling patients; None when no resample defines it."""
    groups = np.asarray(groups, dtype=object)
    uniq = sorted(set(groups))
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(int(n_boot)):
        idx = np.concatenate([members[uniq[i]] for i in rng.integers(0, len(uniq), len(uniq))])
        v = stat(idx)
        if v is not None and np.isfinite(v):
            vals.append(v)
    if not vals:
        return None
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def score_ctr(data: AnatomyData, preds: dict, views: Sequence, reference: Sequence[float | None],
              rng: np.random.Generator, n_boot: int) -> dict:
    """CTR from the predicted masks on the test rows against ``ctr_reference`` (else the reference masks)."""
    from ..inference.anatomy import ENLARGED, cardiothoracic_ratio

    lacking = [s for s in CTR_STRUCTURES if s not in data.structures]
    if lacking:
        return {"mae": None, "skipped": f"the CTR needs mask_heart, mask_left_lung and mask_right_lung; the manifest "
                                        f"has no {', '.join('mask_' + s for s in lacking)}"}
    refusals: Counter = Counter()
    rows, pred, by_table, by_masks = [], [], [], []
    for p in data.test:
        got = cardiothoracic_ratio(*(preds[int(p)][s] for s in CTR_STRUCTURES), view=views[p])
        if got.refused:
            refusals[got.refused] += 1
            continue
        ref = [data.masks[s][p] for s in CTR_STRUCTURES]
        from_masks = (cardiothoracic_ratio(*ref, view=views[p]).ratio if all(m is not None for m in ref) else None)
        rows.append(int(p))
        pred.append(got.ratio)
        by_table.append(reference[p])
        by_masks.append(from_masks)
    out = {"n_test": int(len(data.test)), "n_refused": int(sum(refusals.values())), "refusals": dict(refusals),
           "n_measured": len(rows), "enlarged_above": ENLARGED}
    table_ok = np.array([v is not None for v in by_table], dtype=bool)
    masks_ok = np.array([v is not None for v in by_masks], dtype=bool)
    if table_ok.any():
        ok, refv, against = table_ok, by_table, "ctr_reference (the manifest's reference CTR)"
    else:
        ok, refv, against = masks_ok, by_masks, "the CTR of the reference masks (no ctr_reference on the test rows)"
    out["against"] = against
    if not ok.any():
        out["mae"] = None
        out["note"] = "no measured test row has a reference CTR"
        return out
    y = np.array([refv[i] for i in np.flatnonzero(ok)], dtype=float)
    x = np.array([pred[i] for i in np.flatnonzero(ok)], dtype=float)
    g = data.pids[[rows[i] for i in np.flatnonzero(ok)]]
    err = np.abs(x - y)
    out.update({"mae": float(err.mean()), "mae_ci": group_bootstrap(lambda i: float(err[i].mean()), g, rng, n_boot),
                "median_abs_error": float(np.median(err)), "bias": float((x - y).mean()), "n_scored": int(len(err)),
                "points": [[float(a), float(b)] for a, b in zip(y, x)]})
    if masks_ok.any() and table_ok.any():
        e2 = np.abs(np.array([pred[i] - by_masks[i] for i in np.flatnonzero(masks_ok)], dtype=float))
        out["mae_vs_reference_masks"] = {"mae": float(e2.mean()), "n": int(len(e2))}
    a, b = y > ENLARGED, x > ENLARGED
    out["cardiomegaly"] = {
        "accuracy": {"value": float((a == b).mean()),
                     "ci": group_bootstrap(lambda i: float((a[i] == b[i]).mean()), g, rng, n_boot)},
        "kappa": {"value": cohen_kappa(a, b), "ci": group_bootstrap(lambda i: cohen_kappa(a[i], b[i]), g, rng, n_boot)},
        "n": int(len(a)), "n_enlarged_reference": int(a.sum()), "n_enlarged_predicted": int(b.sum())}
    return out


# ---------------------------------------------------------------- the task
def _column(context, rows: np.ndarray, name: str) -> list:
    t = context.manifest.table
    if name not in t.columns:
        return [None] * len(rows)
    vals = t[name].iloc[rows].tolist()
    return [None if v is None or (isinstance(v, float) and not np.isfinite(v)) or str(v).strip() == "" else v
            for v in vals]


def _fewshot(context, data: AnatomyData, settings: AnatomySettings, rng, seed: int) -> tuple[dict, dict, dict]:
    from ..models.anatomy_store import default_anatomy_dir, load_incontext

    ks = tuple(int(k) for k in settings.ks)
    supports = draw_supports(data, settings.draws, max(ks), rng)
    model_dir = Path(settings.model_dir) if settings.model_dir else default_anatomy_dir()
    info: dict = {"dir": str(model_dir), "ks": list(ks), "draws": int(settings.draws),
                  "supports": [{s: [data.ids[p] for p in d[s]] for s in data.structures} for d in supports]}
    fewshot: dict = {}
    try:
        net = load_incontext(model_dir)
    except CxrfmError as e:
        info.update(available=False, reason=str(e))
    else:
        info.update(available=True, size=int(net.config.size),
                    pretraining=pretraining_check(model_dir, [data.ids[p] for p in data.test]))
        grid, missing = fewshot_model(net, data, supports, ks, settings.threshold, context.progress)
        fewshot = {s: {k: summarize_draws(v, data.pids[data.with_mask(s, data.test)], rng, context.n_boot)
                       for k, v in per_k.items()} for s, per_k in grid.items() if per_k}
        info["not_run"] = missing
    baselines: dict = {}
    if settings.baselines:
        for name, (grid, missing) in (
                ("atlas", fewshot_atlas(data, supports, ks, settings.atlas_size, context.progress)),
                ("supervised_k", fewshot_supervised(data, supports, ks, settings, seed, context.progress))):
            baselines[name] = {s: {k: summarize_draws(v, data.pids[data.with_mask(s, data.test)], rng, context.n_boot)
                                   for k, v in per_k.items()} for s, per_k in grid.items() if per_k}
            if missing:
                baselines[name]["not_run"] = missing
    return fewshot, info, baselines


DEFAULT_SETTINGS = AnatomySettings()  # what `cxrfm eval --tasks anatomy` runs; replace it for a quick run


def save_fitted(net, context: "EvalContext", data: AnatomyData, settings: AnatomySettings) -> str | None:
    """Keep the fitted U-Net as an anatomy folder (``OUT/anatomy_model``): the evaluated model can then be
    served or measured (``cxrfm anatomy measure --model``) as it was scored."""
    out_dir = getattr(context, "out_dir", None)
    if out_dir is None:
        return None
    from ..models.anatomy_store import save_anatomy

    man = context.manifest
    record = {"unet": {"by": "cxrfm eval --tasks anatomy", "manifest": str(man.path) if man.path else None,
                       "part": "train", "n_images": len(data.train), "structures": list(data.structures),
                       "settings": asdict(settings.supervised), "seed": int(context.seed)}}
    return str(save_anatomy(Path(out_dir) / "anatomy_model", unet=net, training=record))


def run(context: "EvalContext", settings: AnatomySettings | None = None) -> dict:
    """The ``anatomy`` task of the evaluation suite (see :mod:`cxrfm.tasks.suite`); ``settings`` None:
    :data:`DEFAULT_SETTINGS`, read at call time."""
    settings = settings if settings is not None else DEFAULT_SETTINGS
    cols = mask_columns(context.manifest.table)
    if not cols:
        raise TaskSkipped("no mask_<structure> column with mask paths (e.g. mask_heart, mask_left_lung); the anatomy "
                          "task segments those structures (the lung-only `mask` column is the segmentation task's)")
    rng = context.rng("anatomy")
    train, test, split = split_rows(context, settings)
    data = load_data(context, train, test)
    rows = np.concatenate([train, test])
    views = _column(context, rows, "view")
    reference = [None if v is None else float(v) for v in _column(context, rows, "ctr_reference")]
    seed = int(context.seed)
    net = fit_on(data, {s: data.train for s in data.structures}, settings.supervised, seed=seed,
                 progress=context.progress)
    model_dir = save_fitted(net, context, data, settings)
    preds = predict_positions(net, data, data.test)
    supervised, per_image = score_supervised(data, preds, rng, context.n_boot)
    supervised["model_dir"] = model_dir
    overlays = save_overlays(data, preds, per_image, views, getattr(context, "out_dir", None), reference)
    ctr = score_ctr(data, preds, views, reference, rng, context.n_boot)
    fewshot, info, baselines = _fewshot(context, data, settings, rng, seed)
    if settings.baselines:
        baselines["label_fraction"] = label_fractions(data, preds, settings, seed, rng, context.n_boot,
                                                      context.progress)
        baselines["frozen_decoder"] = frozen_decoder(context.model, data, settings, seed, rng, context.n_boot,
                                                     context.progress)
    return {"split": split, "structures": data.structures, "structure_columns": cols,
            "supervised": supervised, "overlays": overlays, "fewshot": fewshot, "fewshot_model": info,
            "baselines": baselines, "ctr": ctr, "settings": settings.describe(), "n_boot": context.n_boot}


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="anatomy", run=run, title="Anatomy: heart and lungs, few-shot segmentation, CTR",
    result_keys=("split", "structures", "supervised", "fewshot", "fewshot_model", "baselines", "ctr", "overlays"),
    console="cxrfm.reporting.sections.anatomy:console", html="cxrfm.reporting.sections.anatomy:html",
    default=False, order=45,
    summary="supervised and few-shot (k = 1, 3, 5) segmentation of every mask_<structure>, and the CTR"))
