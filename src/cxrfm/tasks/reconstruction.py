"""The ``reconstruction`` task: how much of the evaluated images a latent run's autoencoder keeps.

For a run whose image tower is ``latent`` (``cxrfm pretrain --latents AE``, docs/latents.md): the run's
recorded autoencoder folder (``image_arch.ae``, checked against ``image_arch.ae_hash``) encodes up to
``max_images`` of the evaluated manifest's images at the run's image size; the latents go through the
latent cache's 8-bit quantisation (:func:`cxrfm.data.latent_cache.quantise` / ``dequantise``: what
pretraining read) and are decoded. Per image: PSNR (dB) and MS-SSIM against the original
(:mod:`cxrfm.models.autoencoder`); reported as mean with a patient-bootstrap 95 % CI, and median. Also the
setting (factor, channels, the latent cache's storage ratio ``factor ** 2 / channels``) and a figure of the
best, median and worst image by PSNR, each as original | decoded | 4 x |difference|
(:func:`save_examples`, which benchmarks/latents.py draws the same way).

A pixel run has no autoencoder: asked for by name, the task is skipped with that reason, and
``--tasks all`` leaves it out for such runs (``Task.towers``). An autoencoder folder that has moved away,
is damaged or now holds another autoencoder is a skip that names the folder and the fix, never an error
that stops the evaluation (the run itself evaluates without the folder: its encoder is in the run).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .registry import TaskSkipped

if TYPE_CHECKING:
    from ..models.autoencoder import Autoencoder
    from .suite import EvalContext

FIGURE_FILE = "reconstruction_examples.png"
LAYOUT = "original | decoded | 4 x |difference|"


@dataclass(frozen=True)
class ReconstructionSettings:
    max_images: int = 256  # eval images scored (a seeded sample of the manifest when it has more rows)
    batch_size: int = 32  # images per encode / decode pass


DEFAULT_SETTINGS = ReconstructionSettings()  # what `cxrfm eval --tasks reconstruction` uses; replace it to change


# ---------------------------------------------------------------- shared with benchmarks/latents.py
@torch.no_grad()
def pick_examples(scores: torch.Tensor | np.ndarray) -> dict[str, int]:
    """Positions of the best, median and worst score (PSNR: higher is better)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return {"best": int(order[0]), "median": int(order[len(order) // 2]), "worst": int(order[-1])}


def example_strip(pixels: torch.Tensor, rec: torch.Tensor) -> np.ndarray:
    """One uint8 (B*S, 3*S) image: a row per image, original | decoded | 4 x |difference| (clipped at 1)."""
    rows = [torch.cat([x[0], r[0], (4 * (r[0] - x[0]).abs()).clamp(0, 1)], dim=1)
            for x, r in zip(pixels.cpu(), rec.cpu())]
    return (torch.cat(rows, dim=0) * 255).round().to(torch.uint8).numpy()


def write_png(img: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    from ..atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


@torch.no_grad()
def save_examples(ae: "Autoencoder", pixels: torch.Tensor, path: str | Path) -> dict:
    """Best / median / worst of ``pixels`` by PSNR after reconstruction, drawn into ``path`` as one PNG row each
    (original | decoded | 4 x |difference|); returns ``{name: {"row", "psnr"}}`` (rows of ``pixels``)."""
    from ..data.latent_cache import round_trip
    from ..models.autoencoder import psnr

    rec = round_trip(ae, pixels)
    score = psnr(rec, pixels)
    picks = pick_examples(score.cpu().numpy())
    idx = list(picks.values())
    write_png(example_strip(pixels[idx], rec[idx]), path)
    return {k: {"row": i, "psnr": float(score[i])} for k, i in picks.items()}


# ---------------------------------------------------------------- the run's autoencoder
def _config_file(context: "EvalContext") -> str:
    run_dir = getattr(context, "run_dir", None)
    return f"{run_dir / 'config.json'}" if run_dir is not None else "the run's config.json"


def run_autoencoder(context: "EvalContext") -> tuple["Autoencoder", dict, dict]:
    """(autoencoder, its json, the run's image_arch) of a latent run; :class:`TaskSkipped` naming the folder and
    the fix when the run is not a latent run or its recorded folder no longer holds its autoencoder."""
    from ..models.autoencoder import AutoencoderError, load_autoencoder, read_ae_meta

    cfg = getattr(context.model, "config", None)
    tower = getattr(cfg, "image_tower", None)
    if tower != "latent":
        raise TaskSkipped(f"the model's image tower is {tower or 'not recorded'!r}, not 'latent': only a run "
                          f"pretrained on autoencoder latents (`cxrfm pretrain --latents AE`) has an autoencoder whose "
                          f"reconstructions can be scored")
    arch = dict(cfg.image_arch)
    folder, want = arch.get("ae"), arch.get("ae_hash")
    where = f"model.image_arch.ae in {_config_file(context)}"
    if not folder or not want:
        raise TaskSkipped(f"{_config_file(context)} records no autoencoder folder and hash (model.image_arch.ae / "
                          f"ae_hash; a run from `cxrfm pretrain --latents AE` has both), so there is no decoder to "
                          f"score; the other tasks evaluate the run without it")
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskSkipped(f"the run's autoencoder folder {folder} is gone (moved or deleted; the run keeps only the "
                          f"encoder, not the decoder). Put the folder back at {folder}, or set {where} to its new "
                          f"place, and evaluate again; the other tasks do not need it")
    try:
        have = read_ae_meta(folder)["weights_sha256"][:16]
        if have != want:
            raise TaskSkipped(f"{folder} now holds another autoencoder (hash {have}) than the one this run was "
                              f"trained on (hash {want}), so its decoder does not belong to the run's latents. Put the "
                              f"run's autoencoder back at {folder}, or set {where} to where it is now")
        ae, meta = load_autoencoder(folder, arch.get("factor"), arch.get("channels"))
    except AutoencoderError as e:
        raise TaskSkipped(f"the run's autoencoder cannot be used: {e}") from None
    return ae, meta, arch


# ---------------------------------------------------------------- the task
def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def run(context: "EvalContext", settings: ReconstructionSettings | None = None) -> dict:
    """The ``reconstruction`` task of the evaluation suite; ``settings`` None: :data:`DEFAULT_SETTINGS`."""
    from ..data.latent_cache import RANGE, round_trip
    from ..metrics import bootstrap_mean_ci
    from ..models.autoencoder import AutoencoderError, check_side, ms_ssim, psnr
    from .embed import open_image_cache

    settings = settings if settings is not None else DEFAULT_SETTINGS
    ae, meta, arch = run_autoencoder(context)
    size = int(context.model.image_size)
    try:
        side = check_side(size, ae.config.factor, "the run's image_size")
    except AutoencoderError as e:
        raise TaskSkipped(str(e)) from None
    m = context.manifest
    rng = context.rng("reconstruction")
    n_all = len(m)
    rows = np.arange(n_all)
    if n_all > settings.max_images:
        rows = np.sort(rng.choice(n_all, int(settings.max_images), replace=False))
    if context.images is None:  # shared with the embedding tasks (the decoded-image cache at the run's size)
        context.images = open_image_cache(m, size, cache_dir=context.cache_dir, progress=context.progress)
    dev = _device(context.model)
    ae = ae.to(dev)
    ps, ms, clipped = [], [], 0
    with torch.no_grad():
        for start in range(0, len(rows), int(settings.batch_size)):
            x = context.images.batch(rows[start:start + int(settings.batch_size)]).to(dev)
            z = ae.encode(x)
            clipped += int((z.abs() > RANGE).sum())
            rec = round_trip(ae, x, z)
            ps.append(psnr(rec, x).cpu())
            ms.append(ms_ssim(rec, x).cpu())
    p, s = torch.cat(ps).double().numpy(), torch.cat(ms).double().numpy()
    pids = m.table["patient_id"].astype(str).to_numpy()[rows]
    ids = [str(v) for v in m.table["image"].iloc[rows]]

    def summary(v: np.ndarray) -> dict:
        return {"mean": float(v.mean()), "ci": list(bootstrap_mean_ci(v, pids, rng, context.n_boot)),
                "median": float(np.median(v))}

    picks = pick_examples(p)
    examples = {k: {"image": ids[i], "psnr": float(p[i]), "ms_ssim": float(s[i])} for k, i in picks.items()}
    figure = None
    if context.out_dir is not None:
        x = context.images.batch(rows[list(picks.values())]).to(dev)
        figure = str(write_png(example_strip(x, round_trip(ae, x)), Path(context.out_dir) / FIGURE_FILE))
    c, f = ae.config.channels, ae.config.factor
    return {"psnr": {**summary(p), "unit": "dB"}, "ms_ssim": summary(s), "n": int(len(rows)), "n_rows": int(n_all),
            "factor": int(f), "channels": int(c), "storage_ratio": float(size * size / (c * side * side)),
            "latent_shape": [int(c), int(side), int(side)], "image_size": size,
            "clipped_fraction": clipped / max(1, len(rows) * c * side * side),
            "ae": str(arch["ae"]), "ae_hash": str(arch["ae_hash"]),
            "ae_training_steps": (meta.get("training") or {}).get("steps"), "examples": examples, "figure": figure,
            "layout": LAYOUT,
            "settings": asdict(settings), "n_boot": int(context.n_boot)}


# ---------------------------------------------------------------- registration (cxrfm.tasks.registry)
from .registry import Task, register_task  # noqa: E402 - registration goes last, after run() exists

register_task(Task(
    name="reconstruction", run=run, title="Latent compression: reconstruction of the evaluated images",
    result_keys=("psnr", "ms_ssim", "n", "factor", "channels", "storage_ratio", "examples", "figure"),
    console="cxrfm.reporting.sections.reconstruction:console", html="cxrfm.reporting.sections.reconstruction:html",
    default=False, order=48, towers=("latent",),
    summary="latent runs only: PSNR / MS-SSIM of the run's autoencoder after 8-bit latents, best/median/worst images"))
