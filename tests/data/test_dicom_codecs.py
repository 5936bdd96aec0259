"""Every DICOM image shipped with pydicom and pydicom-data decodes (or is refused by a stated rule).

The files cover the transfer syntaxes hospitals export: JPEG Lossless, 12-bit JPEG, JPEG-LS, JPEG 2000,
RLE, deflate, big endian, no preamble. Decoding goes through the plug-ins cxrfm depends on (pylibjpeg
+ pylibjpeg-libjpeg, Pillow, pydicom itself).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLosslessSV1, MPEG2MPML, SecondaryCaptureImageStorage, generate_uid

from cxrfm.data.dicom_codecs import find_sequential_sos_selection
from cxrfm.data.images import read_image, read_image_bytes
from cxrfm.errors import ImageReadError

# Files that are broken on purpose (pydicom's README says so); each must give a clear error.
BROKEN = {
    "MR_truncated.dcm": "pixel data cannot be decoded",  # pixel data shorter than Rows x Columns
    "JPEG2000-embedded-sequence-delimiter.dcm": "pixel data cannot be decoded",  # 4 codestream bytes overwritten
    "emri_small_jpeg_2k_lossless_too_short.dcm": "no pixel data, although its file meta names an Enhanced MR Image Storage.*truncated",
    "badVR.dcm": "NumberOfFrames is '1A', not a whole number",  # invalid IS value
    # Colour J2K with a non-conformant JP2 header: Pillow rejects it; the error names the plug-in that reads it.
    "GDCMJ2K_TextGBR.dcm": "pip install pylibjpeg pylibjpeg-openjpeg",
}


def _dicom_folders() -> list[Path]:
    folders = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # pydicom-data's import name (the [eval] extra installs it)

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return folders


def _image_files() -> list:
    """(path, kind) for every file with pixel data: kind is grey, colour, multi-frame or broken."""
    out = []
    for folder in _dicom_folders():
        for f in sorted(folder.glob("*.dcm")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    hdr = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                except Exception:  # noqa: BLE001 - not a data set at all: not an image file
                    continue
                frames = str(hdr.get("NumberOfFrames", "1"))
            if f.name in BROKEN:
                kind = "broken"
            elif "Rows" not in hdr or "BitsAllocated" not in hdr:
                continue  # reports, plans, structured documents: no image
            elif frames != "1":
                kind = "multi-frame"
            elif int(hdr.get("SamplesPerPixel", 1)) > 1 or hdr.get("PhotometricInterpretation") == "PALETTE COLOR":
                kind = "colour"
            else:
                kind = "grey"
            out.append(pytest.param(f, kind, id=f"{'pydicom' if f.parent.name == 'test_files' else 'pydicom-data'}/{f.name}"))
    return out


FILES = _image_files()


def test_the_survey_found_the_files():
    kinds = [p.values[1] for p in FILES]
    assert kinds.count("grey") >= 30 and kinds.count("colour") >= 20 and kinds.count("multi-frame") >= 5


@pytest.mark.parametrize("path,kind", FILES)
def test_every_pydicom_image_decodes_or_is_refused_by_rule(path, kind):
    if kind == "broken":
        with pytest.raises(ImageReadError, match=BROKEN[path.name]):
            read_image(path)
        return
    if kind == "multi-frame":  # the reader's rule: 2-D radiographs only, one frame per file
        with pytest.raises(ImageReadError, match=r"3-D volume / multi-frame DICOM \(\d+ frames"):
            read_image(path)
        return
    x = read_image(path)
    assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 1
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and bool(x.isfinite().all())
    assert float(x.max()) > float(x.min()), "no test image is constant"
    if kind == "grey":
        assert float(x.std()) > 0.05, "every grey test image has visible structure"


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed with pydicom or pydicom-data")
    return Path(path)


def test_jpeg_lossless_is_the_same_picture_as_its_lossy_twin():
    # NEMA WG04's NM1 image, once JPEG Lossless (process 14) and once 12-bit lossy JPEG Extended.
    lossless = read_image(_testfile("JPEG-LL.dcm"))[0].numpy()
    lossy = read_image(_testfile("JPEG-lossy.dcm"))[0].numpy()
    assert lossless.shape == lossy.shape == (1024, 256)
    assert np.corrcoef(lossless.ravel(), lossy.ravel())[0, 1] > 0.98
    assert np.abs(lossless - lossy).mean() < 0.02


def test_12bit_jpeg_with_bad_scan_header_decodes_like_its_fixed_copy():
    """JPEG-lossy.dcm's scan header says Se=0; pydicom's JPGExtended.dcm is the same file with Se=63."""
    bad, fixed = _testfile("JPEG-lossy.dcm"), _testfile("JPGExtended.dcm")
    ds = pydicom.dcmread(bad)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    at = find_sequential_sos_selection(frame)
    assert frame[at:at + 3] == b"\x00\x00\x00"  # the encoder bug the repair is for
    x = read_image(bad)
    assert np.array_equal(x.numpy(), read_image(fixed).numpy())
    assert np.array_equal(read_image_bytes(bad.read_bytes(), name="upload").numpy(), x.numpy())


def test_jpeg_ls_near_lossless_16bit_is_its_staircase():
    # 50 x 10 pixels: ten bands of five rows, 65535 at the top stepping down to 0 at the bottom.
    x = read_image(_testfile("JPEGLSNearLossless_16.dcm"))[0].numpy()
    assert x.shape == (50, 10)
    bands = x.reshape(10, 5, 10)
    assert (bands == bands[:, :1, :1]).all(), "each band is one value"
    levels = bands[:, 0, 0]
    assert levels[0] == 1.0 and levels[-1] == 0.0 and (np.diff(levels) < 0).all()


def test_jpeg_ls_lossless_equals_uncompressed():
    assert np.array_equal(read_image(_testfile("MR_small_jpeg_ls_lossless.dcm")).numpy(),
                          read_image(_testfile("MR_small.dcm")).numpy())


def test_missing_decoder_names_the_package(monkeypatch):
    """Simulate an environment without pylibjpeg-libjpeg: the error says what to pip install."""
    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageReadError, match=r"JPEG-LL.dcm: DICOM pixel data cannot be decoded: it is compressed "
                                             r"as JPEG Lossless.*no decoder for it is installed; install one with "
                                             r"`pip install pylibjpeg pylibjpeg-libjpeg`"):
        read_image(_testfile("JPEG-LL.dcm"))


def _encapsulated_dicom(path: Path, tsyntax, frame: bytes, bits: int = 16) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 1024, 256, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_unsupported_transfer_syntax_says_so_and_how_to_convert(tmp_path):
    p = _encapsulated_dicom(tmp_path / "video.dcm", MPEG2MPML, b"\x00\x00\x01\xb3" + bytes(60))
    with pytest.raises(ImageReadError, match=r"video.dcm: .*MPEG2.*no decoder plug-in of pydicom supports; "
                                             r"convert it .*gdcmconv"):
        read_image(p)


def test_corrupt_jpeg_lossless_is_a_clear_error(tmp_path):
    ds = pydicom.dcmread(_testfile("JPEG-LL.dcm"))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    frame[2:40] = b"\xff" * 38  # the frame header is gone: no decoder can know the image's geometry
    p = _encapsulated_dicom(tmp_path / "bad.dcm", ds.file_meta.TransferSyntaxUID, bytes(frame))
    with pytest.raises(ImageReadError, match=r"bad.dcm: DICOM pixel data cannot be decoded, JPEG Lossless.*"
                                             r"decoders tried: .*pylibjpeg.*truncated or corrupt; re-export"):
        read_image(p)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPEGLSNearLossless_16.dcm", "JPEG2000.dcm"])
def test_codestream_cut_inside_a_whole_dicom_is_refused(tmp_path, name):
    """libjpeg would fill the missing rows of a cut JPEG Lossless stream without a word: refuse it instead."""
    ds = pydicom.dcmread(_testfile(name))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) * 2 // 3]])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(ImageReadError, match=r"cut.dcm: DICOM pixel data cannot be decoded: the .* frame does not "
                                             r"end with an end-of-image marker"):
        read_image(tmp_path / "cut.dcm")


def test_truncated_compressed_dicom_is_a_clear_error():
    data = _testfile("JPEG-LL.dcm").read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        with pytest.raises(ImageReadError, match=r"cut.dcm: a DICOM file with no pixel data, although .* truncated"):
            read_image_bytes(data[:cut], name="cut.dcm")


def test_sos_finder_only_touches_sequential_jpeg():
    def stream(sof: int, ss_se_a: bytes) -> bytes:
        sof_seg = bytes([0xFF, sof, 0, 11, 8, 0, 4, 0, 4, 1, 1, 0x11, 0])
        sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0]) + ss_se_a
        return b"\xff\xd8" + sof_seg + sos + b"\x12\x34\xff\xd9"

    baseline = stream(0xC0, b"\x00\x00\x00")
    at = find_sequential_sos_selection(baseline)
    assert baseline[at:at + 3] == b"\x00\x00\x00" and at == len(baseline) - 7
    assert find_sequential_sos_selection(stream(0xC1, b"\x00\x3f\x00")) is not None
    assert find_sequential_sos_selection(stream(0xC2, b"\x00\x00\x00")) is None  # progressive: Ss/Se matter
    assert find_sequential_sos_selection(stream(0xC3, b"\x01\x00\x00")) is None  # lossless: Ss is the predictor
    assert find_sequential_sos_selection(b"not a jpeg") is None
    assert find_sequential_sos_selection(baseline[:20]) is None  # cut before the scan header
