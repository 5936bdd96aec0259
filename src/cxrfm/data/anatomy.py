"""Anatomy masks: which structures a manifest has, reading and checking masks, the fixed split.

Manifest contract: ``mask`` (both lungs) and ``mask_<structure>`` columns (``mask_heart``,
``mask_left_lung``, ...), paths relative to the manifest, 0/255 (or 0/1) PNGs of the image's size;
``ctr_reference`` optional. "left" is the patient's left (the image's right on a PA film).

The split of an anatomy manifest is fixed in the code (:func:`anatomy_split`): patients split 60/20/20
into train / val / test with :func:`cxrfm.data.splits.split_patients` at seed 0. Settings are chosen
on ``val``; every reported figure is on ``test``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..errors import CxrfmError

if TYPE_CHECKING:
    from .schema import Manifest

PREFIX = "mask_"
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_NAMES = ("train", "val", "test")
LUNGS = ("left_lung", "right_lung")


class MaskError(CxrfmError):
    """A mask that cannot be used: unreadable, not binary, of another size than its image, empty."""


MASK_FILE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")


def structure_columns(table) -> dict[str, str]:
    """``{structure: column}`` for every ``mask_<structure>`` column whose filled cells are mask files
    (a metadata column such as ``mask_source``, holding text, is not a structure)."""
    out = {}
    for col in table.columns:
        if str(col).startswith(PREFIX) and len(str(col)) > len(PREFIX):
            vals = table[col].dropna().astype(str).str.strip()
            vals = vals[vals != ""]
            if len(vals) and vals.str.lower().str.endswith(MASK_FILE_SUFFIXES).all():
                out[str(col)[len(PREFIX):]] = str(col)
    return out


def read_mask(path: str | Path, expect_hw: tuple[int, int] | None = None, allow_empty: bool = True) -> np.ndarray:
    """A binary mask file -> bool (H, W). Values must be two levels: {0, 255}, {0, 1} or one of them.

    Raises :class:`MaskError` naming the file and the fix when it is missing, not an image, not binary
    (an anti-aliased or grey mask: threshold it at half its maximum first), of another size than
    ``expect_hw`` (its image), or empty when ``allow_empty`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: mask file not found; masks are 0/255 PNGs of the image's size")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on a bad file
        raise MaskError(f"{path}: not a readable image ({type(e).__name__}: {e}); masks are 0/255 PNGs") from None
    if arr.ndim != 2:
        raise MaskError(f"{path}: a mask must be one grey channel, got shape {arr.shape}")
    values = np.unique(arr)
    if len(values) > 2 or not set(values.tolist()) <= {0, 1, 255}:
        shown = ", ".join(map(str, values[:6].tolist())) + (" ..." if len(values) > 6 else "")
        raise MaskError(f"{path}: the mask is not binary ({len(values)} grey levels: {shown}); write 0 for "
                        f"background and 255 for the structure (threshold an anti-aliased mask at 128)")
    mask = arr > 0
    if expect_hw is not None and tuple(mask.shape) != tuple(expect_hw):
        raise MaskError(f"{path}: the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
                        f"{expect_hw[1]}x{expect_hw[0]}; a mask must have its image's size")
    if not allow_empty and not mask.any():
        raise MaskError(f"{path}: the mask is empty (no structure pixel); a support must show the structure")
    return mask


def to_input(img: torch.Tensor, size: int) -> torch.Tensor:
    """(1, H, W) image or 0/1 mask -> (1, size, size) letterboxed (the networks' input)."""
    from .images import letterbox

    return letterbox(img.float(), size)


def mask_to_input(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool (H, W) -> float (1, size, size) in [0, 1] (letterboxed, soft at the edges)."""
    return to_input(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None], size)


def from_input(prob: torch.Tensor, height: int, width: int, source: tuple[int, int] | None = None) -> torch.Tensor:
    """Undo the letterbox: (C, size, size) -> (C, height, width), bilinear. ``source``: the (H, W) of the image
    that was letterboxed, when (height, width) is another size of it (a downscaled working size, same aspect)."""
    import torch.nn.functional as F

    from .images import letterbox_geometry

    size = int(prob.shape[-1])
    new_h, new_w, top, left = letterbox_geometry(*(source or (height, width)), size)
    crop = prob[:, top:top + new_h, left:left + new_w]
    return F.interpolate(crop[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]


def anatomy_split(manifest: "Manifest") -> np.ndarray:
    """One of train / val / test per row, patient-disjoint, fixed (seed 0, 60/20/20 of rows)."""
    from .splits import split_patients

    return split_patients(manifest, SPLIT_FRACTIONS, seed=0, names=SPLIT_NAMES, stratify_by=None)


def load_structures(manifest: "Manifest", rows, structures=None) -> tuple[list[torch.Tensor], dict[str, list]]:
    """Images (1, H, W) of ``rows`` and their masks ``{structure: [bool (H, W) or None]}``."""
    from .images import read_image

    cols = structure_columns(manifest.table)
    if structures is not None:
        missing = [s for s in structures if s not in cols]
        if missing:
            raise MaskError(f"{manifest.path or 'manifest'}: no mask_{missing[0]} column (has "
                            f"{', '.join('mask_' + c for c in cols) or 'none'})")
        cols = {s: cols[s] for s in structures}
    images, masks = [], {s: [] for s in cols}
    for r in rows:
        img = read_image(manifest.root / str(manifest.table["image"].iloc[int(r)]))
        images.append(img)
        for s, col in cols.items():
            v = manifest.table[col].iloc[int(r)]
            masks[s].append(None if (v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "")
                            else read_mask(manifest.root / str(v), expect_hw=tuple(img.shape[-2:])))
    return images, masks
