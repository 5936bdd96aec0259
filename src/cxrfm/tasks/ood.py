"""The ``ood`` evaluation: how well the gate (:mod:`cxrfm.inference.gate`) tells chest radiographs
from other images, on held-out CXRs versus non-CXR images.

The non-CXR images (:mod:`cxrfm.tasks.ood_sources`) come from installed packages (scikit-image,
matplotlib, pydicom and pydicom-data test files), never copied into the repository, and from seeded
synthetic families (noise, gradients, checkerboards, text, blank images). The results name the
model-free check's figures as such (``model_free_auroc``) and put the model-dependent scores beside
them (``model_auroc``: deep kNN on the model's embedding; ``model_auroc_text``: NegLabel), so that no
model takes credit for a figure it did not earn.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..inference.gate import (  # noqa: F401 - re-exported
    DEFAULT_WEIGHTS,
    TARGET_TPR,
    OODGate,
    _as_tensors,
    default_gate,
    default_reference_images,
    ood_score,
    reference_images_from_manifest,
)
from ..inference.tanl import TestTimeSettings
from ..metrics import auroc as metrics_auroc
from ..metrics import bootstrap_ci


# ---------------------------------------------------------------- evaluation
def _auroc_fpr95(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[float, float]:
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    s = np.r_[in_scores, out_scores]
    auroc = float(metrics_auroc(y, s))
    thr = np.quantile(in_scores, 1.0 - TARGET_TPR)
    return auroc, float(np.mean(out_scores >= thr))


def _stream_component_scores(gate: OODGate, in_images: list, out_images: list, batch_size: int,
                             rng: np.random.Generator, sources: list) -> tuple[dict, dict]:
    """Score CXRs and non-CXRs as one shuffled test stream in batches (how TANL is evaluated: the
    queues see both kinds in a random order), then split the scores back per kind."""
    images = in_images + out_images
    order = rng.permutation(len(images))
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        parts.append(gate.component_scores([images[j] for j in idx], sources=[sources[j] for j in idx]))
    inverse = np.argsort(order)
    comps = {name: torch.cat([p[name] for p in parts])[torch.from_numpy(inverse)] for name in parts[0]}
    n_in = len(in_images)
    return {n: v[:n_in] for n, v in comps.items()}, {n: v[n_in:] for n, v in comps.items()}


def ood_task(model, in_images, out_images, reference=None, k: int = 5, weights: dict | None = None,
             n_boot: int = 1000, rng: np.random.Generator | None = None, progress: bool = False,
             test_time_update: bool = False, test_time: TestTimeSettings | None = None,
             out_sources: list | None = None) -> dict:
    """AUROC and FPR at 95 % TPR of the gate: held-out CXRs (positive) versus non-CXR images.

    Images are (1, H, W) tensors or paths (a path is also its own colour source); ``out_sources``: each
    non-CXR image's RGB array / bytes / path or None, so the colour check sees what a server given the
    file would. ``reference`` (ID CXRs) fits the model components; when None, half of ``in_images``
    (drawn with ``rng``) fits them and the other half is scored.

    ``auroc`` / ``fpr95`` / ``*_at_gate`` are the gate's decision score (with default weights: the
    model-free check alone); ``model_free_*`` the model-free check's own (``model_free_refusal``: share
    of non-CXRs it refuses, ``model_free_false_refusal``: share of CXRs it refuses, at its shipped
    threshold); ``model_auroc`` / ``model_auroc_text`` the model's embedding kNN and NegLabel scores.
    ``test_time_update`` (needs a text weight): TANL's text component; the held-out and non-CXR images
    are then scored as one stream shuffled with ``rng``, ``test_time.batch_size`` images per update.
    """
    in_paths = [x if isinstance(x, (str, Path)) else None for x in in_images]
    in_images, out_images = _as_tensors(in_images), _as_tensors(out_images)
    rng = rng or np.random.default_rng(0)
    if reference is None:
        perm = rng.permutation(len(in_images))
        half = len(in_images) // 2
        reference = [in_images[i] for i in perm[:half]]
        in_images, in_paths = [in_images[i] for i in perm[half:]], [in_paths[i] for i in perm[half:]]
    settings = test_time or TestTimeSettings()
    gate = OODGate(model, k=k, weights=dict(weights or DEFAULT_WEIGHTS), test_time_update=test_time_update,
                   test_time=settings).fit(reference, progress=progress)
    res = {"n_in": len(in_images), "n_out": len(out_images),
           "prevalence": len(in_images) / max(1, len(in_images) + len(out_images)),
           "decision": "model_free" + "".join(f" + {n}" for n in gate._deciding())}
    out_sources = out_sources if out_sources is not None else [None] * len(out_images)
    if test_time_update:
        c_in, c_out = _stream_component_scores(gate, in_images, out_images, settings.batch_size, rng,
                                               in_paths + list(out_sources))
        res["test_time_update"] = {"method": "TANL (Zhang et al., CVPR 2026)", "n_updates": gate.tanl.n_updates,
                                   "memory_rows": gate.tanl.memory_rows(), **dataclasses.asdict(settings)}
    else:
        c_in = gate.component_scores(in_images, sources=in_paths)
        c_out = gate.component_scores(out_images, sources=list(out_sources))
    s_in, s_out = gate.combine(c_in).numpy(), gate.combine(c_out).numpy()
    res["auroc"], res["fpr95"] = _auroc_fpr95(s_in, s_out)
    # each image its own group: the non-CXR images have no patients, and the held-out CXRs are
    # at most a few per patient
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    res["auroc_ci"] = list(bootstrap_ci(y, np.r_[s_in, s_out], np.arange(len(y)), n_boot=n_boot, rng=rng))
    res["tpr_at_gate"] = float(np.mean(s_in >= gate.threshold))
    res["fpr_at_gate"] = float(np.mean(s_out >= gate.threshold))
    for name in c_in:
        res[f"auroc_{name}"], res[f"fpr95_{name}"] = _auroc_fpr95(c_in[name].numpy(), c_out[name].numpy())
    mf_in, mf_out = c_in["model_free"].numpy(), c_out["model_free"].numpy()
    res["model_free_auroc"], res["model_free_fpr95"] = res["auroc_model_free"], res["fpr95_model_free"]
    res["model_free_refusal"] = float(np.mean(mf_out < 0))
    res["model_free_false_refusal"] = float(np.mean(mf_in < 0))
    res["model_auroc"], res["model_auroc_text"] = res["auroc_knn"], res["auroc_text"]
    res["model_free_provenance"] = gate.model_free.provenance if gate.model_free is not None else None
    return res


def pydicom_data_dir() -> Path | None:
    """Folder of the DICOM test files installed by the PyPI package ``pydicom-data`` (or None)."""
    try:
        import data_store  # the import name of pydicom-data
    except ImportError:
        return None
    d = Path(data_store.__file__).resolve().parent / "data"
    return d if d.is_dir() else None


def non_cxr_images(limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every non-CXR image of :func:`cxrfm.tasks.ood_sources.all_non_cxr` as ("family/name", (1, H, W)
    tensor in [0, 1]); :func:`non_cxr_items` keeps their colour and validation/test part too."""
    out = [(f"{it.family}/{it.name}", it.gray) for it in non_cxr_items()]
    return out[:limit] if limit else out


def non_cxr_items() -> list:
    from .ood_sources import all_non_cxr

    return all_non_cxr()


def skimage_image(name: str) -> torch.Tensor:
    """One of skimage.data's bundled images as grayscale (1, H, W) float32 in [0, 1]."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        arr = arr / (255.0 if rgb.max() > 1 else 1.0)
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32)
        arr = arr / 255.0 if arr.max() > 1 else arr
    return torch.from_numpy(np.clip(arr, 0, 1)).unsqueeze(0)


# ---------------------------------------------------------------- suite task
def run(context) -> dict:
    """The ``ood`` task of ``cxrfm eval``: held-out CXRs of the eval split vs installed non-CXR images.

    The gate is fitted on the training part's frontal CXRs (``--train-data`` or a seeded patient
    split, as the probe does); the eval part's images are the in-distribution positives.
    """
    from ..data.images import read_image
    from .split import resolve_split
    from .suite import TaskSkipped

    split = resolve_split(context)
    rng = context.rng("ood")
    items = non_cxr_items()
    out_images, out_sources = [it.gray for it in items], [it.rgb for it in items]
    if len(out_images) < 10:
        raise TaskSkipped(f"only {len(out_images)} non-CXR images found (pydicom-data and scikit-image "
                          "provide them; install the `eval` extra)")

    def frontal_paths(manifest, candidates, n):
        t = manifest.table
        rows = [int(i) for i in candidates if "view" not in t.columns or str(t["view"][i] or "").upper() != "L"]
        rows = sorted(rng.permutation(rows)[:n].tolist())
        return [manifest.root / t["image"][i] for i in rows]

    ref = frontal_paths(split.train, split.train_rows, 200)
    held = frontal_paths(context.manifest, split.eval_rows, 300)
    if len(ref) < 20 or len(held) < 10:
        raise TaskSkipped(f"too few CXRs to fit and score the gate ({len(ref)} reference, {len(held)} held out)")
    res = ood_task(context.model, held, out_images, reference=[read_image(p) for p in ref], n_boot=context.n_boot,
                   rng=rng, progress=context.progress, out_sources=out_sources)
    res["split"] = split.describe()
    res["out_sources"] = ("cxrfm.tasks.ood_sources: scikit-image, matplotlib, pydicom and pydicom-data test "
                          "images (non-chest) + seeded synthetic families; "
                          + ", ".join(f"{f} {n}" for f, n in sorted(Counter(it.family for it in items).items())))
    return res


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task

register_task(Task(
    name="ood", run=run, title="Out-of-distribution gate", needs=(),
    result_keys=("auroc", "fpr95", "n_in", "n_out"),
    console="cxrfm.reporting.sections.ood:console", html="cxrfm.reporting.sections.ood:html",
    default=False, order=60, summary="how well the gate tells chest X-rays from other images"))
