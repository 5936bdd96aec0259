"""Model-free image statistics that tell a chest film from other images, and the source's colour.

No model is involved: these hold whatever the network learnt. Each feature is cheap (a 128 px thumbnail)
and says something a chest radiograph shares regardless of hospital, projection (PA, AP, lateral) or
polarity (an inverted film, a MONOCHROME1 mistake, is still a chest film, so no feature assumes bones
are bright): see :data:`FEATURES`.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

THUMB = 128
# name -> what a chest film looks like there (why the feature is in)
FEATURES = {
    "log_aspect": "films are roughly square: log(H/W) near 0 (portrait or landscape up to ~1.5:1)",
    "std": "a film uses the grey range: neither flat nor two-level",
    "entropy": "a smooth, wide grey-level histogram (blank, binary and text pages are narrow)",
    "modal_fraction": "no single grey level covers most of the image (blank, near-blank, backgrounds)",
    "extremes": "few pixels clipped at pure black or white (text, line art, checkerboards)",
    "fine_energy": "anatomy is smooth at 128 px: pixel-to-pixel change is small against the contrast "
                   "(noise, texture and text are not)",
    "edge_density": "few strong edges (photos of objects, text and shapes have many)",
    "lowfreq_share": "most spectral energy at low frequencies (noise spreads it out)",
    "symmetry": "left-right mirror correlation of the thumbnail (frontal films are near-symmetric; laterals less)",
    "center_contrast": "|centre third - outer thirds| of the column profile (mediastinum/spine against lungs)",
    "levels": "many distinct grey levels (synthetic images and line art have few)",
}
NAMES = tuple(FEATURES)


def _thumb(img: torch.Tensor, size: int = THUMB) -> torch.Tensor:
    x = img.float().reshape(1, 1, *img.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]


def crop_borders(img: torch.Tensor, min_std: float = 0.02, keep: float = 0.3) -> torch.Tensor:
    """(H, W) without the flat bands around it (scanner padding, a black or white frame, letterboxing),
    which would otherwise dominate the histogram; unchanged when that would keep under ``keep`` of a side."""
    h, w = img.shape
    busy_r = (img.std(1) > min_std).nonzero().flatten()
    busy_c = (img.std(0) > min_std).nonzero().flatten()
    if len(busy_r) == 0 or len(busy_c) == 0:
        return img
    r0, r1, c0, c1 = int(busy_r[0]), int(busy_r[-1]) + 1, int(busy_c[0]), int(busy_c[-1]) + 1
    if (r1 - r0) < keep * h or (c1 - c0) < keep * w:
        return img
    return img[r0:r1, c0:c1]


def image_features(img: torch.Tensor) -> np.ndarray:
    """The :data:`FEATURES` of one (1, H, W) image in [0, 1] (flat borders cropped), as a float64 vector."""
    full = crop_borders(img.float().reshape(img.shape[-2:]))
    h, w = full.shape
    t = _thumb(full)  # (128, 128)
    # whole-image statistics on at most ~1 Mpx: the same histogram, a fraction of the time on a 3000 px DICOM
    stride = max(1, int(np.ceil(np.sqrt(h * w / 1e6))))
    pix = full[::stride, ::stride]
    std = float(t.std())
    hist = torch.histc(pix, 64, 0.0, 1.0)
    p = hist / hist.sum().clamp_min(1)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / np.log(64))
    extremes = float(((pix <= 1 / 255) | (pix >= 254 / 255)).float().mean())
    blur = F.avg_pool2d(t[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    fine = float((t - blur).abs()[1:-1, 1:-1].mean() / (std + 1e-3))
    gy, gx = t[1:, :-1] - t[:-1, :-1], t[:-1, 1:] - t[:-1, :-1]
    edge = float((torch.hypot(gx, gy) > 0.08).float().mean())
    spec = torch.fft.fft2(t - t.mean()).abs() ** 2
    fy, fx = torch.meshgrid(torch.fft.fftfreq(THUMB), torch.fft.fftfreq(THUMB), indexing="ij")
    low = float(spec[torch.hypot(fy, fx) < 0.08].sum() / spec.sum().clamp_min(1e-12))
    s = _thumb(full, 32)
    sc, sf = s - s.mean(), s.flip(-1) - s.mean()
    sym = float((sc * sf).sum() / ((sc * sc).sum().clamp_min(1e-9)))
    cols = s.mean(0)
    centre = float((cols[11:21].mean() - torch.cat([cols[:11], cols[21:]]).mean()).abs() / (std + 1e-3))
    levels = float(torch.unique((pix * 255).round()).numel()) / 256.0
    return np.array([np.log(h / w), std, entropy, float(p.max()), extremes, fine, edge, low, sym, centre,
                     levels], dtype=np.float64)


def features_matrix(images) -> np.ndarray:
    return np.stack([image_features(im) for im in images]) if len(images) else np.zeros((0, len(NAMES)))


# ---------------------------------------------------------------- colour of the source
def colourfulness(source) -> float:
    """Hasler & Suesstrunk's colourfulness (0 = grey; 0-255 scale) of the source before grey
    conversion: ``source`` is encoded bytes, a path, or an (H, W, 3) uint8 array. A chest film is grey
    in every channel; a grey film saved as colour JPEG stays below ~2 (chroma noise), a photo is ~20-100.
    Returns 0.0 for a grey source and for what can be opened neither by Pillow nor as a colour DICOM."""
    arr = _rgb_array(source)
    if arr is None:
        return 0.0
    rg = arr[..., 0] - arr[..., 1]
    yb = 0.5 * (arr[..., 0] + arr[..., 1]) - arr[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _rgb_array(source) -> np.ndarray | None:
    """(h, w, 3) float32 thumbnail of a colour source, or None when it is grey or not a Pillow image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        im = Image.fromarray(source[..., :3].astype(np.uint8)) if source.ndim == 3 else None
    else:
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source))
            if im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16"):
                return None
            im.draft("RGB", (256, 256))  # JPEG: decode at reduced scale, cheap
            im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return _dicom_rgb(source)
    if im is None:
        return None
    im.thumbnail((256, 256))
    return np.asarray(im, dtype=np.float32)


def layout_thumb(img: torch.Tensor, size: int = 24) -> np.ndarray:
    """A mean-centred, unit-norm (size*size,) thumbnail of the cropped image: where bright and dark lie."""
    t = _thumb(crop_borders(img.float().reshape(img.shape[-2:])), size).flatten()
    t = t - t.mean()
    return (t / (t.norm() + 1e-6)).double().numpy()


def _dicom_rgb(source) -> np.ndarray | None:
    """(h, w, 3) float32 of a colour DICOM (SamplesPerPixel 3, converted to RGB), else None."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, force=True)
            if int(ds.get("SamplesPerPixel", 1)) != 3 or "PixelData" not in ds:
                return None
            arr = np.asarray(ds.pixel_array)
            pi = str(ds.get("PhotometricInterpretation", ""))
            if pi.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                arr = convert_color_space(arr, pi, "RGB")
    except Exception:  # noqa: BLE001 - not a readable colour DICOM: nothing to say about colour
        return None
    arr = arr[len(arr) // 2] if arr.ndim == 4 else arr
    arr = arr.astype(np.float32)
    if arr.max() > 255:
        arr = arr * (255.0 / arr.max())
    step = max(1, max(arr.shape[:2]) // 256)
    return arr[::step, ::step, :3]
