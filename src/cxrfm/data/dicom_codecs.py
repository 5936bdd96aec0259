"""Decompress DICOM pixel data: pydicom's decoder plug-ins, one standard repair, errors naming the package.

Hospital PACS exports use JPEG Lossless (process 14, the CR/DX default of many vendors), 12-bit JPEG
Extended and JPEG-LS, which pydicom cannot decompress by itself. pydicom hands compressed frames to
decoder plug-ins (DICOM PS3.5 section 8.2 lists the transfer syntaxes); cxrfm installs ``pylibjpeg``
with ``pylibjpeg-libjpeg``, which covers all three, while Pillow (already a dependency) covers JPEG
Baseline and JPEG 2000 and pydicom itself covers RLE and deflate. Measured on every single-frame
image in pydicom's and pydicom-data's test files, that pair was the smallest set that decodes them
all (``tests/data/test_dicom_codecs.py``).

One repair is made: a sequential-mode JPEG whose start-of-scan header says spectral selection
other than 0..63 (a known encoder bug, e.g. NEMA WG04's ``NM1_JPLY``) is decoded with 0..63, which
is what the IJG reference decoder does for sequential JPEG (it warns "Invalid SOS parameters for
sequential JPEG" and ignores them); libjpeg refuses such a stream outright.

When decoding fails the error says why (the header checks that name a cut-off file or a malformed
value live here too): no decoder installed for this transfer syntax (and the
``pip install`` that adds one), a transfer syntax no PyPI plug-in decodes, or data that the
installed decoders reject as corrupt.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import ImageReadError

_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
# Transfer syntax UID -> the pip packages whose pydicom plug-in decodes it (pydicom 3 decoder table).
PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,   # JPEG Baseline (Pillow also decodes it)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,   # JPEG Extended, 12-bit
    "1.2.840.10008.1.2.4.57": _LIBJPEG,   # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": _LIBJPEG,   # JPEG Lossless, process 14, selection value 1
    "1.2.840.10008.1.2.4.80": _LIBJPEG,   # JPEG-LS Lossless (pyjpegls also decodes it)
    "1.2.840.10008.1.2.4.81": _LIBJPEG,   # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless (Pillow also decodes it)
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # High-Throughput JPEG 2000 (Lossless)
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom decodes it natively too)
}
_SEQUENTIAL_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_RE_EXPORT = ("convert it to an uncompressed DICOM (e.g. `gdcmconv --raw in.dcm out.dcm` from python-gdcm, "
              "or dcmtk's `dcmdjpeg`) or export it again as PNG")


def decode_pixel_array(ds, name: str) -> np.ndarray:
    """The stored pixel values of a single-frame data set, decompressed; :class:`ImageReadError` if not."""
    _check_end_marker(ds, name)
    try:
        return _pixel_array(ds)
    except Exception as first:  # noqa: BLE001 - pydicom and its plug-ins raise many types
        tsyntax = _transfer_syntax(ds)
        if str(tsyntax) in _SEQUENTIAL_JPEG and _repair_sequential_sos(ds):
            try:
                return _pixel_array(ds)
            except Exception:  # noqa: BLE001 - report the original failure, not the repaired one's
                pass
        raise ImageReadError(describe_failure(name, tsyntax, first)) from first


def describe_failure(name: str, tsyntax, error: Exception) -> str:
    """Why the pixel data of ``name`` could not be decoded, and what would help."""
    from pydicom.pixels import get_decoder

    if tsyntax is None:
        return (f"{name}: DICOM pixel data cannot be decoded: the transfer syntax is unknown "
                f"({type(error).__name__}: {error}); re-export the file")
    ts = f"{tsyntax.name} ({tsyntax})"
    packages = PACKAGES.get(str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return (f"{name}: DICOM pixel data cannot be decoded: it is compressed as {ts}, which no decoder "
                f"plug-in of pydicom supports; {_RE_EXPORT}")
    if not decoder.is_available:
        return (f"{name}: DICOM pixel data cannot be decoded: it is compressed as {ts} and no decoder for it "
                f"is installed; install one with `pip install {packages or 'python-gdcm'}` and run again")
    tried = f" (decoders tried: {', '.join(decoder.available_plugins)})" if tsyntax.is_compressed else ""
    hint = ""
    if packages and not _installed(packages):
        hint = f" Another decoder may read it: `pip install {packages}`."
    return (f"{name}: DICOM pixel data cannot be decoded, {ts}{tried}: {type(error).__name__}: "
            f"{_first_lines(error)}. The file is probably truncated or corrupt; re-export it.{hint}")


def _check_end_marker(ds, name: str) -> None:
    """Refuse a JPEG / JPEG-LS / JPEG 2000 frame cut short inside a well-formed DICOM envelope.

    libjpeg decodes such a stream without complaint and fills in the missing rows: a silently wrong
    image. Every complete codestream of these families ends with FFD9 (EOI, or EOC for JPEG 2000);
    encoders pad an odd length with one 00 or FF byte after it (both seen in pydicom-data).
    """
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None or str(tsyntax) not in PACKAGES or str(tsyntax) == "1.2.840.10008.1.2.5":  # RLE: no marker
        return
    from pydicom.encaps import get_frame

    try:
        frame = bytes(get_frame(ds.PixelData, 0, number_of_frames=1))
    except Exception:  # noqa: BLE001 - malformed encapsulation: the decoder reports it
        return
    if not frame.rstrip(b"\x00\xff").endswith(b"\xd9") or not frame.rstrip(b"\x00\xff")[:-1].endswith(b"\xff"):
        raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded: the {tsyntax.name} frame does not end "
                             f"with an end-of-image marker ({len(frame):,} bytes), so it was cut short; the file "
                             f"is truncated or corrupt: export it again")


def describe_missing_pixels(ds, name: str) -> str | None:
    """The error for a data set without pixel data that was meant to be an image (a cut-off file), else None.

    pydicom drops an element cut off by the end of the file (or the whole data set, when the cut falls
    inside an undefined-length sequence), so a truncated image looks like a pixel-less object.
    """
    meta_class = getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    if "Rows" in ds:
        return (f"{name}: a DICOM file with no pixel data, although its header describes a "
                f"{ds.get('Columns')}x{ds.get('Rows')} image: the file is probably truncated; copy or export it again")
    if meta_class is not None and "Image Storage" in meta_class.name:
        return (f"{name}: a DICOM file with no pixel data, although its file meta names an {meta_class.name}: "
                f"the data set ends early, the file is truncated; copy or export it again")
    return None


def read_int_element(ds, keyword: str, default: int, name: str) -> int:
    """An integer header element; a malformed value (e.g. NumberOfFrames '1A') is an error, not a crash."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid value it then hands over as text
            value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError) as e:
        raw = ds[keyword].value if keyword in ds else None
        raise ImageReadError(f"{name}: DICOM {keyword} is {raw!r}, not a whole number ({e}); the header is "
                             f"malformed: re-export the file") from None


def _pixel_array(ds) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _installed(packages: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        for p in packages.split():
            version(p)
    except PackageNotFoundError:
        return False
    return True


def _first_lines(error: Exception) -> str:
    # pydicom puts a heading line ending in ':' over one line per plug-in that failed; keep those lines.
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.endswith(":")] or lines
    return "; ".join(reasons[:4]).rstrip(".")


# ---------------------------------------------------------------- the sequential-JPEG SOS repair
def _repair_sequential_sos(ds) -> bool:
    """Set Ss/Se/Ah/Al of the first scan to 0/63/0/0 in a single-frame sequential JPEG; True if changed."""
    from pydicom.encaps import encapsulate, get_frame

    if int(ds.get("NumberOfFrames") or 1) != 1 or "PixelData" not in ds:
        return False
    try:
        frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    except Exception:  # noqa: BLE001 - malformed encapsulation: nothing to repair
        return False
    at = find_sequential_sos_selection(frame)
    if at is None or frame[at:at + 3] == b"\x00\x3f\x00":
        return False
    frame[at:at + 3] = b"\x00\x3f\x00"
    ds.PixelData = encapsulate([bytes(frame)])
    return True


def find_sequential_sos_selection(jpeg: bytes | bytearray) -> int | None:
    """Offset of the first scan's (Ss, Se, Ah/Al) bytes in a baseline/extended sequential JPEG, else None.

    Walks the marker segments (ITU-T T.81 annex B) from SOI up to the first SOS; returns None for
    progressive, lossless or hierarchical streams (their Ss/Se carry meaning) and for malformed data.
    """
    if jpeg[:2] != b"\xff\xd8":
        return None
    i, sequential = 2, False
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            return None
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM and RSTn stand alone
            i += 2
            continue
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker in (0xC0, 0xC1):  # baseline and extended sequential DCT, Huffman coded
            sequential = True
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # progressive, lossless, hierarchical or arithmetic: another process
        if marker == 0xDA:
            if not sequential:
                return None
            n_components = jpeg[i + 4] if i + 4 < len(jpeg) else 0
            at = i + 5 + 2 * n_components
            return at if at + 3 <= i + 2 + length and at + 3 <= len(jpeg) else None
        i += 2 + length
    return None
