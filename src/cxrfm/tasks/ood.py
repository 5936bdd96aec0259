"""The ``ood`` evaluation: how well the gate (:mod:`cxrfm.inference.gate`) tells chest radiographs
from other images, on held-out CXRs versus non-CXR images from installed packages.

Non-CXR evaluation images come from installed packages, never copied into the repository: the
DICOM test files of ``pydicom-data`` (CT, MR, US, NM, a CR of an extremity, secondary captures) and
the natural images bundled with scikit-image (``skimage.data``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..errors import ImageReadError
from ..inference.gate import (DEFAULT_WEIGHTS, TARGET_TPR, OODGate, _as_tensors,  # noqa: F401 - re-exported
                              default_gate, default_reference_images, ood_score, reference_images_from_manifest)
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
                             rng: np.random.Generator) -> tuple[dict, dict]:
    """Score CXRs and non-CXRs as one shuffled test stream in batches (how TANL is evaluated: the
    queues see both kinds in a random order), then split the scores back per kind."""
    images = in_images + out_images
    order = rng.permutation(len(images))
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(order), batch_size):
        parts.append(gate.component_scores([images[j] for j in order[i:i + batch_size]]))
    inverse = np.argsort(order)
    comps = {name: torch.cat([p[name] for p in parts])[torch.from_numpy(inverse)] for name in parts[0]}
    n_in = len(in_images)
    return {n: v[:n_in] for n, v in comps.items()}, {n: v[n_in:] for n, v in comps.items()}


def ood_task(model, in_images, out_images, reference=None, k: int = 5, weights: dict | None = None,
             n_boot: int = 1000, rng: np.random.Generator | None = None, progress: bool = False,
             test_time_update: bool = False, test_time: TestTimeSettings | None = None) -> dict:
    """AUROC and FPR at 95 % TPR of the gate: held-out CXRs (positive) versus non-CXR images.

    Images are (1, H, W) tensors or paths. ``reference`` (ID CXRs) fits the gate; when None, half of
    ``in_images`` (drawn with ``rng``) fits it and the other half is scored. Per-component figures are
    included (``auroc_text``, ``auroc_knn``, ``auroc_pixels``) so each term's contribution is visible.
    ``test_time_update`` (needs a text weight): the gate's text component adapts as TANL does, and the
    held-out and non-CXR images are scored as one stream shuffled with ``rng``, ``test_time.batch_size``
    images per update.
    """
    in_images, out_images = _as_tensors(in_images), _as_tensors(out_images)
    rng = rng or np.random.default_rng(0)
    if reference is None:
        perm = rng.permutation(len(in_images))
        half = len(in_images) // 2
        reference, in_images = [in_images[i] for i in perm[:half]], [in_images[i] for i in perm[half:]]
    settings = test_time or TestTimeSettings()
    gate = OODGate(model, k=k, weights=dict(weights or DEFAULT_WEIGHTS), test_time_update=test_time_update,
                   test_time=settings).fit(reference, progress=progress)
    res = {"n_in": len(in_images), "n_out": len(out_images),
           "prevalence": len(in_images) / max(1, len(in_images) + len(out_images))}
    if test_time_update:
        c_in, c_out = _stream_component_scores(gate, in_images, out_images, settings.batch_size, rng)
        res["test_time_update"] = {"method": "TANL (Zhang et al., CVPR 2026)", "n_updates": gate.tanl.n_updates,
                                   "memory_rows": gate.tanl.memory_rows(), **dataclasses.asdict(settings)}
    else:
        c_in, c_out = gate.component_scores(in_images), gate.component_scores(out_images)
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
    return res


def _thumb_key(img: torch.Tensor) -> str:
    from ..data.images import letterbox

    t = (letterbox(img, 16) * 15).round().to(torch.uint8).numpy().tobytes()
    return hashlib.sha1(t).hexdigest()


def pydicom_data_dir() -> Path | None:
    """Folder of the DICOM test files installed by the PyPI package ``pydicom-data`` (or None)."""
    try:
        import data_store  # the import name of pydicom-data
    except ImportError:
        return None
    d = Path(data_store.__file__).resolve().parent / "data"
    return d if d.is_dir() else None


def non_cxr_images(limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """Non-chest-radiograph images from installed packages, as (name, (1, H, W) tensor in [0, 1]).

    pydicom-data DICOMs whose header does not say CHEST (single-frame ones; multi-frame volumes are
    refused by the reader) and skimage.data's bundled images; exact duplicates (the same picture in
    several encodings) are kept once.
    """
    import pydicom

    from ..data.images import read_image

    out: list[tuple[str, torch.Tensor]] = []
    seen: set[str] = set()

    def add(name: str, img: torch.Tensor) -> None:
        key = _thumb_key(img)
        if key not in seen:
            seen.add(key)
            out.append((name, img))

    d = pydicom_data_dir()
    for f in sorted(d.glob("*.dcm")) if d else []:
        try:
            hdr = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            if str(hdr.get("BodyPartExamined", "")).upper() == "CHEST" or hdr.get("Modality") == "SEG":
                continue
            add(f"pydicom-data/{f.name}", read_image(f))
        except (ImageReadError, Exception):  # noqa: BLE001 - a test file the reader refuses is skipped
            continue
    out.extend(_skimage_images(seen))
    return out[:limit] if limit else out


_SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "clock", "coffee", "coins",
                  "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                  "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


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


def _skimage_images(seen: set[str]) -> Iterable[tuple[str, torch.Tensor]]:
    for name in _SKIMAGE_NAMES:
        try:
            img = skimage_image(name)
        except Exception:  # noqa: BLE001 - an image that needs a download is skipped (offline)
            continue
        key = _thumb_key(img)
        if key not in seen:
            seen.add(key)
            yield f"skimage.data/{name}", img


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
    out_images = [img for _, img in non_cxr_images()]
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
    res = ood_task(context.model, [read_image(p) for p in held], out_images, reference=[read_image(p) for p in ref],
                   n_boot=context.n_boot,
                   rng=rng, progress=context.progress)
    res["split"] = split.describe()
    res["out_sources"] = "pydicom-data DICOMs (non-chest) + scikit-image bundled images"
    return res


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="ood", run=run, title="Out-of-distribution gate", needs=(),
    result_keys=("auroc", "fpr95", "n_in", "n_out"),
    console="cxrfm.reporting.sections.ood:console", html="cxrfm.reporting.sections.ood:html",
    default=False, order=60, summary="how well the gate tells chest X-rays from other images"))
