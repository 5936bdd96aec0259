"""Anatomy in the served analysis: which model folder a run uses, outlines of the masks, the CTR.

:class:`ServedAnatomy` wraps :class:`cxrfm.inference.anatomy.Anatomy` (the one inference path: the
supervised U-Net and :func:`~cxrfm.inference.anatomy.cardiothoracic_ratio`) for
:class:`cxrfm.inference.analyze.Analyzer`:

* the folder: ``RUN/anatomy`` when the run holds one (``anatomy.json``), else
  :func:`~cxrfm.models.anatomy_store.default_anatomy_dir` (``$CXRFM_ANATOMY`` or the shipped one); when
  none loads, anatomy is absent with a note and the rest of the analysis goes on;
* :meth:`ServedAnatomy.entry` -> the ``anatomy`` entry of ``/v1/analyze``: per structure an outline as
  polygons in the ORIGINAL image's pixel coordinates (pixel edges: x in [0, W], y in [0, H]; a mask
  covering columns c0..c1 has outline x from c0 to c1 + 1), simplified to at most :data:`MAX_POINTS`
  points per structure, and the CTR (``CTR.to_dict()``: lines as (row, x0, x1) pixel indices, inclusive)
  with a one-line summary for the page.

Images whose longest side is over :data:`ANATOMY_SIDE` are measured at a working size downscaled to it
(the networks see a letterboxed 128-512 px input anyway); outlines, lines and widths are then scaled back
to the original pixels, and the ratio is the one measured (scale-free up to a pixel of the working size).
The masks come from one U-Net pass (:class:`cxrfm.inference.anatomy.AnatomyPass`: the network's
probabilities on the letterboxed image, resized to the working size), which the evidence trail's zones
of the same answer share (:func:`cxrfm.inference.evidence_regions.working_masks`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CxrfmError
from .anatomy import ENLARGED, FRONTAL_VIEWS, LATERAL_VIEWS, downscale, working_size

ANATOMY_SIDE = 1024  # longest side the masks are computed at; larger images are measured on a downscaled copy
MAX_POINTS = 300  # outline points per structure after simplification (all its polygons together)
MAX_POLYGONS = 12  # per structure, largest first
MIN_AREA_FRACTION = 1e-4  # polygons smaller than this share of the image are specks, not drawn
VIEWS = ("PA", "AP", "LATERAL")  # what the page offers; any of FRONTAL_VIEWS / LATERAL_VIEWS is accepted

log = logging.getLogger(__name__)


class ViewError(CxrfmError):
    """A ``view`` that is neither a frontal nor a lateral projection name."""


def check_view(view: str | None) -> str | None:
    """The view, upper-cased, or None when not given ('' or 'unknown'); raises :class:`ViewError` otherwise."""
    if view is None:
        return None
    v = str(view).strip().upper()
    if v in ("", "UNKNOWN"):
        return None
    if v in FRONTAL_VIEWS or v in LATERAL_VIEWS:
        return v
    shown = ", ".join(sorted(FRONTAL_VIEWS | LATERAL_VIEWS))
    raise ViewError(f"view {str(view)[:40]!r} is not a known projection; use one of {shown} "
                    f"(or leave it out when unknown: the CTR is then measured as on a frontal film)")


@dataclass
class ServedAnatomy:
    """The anatomy model an Analyzer serves, or why there is none."""

    anatomy: Any  # cxrfm.inference.anatomy.Anatomy, or None
    folder: str | None  # the model folder's name (never its full path: the API does not reveal the server's paths)
    origin: str | None  # "run" (RUN/anatomy), "CXRFM_ANATOMY" or "shipped"
    note: str | None = None  # why anatomy is absent

    def describe(self) -> dict:
        return {"available": self.anatomy is not None, "folder": self.folder, "origin": self.origin,
                "structures": list(self.anatomy.structures_names) if self.anatomy is not None else [],
                "note": self.note}

    def one_pass(self, img: torch.Tensor, letterboxed: torch.Tensor | None = None):
        """The U-Net pass (lazy: :class:`cxrfm.inference.anatomy.AnatomyPass`) that :meth:`entry` and the
        evidence zones of one answer share; None without a model (or with one that has no such pass)."""
        if self.anatomy is None or not hasattr(self.anatomy, "one_pass"):
            return None
        return self.anatomy.one_pass(img, letterboxed)

    def entry(self, img: torch.Tensor, view: str | None = None, shared=None) -> dict:
        """The ``anatomy`` entry for one (1, H, W) image; never raises (a failure becomes the note).
        ``shared``: :meth:`one_pass` of this image, when the caller keeps it for the evidence zones too."""
        if self.anatomy is None:
            return self._absent(self.note)
        try:
            view = check_view(view)
            return {"available": True, "note": None, "model": self.describe(),
                    **measure(self.anatomy, img, view, shared)}
        except ViewError:
            raise
        except Exception as e:  # noqa: BLE001 - anatomy must never take the rest of the analysis down
            log.warning("anatomy failed on an image: %s: %s", type(e).__name__, e)
            return self._absent(f"the anatomy model failed on this image ({type(e).__name__}: {str(e)[:200]})")

    def _absent(self, note: str | None) -> dict:
        return {"available": False, "note": note, "model": self.describe(), "view": None, "image_size": None,
                "structures": {}, "ctr": None, "summary": f"Anatomy unavailable: {note}"}


def load_served_anatomy(run_dir: str | Path | None) -> ServedAnatomy:
    """``RUN/anatomy`` if it holds an anatomy folder, else the default one; absent with a note if none loads."""
    import os

    from ..models.anatomy_store import META, SHIPPED, default_anatomy_dir
    from .anatomy import Anatomy

    own = Path(run_dir) / "anatomy" if run_dir is not None else None
    if own is not None and (own / META).is_file():
        folder, origin = own, "run"
    else:
        folder = default_anatomy_dir()
        origin = "CXRFM_ANATOMY" if os.environ.get("CXRFM_ANATOMY") else "shipped"
    try:
        return ServedAnatomy(Anatomy(model_dir=folder), folder.name, origin)
    except Exception as e:  # noqa: BLE001 - AnatomyModelError, or a folder of another version
        where = {"run": "the run's anatomy folder", "CXRFM_ANATOMY": "the folder $CXRFM_ANATOMY names",
                 "shipped": "the shipped anatomy folder"}[origin]
        hint = (" (no trained anatomy model ships with this version yet: set CXRFM_ANATOMY to a folder made by "
                "`cxrfm anatomy train`)" if origin == "shipped" and not (SHIPPED / META).is_file() else "")
        return ServedAnatomy(None, folder.name, origin, f"{where} could not be loaded{hint}: {e}")


# ---------------------------------------------------------------- measuring one image
def measure(anatomy, img: torch.Tensor, view: str | None, shared=None) -> dict:
    """Masks and CTR at a working size (longest side <= ANATOMY_SIDE), scaled back to ``img``'s pixels.

    The masks are the U-Net pass ``shared`` (``anatomy.one_pass(img)``; made here when not given) resized to
    the working size, so no downscaled copy of the image is made. An anatomy object without ``one_pass``
    is asked to ``measure`` a downscaled copy instead."""
    _, h0, w0 = img.shape
    if shared is None and hasattr(anatomy, "one_pass"):
        shared = anatomy.one_pass(img)
    if shared is not None:
        h, w = working_size(h0, w0, ANATOMY_SIDE)
        masks = shared.masks(h, w)
        ctr = anatomy.ctr(masks, view)
    else:
        work = downscale(img, ANATOMY_SIDE)
        _, h, w = work.shape
        masks, ctr = anatomy.measure(work, view=view)
    sy, sx = h0 / h, w0 / w
    structures = {s: {"outline": outline(m, sy, sx), "area_fraction": round(float(m.mean()), 4)}
                  for s, m in masks.items()}
    c = scale_ctr(ctr.to_dict(), sy, sx)
    return {"view": view, "image_size": {"height": int(h0), "width": int(w0)},
            "working_size": {"height": int(h), "width": int(w)}, "structures": structures, "ctr": c,
            "summary": ctr_summary(c)}


def scale_ctr(c: dict, sy: float, sx: float) -> dict:
    """A CTR dict measured on a working copy -> the original image's pixels (identity when not scaled)."""
    if sy == 1.0 and sx == 1.0:
        return c
    out = dict(c)
    for key, width in (("heart_line", "heart_width"), ("thorax_line", "thorax_width")):
        line = c.get(key)
        if line is None:
            continue
        row, x0, x1 = line
        nx0, nx1 = int(math.floor(x0 * sx)), int(math.ceil((x1 + 1) * sx)) - 1
        out[key] = (int(round((row + 0.5) * sy - 0.5)), nx0, nx1)
        out[width] = nx1 - nx0 + 1
    return out


def ctr_summary(c: dict) -> str:
    """One line for the page: the ratio and what it suggests, or why it was not measured."""
    if c.get("ratio") is None:
        return f"CTR not measured: {c.get('refused') or 'no reason given'}"
    r = c["ratio"]
    view = (c.get("view") or "").upper()
    if r > ENLARGED:
        what = ("above 0.5, but an AP film magnifies the heart: read with care" if view.startswith("AP")
                else "above 0.5: enlarged cardiac silhouette on a PA film")
    else:
        what = "at or below 0.5: cardiac silhouette not enlarged"
    return f"CTR {r:.2f} ({what})"


# ---------------------------------------------------------------- outlines
def outline(mask: np.ndarray, sy: float = 1.0, sx: float = 1.0, max_points: int = MAX_POINTS
            ) -> list[list[list[float]]]:
    """bool (h, w) -> polygons ``[[[x, y], ...], ...]`` in pixel-edge coordinates scaled by (sx, sy).

    Every boundary of the mask (outer ones and holes), specks under MIN_AREA_FRACTION dropped, the
    largest MAX_POLYGONS kept, simplified (Ramer-Douglas-Peucker) to ``max_points`` points in all."""
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    z = np.pad(mask, 1).astype(np.float32)  # closed contours also where the mask touches the border
    lines = contourpy.contour_generator(z=z, line_type="Separate").lines(0.5)
    polys = [np.asarray(p, dtype=np.float64) - 0.5 for p in lines if len(p) >= 4]  # padded centres -> edges
    min_area = MIN_AREA_FRACTION * mask.size
    polys = sorted((p for p in polys if abs(_area(p)) >= min_area), key=lambda p: -abs(_area(p)))[:MAX_POLYGONS]
    if not polys:
        return []
    tol = 0.5
    while True:
        simple = [_simplify_closed(p, tol) for p in polys]
        if sum(len(p) for p in simple) <= max_points or tol > max(mask.shape):
            break
        tol *= 1.5
    h, w = mask.shape
    out = []
    for p in simple:
        x = np.clip(p[:, 0] * sx, 0, w * sx)
        y = np.clip(p[:, 1] * sy, 0, h * sy)
        out.append([[round(float(a), 1), round(float(b), 1)] for a, b in zip(x, y)])
    return out


def _area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _simplify_closed(p: np.ndarray, tol: float) -> np.ndarray:
    """A closed ring (first point repeated last, or not) simplified; returned open (no repeated point)."""
    if np.allclose(p[0], p[-1]):
        p = p[:-1]
    if len(p) <= 4:
        return p
    far = int(np.argmax(((p - p[0]) ** 2).sum(1)))  # split the ring at the point farthest from its start
    a = _rdp(p[:far + 1], tol)
    b = _rdp(np.vstack([p[far:], p[:1]]), tol)
    return np.vstack([a[:-1], b[:-1]])


def _rdp(p: np.ndarray, tol: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open polyline (iterative, keeps both ends)."""
    keep = np.zeros(len(p), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(p) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = p[i], p[j]
        d = b - a
        seg = p[i + 1:j] - a
        n = math.hypot(d[0], d[1])
        dist = np.abs(d[0] * seg[:, 1] - d[1] * seg[:, 0]) / n if n > 0 else np.hypot(seg[:, 0], seg[:, 1])
        k = int(np.argmax(dist))
        if dist[k] > tol:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return p[keep]


__all__ = ["ANATOMY_SIDE", "MAX_POINTS", "VIEWS", "ServedAnatomy", "ViewError", "check_view", "ctr_summary",
           "load_served_anatomy", "measure", "outline", "scale_ctr"]
