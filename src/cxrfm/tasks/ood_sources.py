"""Images that are not chest radiographs, by family, for measuring the OOD gate; all offline.

Real images come from installed packages, never copied into the repository: scikit-image's bundled
photos and scans (``skimage.data``; the ones it would download are skipped), matplotlib's sample data
(a photo, logos, an MR slice, elevation maps), the DICOM test files of ``pydicom`` and ``pydicom-data``
(CT, MR, US, NM, PET, secondary captures, an extremity CR; a chest one is left out). Synthetic families
(noise of several kinds, gradients, checkerboards, stripes, shapes, rendered text, blank and near-blank
images) are drawn from a fixed seed. Every item keeps its colour (``rgb``) where it had one, because
the gate's colour check needs the source's channels, not the grey image the reader makes.

Each family is either ``val`` (the gate's thresholds may look at it) or ``test`` (held out as a whole
kind, to show the gate refuses kinds it was not tuned on): :data:`TEST_FAMILIES`.
"""
from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Held out as whole kinds: the gate's parameters never looked at these (see docs/robustness.md).
TEST_FAMILIES = frozenset({"pydicom-data", "matplotlib", "noise-pink", "noise-saltpepper", "gradient-radial",
                           "text-rendered", "shapes", "photo-inverted", "near-blank"})


@dataclass
class NonCXR:
    family: str
    name: str
    gray: torch.Tensor  # (1, H, W) in [0, 1], as cxrfm's reader would give it
    rgb: np.ndarray | None = None  # (H, W, 3) uint8 where the source was colour

    @property
    def split(self) -> str:
        return "test" if self.family in TEST_FAMILIES else "val"


def to_gray(arr: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3/4) array of any range -> (1, H, W) float32 in [0, 1], luma as the reader does."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.ndim == 3:
        scale = 255.0 if arr.dtype == np.uint8 or arr.max() > 1 else 1.0
        arr = arr[..., :3].astype(np.float32) / scale @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if arr.dtype != np.uint8 and (lo < 0 or hi > 1):
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        elif hi > 1:
            arr = arr / 255.0
    return torch.from_numpy(np.clip(arr, 0, 1).astype(np.float32)).unsqueeze(0)


def _rgb_u8(arr: np.ndarray) -> np.ndarray | None:
    if arr.ndim != 3:
        return None
    a = arr[..., :3]
    return a if a.dtype == np.uint8 else np.clip(a * (255.0 if a.max() <= 1 else 1.0), 0, 255).astype(np.uint8)


def _item(family: str, name: str, arr: np.ndarray) -> NonCXR:
    return NonCXR(family, name, to_gray(arr), _rgb_u8(np.asarray(arr)))


# ---------------------------------------------------------------- real images from packages
_SKIMAGE = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
            "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
            "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text", "camera")


def skimage_photos() -> Iterator[NonCXR]:
    """Every skimage.data image that loads offline (photos, micrographs, scans, a phantom, faces)."""
    import skimage.data as sd

    for name in sorted(set(_SKIMAGE)):
        try:
            arr = np.asarray(getattr(sd, name)())
        except Exception:  # noqa: BLE001, S112 - an image skimage would download is skipped (offline)
            continue
        yield _item("skimage", name, arr)
    for name in ("stereo_motorcycle", "lfw_subset"):
        try:
            data = getattr(sd, name)()
        except Exception:  # noqa: BLE001, S112 - as above
            continue
        if name == "stereo_motorcycle":
            yield _item("skimage", "motorcycle_left", data[0])
            yield _item("skimage", "motorcycle_right", data[1])
        else:  # 200 face crops of 25 x 25: take every tenth
            for i in range(0, len(data), 10):
                yield _item("skimage-faces", f"lfw_{i:03d}", data[i])


def photo_inverted() -> Iterator[NonCXR]:
    """Inverted skimage photos: a negative of a photo is still no chest film (unlike an inverted CXR)."""
    for it in skimage_photos():
        if it.family == "skimage" and it.gray.shape[-1] >= 200:
            yield NonCXR("photo-inverted", it.name, 1.0 - it.gray, None if it.rgb is None else 255 - it.rgb)


def matplotlib_samples() -> Iterator[NonCXR]:
    """matplotlib's sample data: a portrait, logos, a 256 x 256 MR head slice, elevation maps."""
    import matplotlib
    from PIL import Image

    d = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        if (d / name).exists():
            with Image.open(d / name) as im:
                yield _item("matplotlib", name, np.asarray(im.convert("RGB")))
    if (d / "s1045.ima.gz").exists():
        with gzip.open(d / "s1045.ima.gz") as f:
            mr = np.frombuffer(f.read(), np.uint16).astype(np.float64)
        yield _item("matplotlib", "s1045_mr", mr.reshape(256, 256))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        if (d / name).exists():
            with np.load(d / name) as z:
                yield _item("matplotlib", name, np.asarray(z[key], np.float64))


def _dicom_dirs() -> list[tuple[str, Path]]:
    out = []
    try:
        import pydicom

        out.append(("pydicom-tests", Path(pydicom.__file__).resolve().parent / "data" / "test_files"))
    except ImportError:
        pass
    try:
        import data_store  # the import name of pydicom-data

        out.append(("pydicom-data", Path(data_store.__file__).resolve().parent / "data"))
    except ImportError:
        pass
    return [(f, d) for f, d in out if d.is_dir()]


def dicom_images() -> Iterator[NonCXR]:
    """Non-chest DICOM test images of pydicom and pydicom-data (CT, MR, US, NM, SC, an extremity CR);
    multi-frame files give their middle frame; what cannot be decoded here is skipped."""
    import warnings

    import pydicom

    from ..data.images import read_image

    for family, d in _dicom_dirs():
        for f in sorted(d.glob("*.dcm")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(f, force=True)
                    if str(ds.get("BodyPartExamined", "")).upper() == "CHEST" or ds.get("Modality") in ("SEG", "RTSTRUCT"):
                        continue
                    if "PixelData" not in ds:
                        continue
                    arr = np.asarray(ds.pixel_array)
                    colour = int(ds.get("SamplesPerPixel", 1)) > 1
                    if colour and str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
                        from pydicom.pixels import convert_color_space

                        arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
                    if arr.ndim == (4 if colour else 3):
                        arr = arr[len(arr) // 2]
                    if not colour and arr.ndim == 2:
                        gray = read_image(f)
                        yield NonCXR(family, f.name, gray, None)
                    elif arr.ndim == (3 if colour else 2):
                        yield _item(family, f.name, arr)
            except Exception:  # noqa: BLE001, S112 - a test file that is deliberately broken is skipped
                continue


# ---------------------------------------------------------------- synthetic families
def _sizes(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    fixed = [(300, 400), (256, 256), (512, 384)]
    return fixed + [(int(rng.integers(64, 700)), int(rng.integers(64, 700))) for _ in range(n - len(fixed))]


def synthetic(seed: int = 0, per_family: int = 8) -> Iterator[NonCXR]:
    """Noise, gradients, checkerboards, stripes, shapes, rendered text, blank and near-blank images."""
    rng = np.random.default_rng(seed)
    for h, w in _sizes(rng, per_family):
        yield _item("noise-uniform", f"uniform_{h}x{w}", rng.integers(0, 256, (h, w), dtype=np.uint8))
        yield _item("noise-uniform", f"uniform_rgb_{h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        yield _item("noise-gaussian", f"gauss_{h}x{w}", np.clip(0.5 + rng.normal(0, rng.uniform(.05, .3)) *
                                                                rng.standard_normal((h, w)), 0, 1))
        sp = np.full((h, w), rng.uniform(0.2, 0.8))
        mask = rng.random((h, w))
        sp[mask < 0.05], sp[mask > 0.95] = 0.0, 1.0
        yield _item("noise-saltpepper", f"saltpepper_{h}x{w}", sp)
        yield _item("noise-pink", f"pink_{h}x{w}", _pink(rng, h, w))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        a = rng.uniform(0, 2 * np.pi)
        lin = np.cos(a) * xx + np.sin(a) * yy
        lin = (lin - lin.min()) / (np.ptp(lin) + 1e-9)
        yield _item("gradient-linear", f"linear_{h}x{w}", lin)
        yield _item("gradient-colour", f"colour_{h}x{w}", np.stack([lin, 1 - lin, yy / yy.max()], -1))
        r = np.hypot(yy - rng.uniform(0.2, 0.8) * h / max(h, w), xx - rng.uniform(0.2, 0.8) * w / max(h, w))
        yield _item("gradient-radial", f"radial_{h}x{w}", r)
        cell = int(rng.integers(4, 64))
        yield _item("checkerboard", f"checker_{cell}_{h}x{w}", ((yy * max(h, w) // cell + xx * max(h, w) // cell) % 2))
        period = rng.uniform(4, 60)
        yield _item("stripes", f"stripes_{h}x{w}", 0.5 + 0.5 * np.sin(2 * np.pi * (xx * max(h, w)) / period + a))
        yield _item("shapes", f"shapes_{h}x{w}", _shapes(rng, h, w))
        yield _item("text-rendered", f"text_{h}x{w}", _text(rng, h, w))
        level = rng.uniform(0, 1)
        yield _item("blank", f"blank_{level:.2f}_{h}x{w}", np.full((h, w), level))
        yield _item("near-blank", f"nearblank_{h}x{w}",
                    np.clip(level + rng.normal(0, 0.01, (h, w)), 0, 1))
    yield _item("blank", "black", np.zeros((300, 400)))
    yield _item("blank", "white", np.ones((300, 400)))


def _pink(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1/f noise: smooth clouds, the closest of the noises to a radiograph's texture."""
    f = np.fft.fft2(rng.standard_normal((h, w)))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    img = np.real(np.fft.ifft2(f / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))))
    return (img - img.min()) / (np.ptp(img) + 1e-9)


def _shapes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), int(rng.integers(0, 256)))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(5, w // 2 + 6)), y0 + int(rng.integers(5, h // 2 + 6))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=int(rng.integers(0, 256)))
    return np.asarray(im)


_WORDS = ("patient", "report", "chest", "radiograph", "invoice", "total", "the quick brown fox", "lorem ipsum",
          "dolor sit amet", "PA view", "no acute findings", "page 2 of 7", "signature", "date of birth")


def _text(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A page of rendered text (PIL's bundled font), dark on light or light on dark."""
    from PIL import Image, ImageDraw, ImageFont

    dark = rng.random() < 0.5
    im = Image.new("L", (w, h), 20 if dark else 240)
    d = ImageDraw.Draw(im)
    size = int(rng.integers(10, 40))
    font = ImageFont.load_default(size=size)
    for y in range(4, h, size + 4):
        d.text((4, y), " ".join(rng.choice(_WORDS, 6)), fill=230 if dark else 15, font=font)
    return np.asarray(im)


# ---------------------------------------------------------------- all of it
FAMILY_SOURCES: tuple[Callable[[], Iterator[NonCXR]], ...] = (skimage_photos, photo_inverted, matplotlib_samples,
                                                              dicom_images, synthetic)


def all_non_cxr() -> list[NonCXR]:
    """Every non-CXR image above; among the real ones, exact duplicates (the same picture in several
    encodings or packages) are kept once (synthetic ones are distinct by construction: a near-blank
    image would otherwise collapse onto the blank one of its level)."""
    from ..data.images import letterbox

    out, seen = [], set()
    for source in FAMILY_SOURCES:
        for it in source():
            if source is synthetic:
                out.append(it)
                continue
            key = hashlib.sha1((letterbox(it.gray, 16) * 15).round().to(torch.uint8).numpy().tobytes()
                               + (b"c" if it.rgb is not None else b"g")).hexdigest()
            if key not in seen:
                seen.add(key)
                out.append(it)
    return out


# ---------------------------------------------------------------- the chest films they are measured against
CXR_FOLDERS = ("cxr", "anatomy", "pairs")


def patient_split(patient_id: str) -> str:
    """``val`` or ``test`` for a patient, fixed by a hash of its id (about half each; every image of a
    patient on one side), so the gate's validation part never sees a test patient."""
    return "val" if int(hashlib.sha1(str(patient_id).encode()).hexdigest(), 16) % 2 == 0 else "test"


def cxr_items(shared_data: str | Path) -> list[dict]:
    """Every real chest film of the shared data: {source, view, patient_id, path, split}; ``source`` is
    ``<folder>:<manifest source>``, the lone DICOM is ``dicom:<file>``."""
    import pandas as pd

    root = Path(shared_data)
    out = []
    for folder in CXR_FOLDERS:
        man = root / folder / "manifest.csv"
        if not man.exists():
            continue
        df = pd.read_csv(man, dtype=str, keep_default_na=False)
        for r in df.itertuples(index=False):
            out.append({"source": f"{folder}:{r.source}", "view": getattr(r, "view", "") or "?",
                        "patient_id": r.patient_id, "path": root / folder / r.image, "split": patient_split(r.patient_id)})
    for f in sorted((root / "dicom").glob("*.dcm")) if (root / "dicom").is_dir() else []:
        out.append({"source": f"dicom:{f.name}", "view": "?", "patient_id": f"dicom:{f.name}", "path": f,
                    "split": "test"})
    return out
