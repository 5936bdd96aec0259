"""Read radiograph pixels (PNG, JPEG, DICOM) into one form: float32 tensor (1, H, W) in [0, 1].

The format is taken from the file's content (PNG signature, JPEG SOI marker, DICOM ``DICM``
preamble), never from its extension, because exported datasets often mislabel files.

DICOM follows the display pipeline of DICOM PS3.4 (Grayscale Standard Display Function chain,
section N.2): stored values -> Modality LUT (or Rescale Slope / Intercept) -> VOI LUT (or Window
Center / Width) -> Presentation LUT, where MONOCHROME1 means "high values are dark" and is inverted
so that bone is always bright. Pixels equal to Pixel Padding Value (outside the exposed field) are
set to black and left out of the min-max scaling. The result is min-max scaled to [0, 1]: DICOM
values have no fixed range (12-, 14-, 15-bit detectors, Hounsfield units), and the model's own
normalisation travels with its config, not with the file.
Compressed pixel data (JPEG Lossless, 12-bit JPEG, JPEG-LS, JPEG 2000, RLE) is decompressed by
pydicom's decoder plug-ins, see :mod:`cxrfm.data.dicom_codecs`.

PNG and JPEG: 8-bit files are divided by 255 (their range is the file's own); 16-bit and 32-bit
integer files are min-max scaled because a 16-bit container rarely says how many bits it holds
(a 12-bit detector's 0..4095 would otherwise look black). Colour images become luma
(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) and transparent pixels are composited on black, the same
conversion the shared CXR set was built with (``shared/data/cxr/README.md``).

:func:`letterbox` brings any image to a square ``size x size`` without distorting anatomy
(aspect ratio kept, zero padding), as in the CheXzero / CLIP preprocessing of chest radiographs.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ImageReadError
from .dicom_codecs import decode_pixel_array, describe_missing_pixels, read_int_element

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
# Largest image (in pixels) we agree to decode: Pillow's own decompression-bomb threshold
# (~89 Mpx, e.g. 9459 x 9459). Chest radiographs are at most ~4300 x 4300 (18 Mpx).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
EXPECTED = "expected PNG, JPEG or DICOM"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------- public API
def read_image(path: str | Path) -> torch.Tensor:
    """Decode a PNG, JPEG or DICOM file into a float32 tensor (1, H, W) in [0, 1].

    Raises :class:`ImageReadError` naming the file and the fix when the file is missing, empty, not
    an image, truncated, too large, a DICOM without pixel data, or a 3-D volume.
    """
    path = Path(path)
    return read_image_bytes(_read_file_bytes(path), name=str(path))


def read_image_bytes(data: bytes, name: str = "<upload>") -> torch.Tensor:
    """Same as :func:`read_image`, from bytes in memory (an HTTP upload). ``name`` is used in errors.

    Safe on untrusted input: images above :data:`MAX_PIXELS` are refused before their pixels are
    decoded, and truncated or malformed files raise :class:`ImageReadError`.
    """
    if not data:
        raise ImageReadError(f"{name}: the file is empty (0 bytes); {EXPECTED}")
    kind = _sniff(data[:DICOM_MAGIC_OFFSET + 4])
    if kind in ("png", "jpeg"):
        arr = _decode_pillow(data, name)
    elif kind == "dicom":
        arr = _decode_dicom(_parse_dicom(data, name, force=False), name)
    else:
        ds = _try_bare_dicom(data)
        if ds is None:
            raise ImageReadError(_not_an_image(name, data))
        arr = _decode_dicom(ds, name)
    return torch.from_numpy(arr).unsqueeze(0)  # (1, H, W)


def read_dicom(path: str | Path, *, apply_voi: bool = True) -> torch.Tensor:
    """Decode a DICOM file (with or without preamble) into float32 (1, H, W) in [0, 1].

    ``apply_voi=False`` skips the VOI LUT / windowing (keeps the full modality range, e.g. for
    CT in Hounsfield units); Modality LUT, MONOCHROME1 inversion and padding are always applied.
    """
    path = Path(path)
    data = _read_file_bytes(path)
    kind = _sniff(data[:DICOM_MAGIC_OFFSET + 4])
    if kind == "dicom":
        ds = _parse_dicom(data, str(path), force=False)
    else:
        ds = _try_bare_dicom(data)
        if ds is None:
            what = f"it is a {kind.upper()} file; use read_image" if kind else "no DICM preamble and no pixel data"
            raise ImageReadError(f"{path}: not a DICOM file ({what}); {EXPECTED}")
    return torch.from_numpy(_decode_dicom(ds, str(path), apply_voi=apply_voi)).unsqueeze(0)


def check_image(path: str | Path) -> tuple[int, int]:
    """Cheap header-level check: return (width, height) or raise :class:`ImageReadError`.

    Reads only the header (PNG/JPEG) or the data set without loading pixel data (DICOM): it catches
    missing, empty, non-image, pixel-less, volumetric and oversized files, not truncated pixel data.
    """
    path = Path(path)
    name = str(path)
    head = _read_file_bytes(path, limit=DICOM_MAGIC_OFFSET + 4)
    kind = _sniff(head)
    if kind in ("png", "jpeg"):
        return _open_pillow(path, name, decode=False)
    if kind == "dicom":
        ds = _parse_dicom(path, name, force=False, defer_pixels=True)
    else:
        ds = _try_bare_dicom(path, defer_pixels=True)
        if ds is None:
            raise ImageReadError(_not_an_image(name, head))
    rows, cols = _check_dicom_header(ds, name)
    return cols, rows


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where an (height, width) image lands in a ``size x size`` letterbox: (new_h, new_w, top, left)."""
    scale = size / max(height, width)
    new_h = max(1, min(size, round(height * scale)))
    new_w = max(1, min(size, round(width * scale)))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def letterbox(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (1, H, W) so its longest side is ``size``, keeping the aspect ratio, and centre it on a
    zero (black) ``size x size`` canvas. Returns float32 (1, size, size).

    Resizing is bilinear with antialiasing (a triangle filter over the source footprint when
    shrinking), so downsizing a 3000 px radiograph does not alias rib edges; values stay in the input
    range. The position of the image is :func:`letterbox_geometry`. Works for masks too: letterbox
    the 0/1 float mask and threshold at 0.5.
    """
    if img.ndim != 3 or img.shape[0] != 1:
        raise ValueError(f"letterbox expects a (1, H, W) tensor, got shape {tuple(img.shape)}")
    _, h, w = img.shape
    new_h, new_w, top, left = letterbox_geometry(h, w, size)
    x = img.to(torch.float32)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x.unsqueeze(0), size=(new_h, new_w), mode="bilinear",
                          align_corners=False, antialias=True).squeeze(0)  # (1, new_h, new_w)
    out = torch.zeros((1, size, size), dtype=torch.float32)
    out[:, top:top + new_h, left:left + new_w] = x
    return out


# ---------------------------------------------------------------- file access and sniffing
def _read_file_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file; check the path (manifest paths are relative to "
                             f"the manifest's folder)") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file; {EXPECTED}") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied; make the file readable (chmod +r)") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot be read ({e.strerror}); check the disk or path") from None
    if not data:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-export it as PNG, JPEG or DICOM")
    return data


def _sniff(head: bytes) -> str | None:
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def _not_an_image(name: str, head: bytes) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in (".dcm", ".dicom", ".dic"):
        why = "not a DICOM file (no DICM preamble and no pixel data)"
    elif suffix == ".png":
        why = "not a PNG file (no PNG signature)"
    elif suffix in (".jpg", ".jpeg", ".jpe"):
        why = "not a JPEG file (no JPEG start marker)"
    else:
        why = "not a PNG, JPEG or DICOM file"
    sample = head[:16]
    try:
        text = sample.decode("utf-8")
        looks = f"it starts with text {text!r}" if text.isprintable() else f"it starts with bytes {sample!r}"
    except UnicodeDecodeError:
        looks = f"it starts with bytes {sample!r}"
    return f"{name}: {why}; {looks}; {EXPECTED}"


# ---------------------------------------------------------------- PNG / JPEG via Pillow
def _check_pillow_header(im: Image.Image, name: str) -> tuple[int, int]:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(f"{name}: {w}x{h} pixels is above the {MAX_PIXELS:,}-pixel safety limit "
                             f"(decompression bomb guard); downsize the image before use")
    if w < 1 or h < 1:
        raise ImageReadError(f"{name}: the image has no pixels ({w}x{h}); re-export it")
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise ImageReadError(f"{name}: an animated image with {frames} frames; cxrfm reads 2-D radiographs: "
                             f"save the frame you want as a single PNG")
    return w, h


def _decode_pillow(data: bytes, name: str) -> np.ndarray:
    return _open_pillow(io.BytesIO(data), name, decode=True)


def _open_pillow(src, name: str, decode: bool):
    """(width, height) from the header, or (decode=True) the float32 (H, W) pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                size = _check_pillow_header(im, name)
                if not decode:
                    return size
                im.load()
                return _pillow_to_gray(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{name}: above the {MAX_PIXELS:,}-pixel safety limit (decompression bomb "
                             f"guard: {e}); downsize the image before use") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: the image data cannot be identified ({e}); re-export it") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncation as OSError("image file is truncated ...") and bad chunks as SyntaxError.
        raise ImageReadError(f"{name}: the image data is truncated or corrupt ({e}); re-export or "
                             f"re-download the file") from e


def _pillow_to_gray(im: Image.Image) -> np.ndarray:
    """Pillow image -> float32 (H, W) in [0, 1] (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _minmax(np.asarray(im).astype(np.float64))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "LA" or mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, RGBX, ...
    arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3 or 4)
    gray = arr[..., :3] @ _LUMA  # (H, W)
    if arr.shape[-1] == 4:
        gray = gray * arr[..., 3]  # composite on black
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _minmax(arr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Scale to [0, 1] over ``valid`` pixels (all by default); invalid pixels become 0."""
    vals = arr if valid is None else arr[valid]
    if vals.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = float(vals.min()), float(vals.max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros(arr.shape)
    if valid is not None:
        out = np.where(valid, out, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- DICOM via pydicom
def _parse_dicom(src, name: str, force: bool, defer_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(fp, force=force, defer_size="64 KB" if defer_pixels else None)
    except InvalidDicomError as e:
        raise ImageReadError(f"{name}: not a DICOM file ({e}); {EXPECTED}") from e
    except Exception as e:  # pydicom raises many types on malformed data sets
        raise ImageReadError(f"{name}: the DICOM data set is truncated or malformed "
                             f"({type(e).__name__}: {e}); re-export the file") from e


def _try_bare_dicom(src, defer_pixels: bool = False):
    """A DICOM data set written without the 128-byte preamble, or None if ``src`` is not one.

    pydicom's ``force=True`` reads almost any bytes as *some* data set, so it only counts as DICOM if
    it has pixel data with Rows/Columns, or names a SOP class (then it is a pixel-less DICOM object).
    """
    try:
        ds = _parse_dicom(src, "", force=True, defer_pixels=defer_pixels)
        if _has_pixels(ds) and "Rows" in ds and "Columns" in ds:
            return ds
        return ds if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.") else None
    except Exception:  # ImageReadError, or pydicom failing on garbage while reading an element
        return None


def _set_missing_transfer_syntax(ds) -> None:
    """Data sets without file meta (ACR-NEMA style) still need a transfer syntax to decode pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_dicom_header(ds, name: str) -> tuple[int, int]:
    if not _has_pixels(ds):
        if (truncated := describe_missing_pixels(ds, name)) is not None:
            raise ImageReadError(truncated)
        what = ds.get("Modality") or ds.get("SOPClassUID", "unknown")
        raise ImageReadError(f"{name}: a DICOM file with no pixel data (Modality/SOP class {what}); it is not "
                             f"an image (a report, plan or structured document?). Give the image file instead")
    rows, cols = read_int_element(ds, "Rows", 0, name), read_int_element(ds, "Columns", 0, name)
    if rows < 1 or cols < 1:
        raise ImageReadError(f"{name}: DICOM Rows/Columns are missing or zero ({rows}x{cols}); re-export the file")
    frames = read_int_element(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise ImageReadError(f"{name}: a 3-D volume / multi-frame DICOM ({frames} frames of {cols}x{rows}); "
                             f"cxrfm reads 2-D radiographs: export the frame you want as its own file")
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"{name}: {cols}x{rows} pixels is above the {MAX_PIXELS:,}-pixel safety limit; "
                             f"downsize the image before use")
    return rows, cols


def _decode_dicom(ds, name: str, apply_voi: bool = True) -> np.ndarray:
    """DICOM data set -> float32 (H, W) in [0, 1]: Modality LUT, VOI LUT, MONOCHROME1, padding, min-max."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    _check_dicom_header(ds, name)
    _set_missing_transfer_syntax(ds)
    raw = decode_pixel_array(ds, name)  # decoder plug-ins; the error names the package that would help
    samples = read_int_element(ds, "SamplesPerPixel", 1, name)
    if raw.ndim != 2 and not (raw.ndim == 3 and raw.shape[-1] in (3, 4) and samples > 1):
        raise ImageReadError(f"{name}: pixel array has shape {raw.shape}, not the {ds.Rows}x{ds.Columns} single "
                             f"image its header describes (a 3-D volume, or wrong Rows/Columns); cxrfm reads 2-D "
                             f"radiographs: export one frame as its own file")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds).astype(np.float64)
        return _minmax(rgb[..., :3] @ _LUMA.astype(np.float64))
    if raw.ndim == 3:  # RGB / YBR_* (pydicom converts YBR to RGB)
        return _minmax(raw[..., :3].astype(np.float64) @ _LUMA.astype(np.float64))

    padding = ds.get("PixelPaddingValue")
    valid = None
    if padding is not None:
        valid = raw != padding
        if "PixelPaddingRangeLimit" in ds:
            lo, hi = sorted((int(padding), int(ds.PixelPaddingRangeLimit)))
            valid = (raw < lo) | (raw > hi)
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")  # overflow is checked below, as non-finite values
            arr = apply_modality_lut(raw, ds)  # stays integer unless rescaled: a VOI LUT indexes by value
    except Exception as e:  # noqa: BLE001 - pydicom raises several types on a malformed LUT
        raise ImageReadError(f"{name}: the DICOM Modality LUT / Rescale Slope and Intercept are malformed "
                             f"({type(e).__name__}: {e}); re-export the file") from e
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{name}: Rescale Slope {ds.get('RescaleSlope')} / Intercept "
                             f"{ds.get('RescaleIntercept')} give non-finite values; re-export the file")
    if apply_voi:
        arr = _apply_voi_or_skip(arr, ds)
    arr = arr.astype(np.float64)
    if photometric == "MONOCHROME1":
        arr = -arr  # high stored values are dark: flip so bone is bright
    return _minmax(arr, valid)


def _apply_voi_or_skip(arr: np.ndarray, ds) -> np.ndarray:
    """VOI LUT or window; an invalid one (width < 1, NaN, a malformed LUT) is skipped, as viewers do:
    the full modality range is shown instead (what ``read_dicom(apply_voi=False)`` gives)."""
    from pydicom.pixels import apply_voi_lut

    try:
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
    except Exception:  # noqa: BLE001 - pydicom raises several types on a malformed VOI
        return arr
    return out if np.isfinite(out).all() else arr
