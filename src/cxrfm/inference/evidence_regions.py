"""Where a finding's Grad-CAM map peaks, named by lung zone from the anatomy model's predicted lungs.

Zones follow the radiologist's convention for frontal films: each lung is split into thirds of its own
vertical extent (upper / middle / lower zone), left and right being the PATIENT's (``left_lung`` of
:class:`cxrfm.inference.anatomy.Anatomy` lies on the image's right). A peak is placed by the masks it
falls in; a peak outside both lungs but inside the thorax (the lungs' bounding box) is named by the
nearer lung and marked as outside its outline; the mediastinum is the part of the thorax between the
two lungs' inner edges.

Which places count as support depends on the finding (:data:`REGION_OF`): a lung finding needs its
peak inside a lung, a cardiac one inside the heart (the enlarged cardiomediastinum also in the
mediastinum), pleura, bones and devices anywhere inside the thorax.
"""
from __future__ import annotations

import numpy as np
import torch

# finding -> the region a supporting Grad-CAM peak must fall in
REGION_OF: dict[str, str] = {
    "Lung Opacity": "lungs", "Consolidation": "lungs", "Atelectasis": "lungs", "Edema": "lungs",
    "Lung Lesion": "lungs", "Pneumonia": "lungs", "Bacterial pneumonia": "lungs", "Viral pneumonia": "lungs",
    "COVID-19": "lungs", "Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "cardiomediastinum",
    "Pleural Effusion": "thorax", "Pneumothorax": "thorax", "Pleural Other": "thorax", "Fracture": "thorax",
    "Support Devices": "thorax",
}
REGION_WORDS = {"lungs": "the lungs", "heart": "the cardiac silhouette",
                "cardiomediastinum": "the cardiac silhouette or mediastinum", "thorax": "the thorax"}
MASK_SIDE = 256  # longest side the anatomy masks are computed at for placing peaks
FLAT = 1e-6  # a heat map whose max - min is below this has no peak (e.g. a 1 x 1 last feature map)
LUNGS = ("right_lung", "left_lung")


def heat_peak(heat: np.ndarray | None, height: int, width: int) -> dict | None:
    """The hottest point of ``heat`` (h, w) in [0, 1], in the original image's pixels (x, y), or None when
    the map is absent or flat."""
    if heat is None or heat.size == 0 or float(heat.max() - heat.min()) < FLAT:
        return None
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    h, w = heat.shape
    return {"x": int(min(width - 1, (px + 0.5) * width / w)), "y": int(min(height - 1, (py + 0.5) * height / h)),
            "value": round(float(heat[py, px]), 3)}


def working_masks(anatomy, img: torch.Tensor, shared=None) -> dict[str, np.ndarray]:
    """The anatomy's masks of ``img`` at a working size whose longest side is at most MASK_SIDE.

    From the U-Net pass ``shared`` (``anatomy.one_pass(img)``, the one the served outlines of the same
    answer use; made here when not given) resized to the working size. An anatomy object without
    ``one_pass`` (a stand-in with ``structures`` only) is asked for the structures of a downscaled copy."""
    from .anatomy import downscale, working_size

    if shared is None and hasattr(anatomy, "one_pass"):
        shared = anatomy.one_pass(img)
    if shared is not None:
        return shared.masks(*working_size(*img.shape[-2:], MASK_SIDE))
    img = downscale(img, MASK_SIDE)
    return {k: np.asarray(v, dtype=bool) for k, v in anatomy.structures(img).items()}


def _zone(mask: np.ndarray, row: int) -> str:
    rows = np.flatnonzero(mask.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    third = (bottom - top + 1) / 3.0
    k = 0 if row < top + third else 1 if row < top + 2 * third else 2
    return ("upper", "middle", "lower")[k]


def _side(name: str) -> str:
    return "left" if name == "left_lung" else "right"


def locate(peak: dict, masks: dict[str, np.ndarray], height: int, width: int) -> dict:
    """Name the place of ``peak`` (original pixels) from ``masks`` (any size, same aspect):
    {inside: [structures], zone, in_thorax, in_mediastinum, where (words: "in the left lower zone",
    "outside the lung outline, by the right upper zone", "outside the thorax"...)}."""
    mh, mw = next(iter(masks.values())).shape
    r = int(min(mh - 1, peak["y"] * mh / height))
    c = int(min(mw - 1, peak["x"] * mw / width))
    inside = sorted(s for s, m in masks.items() if m[r, c])
    lungs = {s: masks[s] for s in LUNGS if s in masks and masks[s].any()}
    out = {"inside": inside, "zone": None, "in_thorax": False, "in_mediastinum": False}
    if not lungs:
        out["where"] = "where no lung was found by the anatomy model"
        return out
    both = np.zeros((mh, mw), dtype=bool)
    for m in lungs.values():
        both |= m
    rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    out["in_thorax"] = bool(rows[0] <= r <= rows[-1] and cols[0] <= c <= cols[-1])
    if len(lungs) == 2:  # between the lungs' inner edges (the right lung lies on the image's left)
        inner_r = np.flatnonzero(lungs["right_lung"].any(axis=0))[-1]
        inner_l = np.flatnonzero(lungs["left_lung"].any(axis=0))[0]
        lo, hi = min(inner_r, inner_l), max(inner_r, inner_l)
        out["in_mediastinum"] = bool(out["in_thorax"] and lo < c < hi and not any(s in inside for s in LUNGS))
    lung = next((s for s in LUNGS if s in inside and s in lungs), None)
    if lung is not None:
        out["zone"] = f"{_side(lung)} {_zone(lungs[lung], r)} zone"
        out["where"] = f"in the {out['zone']}"
    elif out["in_thorax"]:
        near = min(lungs, key=lambda s: _column_gap(lungs[s], c))
        out["zone"] = f"{_side(near)} {_zone(lungs[near], min(max(r, rows[0]), rows[-1]))} zone"
        what = "in the cardiac silhouette" if "heart" in inside else "in the mediastinum" if out["in_mediastinum"] \
            else "outside the lung outline"
        out["where"] = f"{what}, by the {out['zone']}"
    else:
        out["where"] = "outside the thorax" + (" (in the cardiac silhouette)" if "heart" in inside else "")
    return out


def _column_gap(mask: np.ndarray, c: int) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return 0 if cols[0] <= c <= cols[-1] else int(min(abs(c - cols[0]), abs(c - cols[-1])))


def region_supports(finding: str, place: dict) -> bool:
    """Whether a peak at ``place`` (from :func:`locate`) is where ``finding`` is seen."""
    need = REGION_OF.get(finding, "thorax")
    inside = set(place.get("inside", ()))
    if need == "lungs":
        return bool(inside & set(LUNGS))
    if need == "heart":
        return "heart" in inside
    if need == "cardiomediastinum":
        return "heart" in inside or bool(place.get("in_mediastinum"))
    return bool(place.get("in_thorax"))


def heat_share(heat: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of the heat map's total inside each structure (the map resized to the masks)."""
    import torch.nn.functional as F

    mh, mw = next(iter(masks.values())).shape
    h = F.interpolate(torch.from_numpy(np.asarray(heat, np.float32))[None, None], size=(mh, mw), mode="bilinear",
                      align_corners=False)[0, 0].numpy()
    total = float(h.sum())
    if total <= 0:
        return {}
    return {s: round(float(h[m].sum()) / total, 3) for s, m in masks.items()}
