"""Anatomy for one image: heart and lung masks, the cardiothoracic ratio, and in-context segmentation.

* :func:`segment` — ``segment(query, support_images, support_masks)``: the in-context segmenter
  (:class:`cxrfm.models.anatomy_nets.InContextSegmenter`) outlines in the query whatever structure the
  k support pairs show, with no fine-tuning. :class:`FewShot` keeps the supports' encoding for many
  queries.
* :class:`Anatomy` — the supervised U-Net: ``Anatomy().structures(image)`` -> left lung, right lung,
  heart masks at the image's size; ``Anatomy().measure(image, view)`` adds the CTR.
  ``Anatomy().one_pass(image)`` -> :class:`AnatomyPass`: the U-Net run once on the image, its
  probabilities kept at the network's own (letterboxed) size and resized per use, so the served outlines
  (<= 1024 px) and the evidence zones (<= 256 px) of one answer share one pass.
* :func:`cardiothoracic_ratio` — heart width / thorax width from masks (the widths are the masks'
  horizontal extents, as in the Wingspan reference; the thorax is both lungs together), refused with a
  reason on lateral films or when the lungs cannot be found.

Images are (1, H, W) float tensors in [0, 1] (:func:`cxrfm.data.images.read_image`); masks are bool
(H, W) numpy arrays of their image's size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.anatomy import MaskError, from_input, mask_to_input, to_input
from ..errors import CxrfmError

LATERAL_VIEWS = {"L", "LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "AP ERECT", "AP SEMI-ERECT", "FRONTAL", "PA/AP"}
ENLARGED = 0.5  # CTR above this on a PA film suggests an enlarged cardiac silhouette
MIN_LUNG_SHARE = 0.01  # each predicted lung must cover >= 1 % of the image to measure a CTR


class FewShotError(CxrfmError):
    """Supports that cannot be used (none, a mask of another size than its image, an empty mask)."""


def _as_image(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1:
        raise FewShotError(f"{what}: expected a grey image (1, H, W) or (H, W), got shape {tuple(t.shape)}")
    return t


def check_supports(support_images: Sequence, support_masks: Sequence) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Validate k support pairs; raise :class:`FewShotError` naming the support and the fix."""
    imgs, masks = list(support_images), list(support_masks)
    if len(imgs) == 0:
        raise FewShotError("k = 0: no support pair given; in-context segmentation needs at least one image with "
                           "its mask of the structure (1-5 supports work best)")
    if len(imgs) != len(masks):
        raise FewShotError(f"{len(imgs)} support images but {len(masks)} support masks; give one mask per image")
    out_i, out_m = [], []
    for j, (im, m) in enumerate(zip(imgs, masks)):
        im = _as_image(im, f"support {j}")
        m = np.asarray(m)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != tuple(im.shape[-2:]):
            raise FewShotError(f"support {j}: the mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} (WxH) but "
                               f"its image is {im.shape[-1]}x{im.shape[-2]}; a mask must have its image's size")
        vals = np.unique(m)
        if m.dtype != bool and not set(vals.tolist()) <= {0, 1, 255}:
            raise FewShotError(f"support {j}: the mask is not binary ({len(vals)} values); use 0 and 255 (or 0/1)")
        m = m.astype(bool)
        if not m.any():
            raise FewShotError(f"support {j}: the mask is empty; each support must show the structure")
        out_i.append(im)
        out_m.append(m)
    return out_i, out_m


class FewShot:
    """The in-context segmenter with one support set encoded once (reused for every query)."""

    def __init__(self, support_images: Sequence, support_masks: Sequence, model=None,
                 model_dir: str | Path | None = None, threshold: float = 0.5):
        from ..models.anatomy_store import load_incontext

        imgs, masks = check_supports(support_images, support_masks)
        self.net = model if model is not None else load_incontext(model_dir)
        self.size = int(self.net.config.size)
        self.threshold = float(threshold)
        self.k = len(imgs)
        x = torch.stack([to_input(im, self.size) for im in imgs])
        y = torch.stack([mask_to_input(m, self.size) for m in masks])
        with torch.inference_mode():
            self.cache = self.net.encode_support(x, y)

    @torch.inference_mode()
    def probability(self, query) -> torch.Tensor:
        """(H, W) probability of the structure at the query's own size."""
        q = _as_image(query, "query")
        logits = self.net.segment_cached(to_input(q, self.size)[None], self.cache)[0]
        return from_input(torch.sigmoid(logits), *q.shape[-2:])[0]

    def __call__(self, query) -> np.ndarray:
        return (self.probability(query) > self.threshold).numpy()


def segment(query, support_images: Sequence, support_masks: Sequence, model=None,
            model_dir: str | Path | None = None, threshold: float = 0.5) -> np.ndarray:
    """The structure the supports show, outlined in ``query``: bool (H, W) at the query's size."""
    return FewShot(support_images, support_masks, model=model, model_dir=model_dir, threshold=threshold)(query)


# ---------------------------------------------------------------- CTR
@dataclass(frozen=True)
class CTR:
    ratio: float | None
    heart_width: int | None = None  # pixels
    thorax_width: int | None = None
    heart_line: tuple[int, int, int] | None = None  # (row, x0, x1) where the overlay draws the width
    thorax_line: tuple[int, int, int] | None = None
    enlarged: bool | None = None  # ratio > 0.5 (meaningful on PA; AP films magnify the heart)
    view: str | None = None
    refused: str | None = None  # why no ratio was measured

    def to_dict(self) -> dict:
        return asdict(self)


def _extent(mask: np.ndarray) -> tuple[int, int, int] | None:
    cols = np.where(mask.any(0))[0]
    if not len(cols):
        return None
    rows = np.where(mask.any(1))[0]
    return int(round(rows.mean())), int(cols[0]), int(cols[-1])


def view_refusal(view: str | None) -> str | None:
    """A reason to refuse the CTR for this view, or None (frontal or unknown)."""
    if view is None or (isinstance(view, float) and np.isnan(view)) or not str(view).strip():
        return None
    v = str(view).strip().upper()
    if v in LATERAL_VIEWS or "LAT" in v:
        return (f"the view is {view!r} (lateral): the cardiothoracic ratio is measured on frontal (PA/AP) films "
                f"only")
    return None


def cardiothoracic_ratio(heart: np.ndarray, left_lung: np.ndarray, right_lung: np.ndarray,
                         view: str | None = None) -> CTR:
    """Heart width over thorax width (horizontal extents), with the lines to draw."""
    why = view_refusal(view)
    if why:
        return CTR(None, view=view, refused=why)
    heart, ll, rl = (np.asarray(m, dtype=bool) for m in (heart, left_lung, right_lung))
    n = heart.size
    if ll.sum() < MIN_LUNG_SHARE * n or rl.sum() < MIN_LUNG_SHARE * n:
        return CTR(None, view=view, refused="both lungs were not found, so this is not measurable as a frontal "
                                            "film (a lateral or non-chest image, or a lung fully opacified)")
    if not heart.any():
        return CTR(None, view=view, refused="no cardiac silhouette was found")
    h, t = _extent(heart), _extent(ll | rl)
    hw, tw = h[2] - h[1] + 1, t[2] - t[1] + 1
    ratio = float(hw / tw)
    return CTR(ratio, hw, tw, h, t, enlarged=bool(ratio > ENLARGED), view=None if view is None else str(view))


def working_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of a copy whose longest side is at most ``side`` (the image's own size when it already is)."""
    if max(height, width) <= side:
        return int(height), int(width)
    s = side / max(height, width)
    return max(8, round(height * s)), max(8, round(width * s))


def downscale(img: torch.Tensor, side: int) -> torch.Tensor:
    """(1, H, W) -> a copy at :func:`working_size` (bilinear, antialiased); ``img`` itself when it fits."""
    _, h, w = img.shape
    size = working_size(h, w, side)
    if size == (h, w):
        return img
    return torch.nn.functional.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False,
                                           antialias=True)[0]


class AnatomyPass:
    """One U-Net pass over one (1, H, W) image, shared by every caller that needs its masks at some size.

    The network sees the image letterboxed to its own input size (``net.config.size``, e.g. 128 px) whatever
    the caller's working size, so one probability map at that size serves them all: :meth:`masks` crops the
    image's part of the letterbox and resizes it (bilinear) to the size asked, then thresholds. At the
    image's own size this is exactly :meth:`Anatomy.structures`. The pass is lazy: the U-Net runs on the
    first call only, and a failure is kept and raised again to every later caller (each says so its own way).

    ``letterboxed``: ``letterbox(image, size)`` when the caller has it already (the dual encoder's input has
    the same form); used only when its shape is the network's input shape, else the pass makes its own.
    """

    def __init__(self, anatomy: "Anatomy", image, letterboxed: torch.Tensor | None = None):
        self.anatomy = anatomy
        self._image = _as_image(image, "image")
        self.height, self.width = int(self._image.shape[-2]), int(self._image.shape[-1])
        self._letterboxed = letterboxed
        self._prob: torch.Tensor | None = None
        self._error: Exception | None = None

    @torch.inference_mode()
    def probability_map(self) -> torch.Tensor:
        """(C, S, S): the U-Net's probabilities on the letterboxed image, at the network's input size."""
        if self._prob is None and self._error is None:
            size = int(self.anatomy.net.config.size)
            x = self._letterboxed
            if x is None or tuple(x.shape) != (1, size, size):
                x = to_input(self._image, size)
            try:
                self._prob = torch.sigmoid(self.anatomy.net(x[None].float()))[0]
            except Exception as e:  # noqa: BLE001 - kept: every caller reports it in its own words
                self._error = e
            self._image = self._letterboxed = None  # the map is all that is needed from now on
        if self._error is not None:
            raise self._error
        return self._prob

    @torch.inference_mode()
    def probabilities(self, height: int | None = None, width: int | None = None) -> dict[str, torch.Tensor]:
        """(height, width) probability per structure (default: the image's own size; give a downscaled copy's
        size, same aspect, to get that copy's masks without running the U-Net on it)."""
        full = from_input(self.probability_map(), int(height or self.height), int(width or self.width),
                          source=(self.height, self.width))
        return {s: full[j] for j, s in enumerate(self.anatomy.structures_names)}

    def masks(self, height: int | None = None, width: int | None = None) -> dict[str, np.ndarray]:
        """bool (height, width) per structure (default: the image's own size)."""
        return {s: (p > self.anatomy.threshold).numpy() for s, p in self.probabilities(height, width).items()}


class Anatomy:
    """The supervised U-Net (lungs left / right, heart) of an anatomy folder (default: the shipped one)."""

    def __init__(self, model_dir: str | Path | None = None, model=None, threshold: float = 0.5):
        from ..models.anatomy_store import load_unet

        self.net = model if model is not None else load_unet(model_dir)
        self.structures_names = tuple(self.net.config.structures)
        self.threshold = float(threshold)

    def one_pass(self, image, letterboxed: torch.Tensor | None = None) -> AnatomyPass:
        """The U-Net on ``image`` once (lazily), for masks at any size: see :class:`AnatomyPass`."""
        return AnatomyPass(self, image, letterboxed)

    def probabilities(self, image) -> dict[str, torch.Tensor]:
        return self.one_pass(image).probabilities()

    def structures(self, image) -> dict[str, np.ndarray]:
        """bool (H, W) per structure, at the image's size."""
        return self.one_pass(image).masks()

    def ctr(self, masks: dict[str, np.ndarray], view: str | None = None) -> CTR:
        """The CTR of this model's masks (refused on lateral films, or where both lungs are not found)."""
        why = view_refusal(view)
        if why:
            return CTR(None, view=view, refused=why)
        need = ("heart", "left_lung", "right_lung")
        if not all(s in masks for s in need):
            return CTR(None, view=view, refused="this anatomy model does not segment the heart and both lungs")
        return cardiothoracic_ratio(masks["heart"], masks["left_lung"], masks["right_lung"], view)

    def measure(self, image, view: str | None = None) -> tuple[dict[str, np.ndarray], CTR]:
        """The structures and the CTR (refused on lateral films, or where both lungs are not found)."""
        masks = self.structures(image)
        return masks, self.ctr(masks, view)


__all__ = ["Anatomy", "AnatomyPass", "CTR", "FewShot", "FewShotError", "MaskError", "cardiothoracic_ratio",
           "check_supports", "downscale", "segment", "view_refusal", "working_size"]
