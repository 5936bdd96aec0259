"""read_image / read_dicom / check_image / read_image_bytes / letterbox on real and synthetic files."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrfm.data import images
from cxrfm.data.images import (check_image, letterbox, letterbox_geometry, read_dicom, read_image,
                               read_image_bytes)
from cxrfm.errors import ImageReadError


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def real_pngs(shared_data):
    """Three real CXR PNGs from different sources, with their manifest size (width, height)."""
    import pandas as pd

    df = pd.read_csv(shared_data / "cxr" / "manifest.csv", dtype=str)
    picks = [df[df.source == s].iloc[0] for s in ("covid-chestxray-dataset", "kermany-pediatric-cxr",
                                                   "nih-chestxray14")]
    return [(shared_data / "cxr" / r.image, (int(r.width), int(r.height))) for r in picks]


@pytest.fixture(scope="module")
def rg1_path(shared_data):
    return shared_data / "dicom" / "RG1_J2KI.dcm"


def pil_gray(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def minmax(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def write_dicom(path, arr, photometric="MONOCHROME2", preamble=True, pixels=True, **elements):
    """A minimal uncompressed Secondary Capture DICOM holding ``arr`` ((H, W) or (frames, H, W)) uint16."""
    arr = np.asarray(arr, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in elements.items():
        setattr(ds, k, v)
    if pixels:
        ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    if not preamble:
        path.write_bytes(path.read_bytes()[132:])  # drop the 128-byte preamble and 'DICM'
    return path


def gradient(h=40, w=60) -> np.ndarray:
    """A 12-bit test pattern: a horizontal ramp 100..4000 plus a bright square."""
    a = np.tile(np.linspace(100, 4000, w), (h, 1))
    a[5:15, 5:15] = 4095
    return a.round().astype(np.uint16)


# ---------------------------------------------------------------- PNG / JPEG
def test_real_png_reads_exactly(real_pngs):
    for path, (w, h) in real_pngs:
        x = read_image(path)
        assert x.dtype == torch.float32 and tuple(x.shape) == (1, h, w)
        np.testing.assert_array_equal(x[0].numpy(), pil_gray(path))  # 8-bit: exactly value / 255
        assert check_image(path) == (w, h)
        assert torch.equal(read_image_bytes(path.read_bytes(), name=path.name), x)


def test_jpeg_is_detected_by_content_not_extension(real_pngs, tmp_path):
    path, (w, h) = real_pngs[0]
    with Image.open(path) as im:
        im.convert("L").save(tmp_path / "a.jpg", quality=95)
    (tmp_path / "mislabelled.png").write_bytes((tmp_path / "a.jpg").read_bytes())
    ref = read_image(path)
    for p in (tmp_path / "a.jpg", tmp_path / "mislabelled.png"):
        x = read_image(p)
        assert tuple(x.shape) == (1, h, w) and check_image(p) == (w, h)
        assert (x - ref).abs().mean() < 0.01  # JPEG q95 is close to the lossless PNG


def test_16bit_png_is_min_max_scaled(real_pngs, tmp_path):
    path, (w, h) = real_pngs[1]
    gray8 = (pil_gray(path) * 255).round().astype(np.uint16)
    twelve_bit = gray8 * 16 + 7  # a 12-bit detector range (7..4087) inside a 16-bit container
    Image.fromarray(twelve_bit.astype(np.uint16)).save(tmp_path / "a16.png")
    with Image.open(tmp_path / "a16.png") as im:
        assert im.mode.startswith("I;16")  # really written as 16-bit
    x = read_image(tmp_path / "a16.png")
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_allclose(x[0].numpy(), minmax(gray8), atol=1e-6)


def test_rgb_and_rgba_become_luma_on_black(real_pngs, tmp_path):
    path, _ = real_pngs[2]
    gray = pil_gray(path)
    with Image.open(path) as im:
        im.convert("RGB").save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png")[0].numpy(), gray, atol=1e-6)
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)      # red, opaque -> 0.299
    rgba[0, 1] = (0, 255, 0, 255)      # green, opaque -> 0.587
    rgba[0, 2] = (255, 255, 255, 0)    # white, transparent -> black
    rgba[1, :] = (255, 255, 255, 128)  # white, half transparent -> 128/255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = read_image(tmp_path / "rgba.png")[0].numpy()
    np.testing.assert_allclose(x[0], [0.299, 0.587, 0.0], atol=1e-6)
    np.testing.assert_allclose(x[1], [128 / 255] * 3, atol=1e-6)


# ---------------------------------------------------------------- real DICOM
def test_real_cr_dicom_orientation_and_range(rg1_path):
    """RG1: CR chest PA, MONOCHROME1, JPEG 2000. After inversion bone is bright and lungs dark."""
    x = read_image(rg1_path)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 1955, 1841)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert check_image(rg1_path) == (1841, 1955)
    a = x[0].numpy()
    h, w = a.shape

    def region(r0, r1, c0, c1):
        return float(a[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean())

    lungs = min(region(.25, .55, .2, .35), region(.25, .55, .65, .8))
    mediastinum = region(.3, .7, .45, .55)
    below_diaphragm = min(region(.85, .95, .2, .35), region(.85, .95, .65, .8))
    upper_lungs = max(region(.2, .4, .2, .35), region(.2, .4, .65, .8))
    # Measured: mediastinum 0.89 vs lungs 0.51-0.56; abdomen 0.86-0.92. Without the MONOCHROME1
    # inversion both comparisons flip; an upside-down read fails the second one.
    assert mediastinum > lungs + 0.2
    assert below_diaphragm > upper_lungs + 0.15
    assert torch.equal(read_dicom(rg1_path), x)
    assert torch.equal(read_image_bytes(rg1_path.read_bytes(), name="rg1"), x)


def test_lossy_j2k_matches_uncompressed_original(rg1_path):
    from pydicom.data import get_testdata_file

    # The same radiograph, uncompressed, from the pydicom-data wheel; never download it.
    unc = get_testdata_file("RG1_UNCR.dcm", download=False)
    if unc is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    a, b = read_image(rg1_path)[0].numpy(), read_image(unc)[0].numpy()
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.abs(a - b).mean() < 0.02


def test_pydicom_sample_files():
    from pydicom.data import get_testdata_file as find

    def get_testdata_file(name):
        path = find(name, download=False)
        if path is None:
            pytest.skip(f"{name} is not installed with pydicom or pydicom-data")
        return path

    # bundled with pydicom itself (pydicom/data/test_files)
    ct = read_image(get_testdata_file("CT_small.dcm"))  # signed CT with intercept -1024
    assert tuple(ct.shape) == (1, 128, 128) and float(ct.min()) == 0.0 and float(ct.max()) == 1.0
    with pytest.raises(ImageReadError, match=r"3-D volume.*2 frames"):
        read_image(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    pal = read_image(get_testdata_file("OT-PAL-8-face.dcm"))  # PALETTE COLOR -> luma (pydicom-data)
    assert tuple(pal.shape) == (1, 480, 640) and 0.2 < float(pal.mean()) < 0.8
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(get_testdata_file("rtplan.dcm"))
    with pytest.raises(ImageReadError, match="MR_truncated.dcm: DICOM pixel data cannot be decoded"):
        read_image(get_testdata_file("MR_truncated.dcm"))


# ---------------------------------------------------------------- synthetic DICOM: each transform
def test_dicom_monochrome2_and_monochrome1(tmp_path):
    a = gradient()
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", a, "MONOCHROME2"))[0].numpy()
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", a, "MONOCHROME1"))[0].numpy()
    np.testing.assert_allclose(m2, minmax(a), atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - minmax(a), atol=1e-6)
    assert m1[10, 10] == 0.0  # the brightest stored value is black in MONOCHROME1


def test_dicom_rescale_then_window(tmp_path):
    """Window Center/Width apply to rescaled values (HU = 2 * stored - 1000), not to stored values."""
    a = gradient()
    p = write_dicom(tmp_path / "ct.dcm", a, RescaleSlope=2, RescaleIntercept=-1000,
                    WindowCenter=3000, WindowWidth=2000)
    hu = 2.0 * a - 1000.0
    c, w = 3000.0, 2000.0  # DICOM PS3.3 C.11.2.1.2.1 linear window
    expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(p)[0].numpy(), expected, atol=1e-5)
    # Without VOI the full rescaled range is kept: min-max of a positive-slope rescale.
    np.testing.assert_allclose(read_dicom(p, apply_voi=False)[0].numpy(), minmax(a), atol=1e-6)
    # The same window applied to stored values would clip nothing below 2000: the result must differ.
    wrong = np.clip((a - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    assert np.abs(read_image(p)[0].numpy() - minmax(wrong)).max() > 0.3


def test_dicom_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 12])          # LUT Descriptor: 4 entries from stored 0, 12-bit
    item.add_new(0x00283006, "US", [0, 3000, 3000, 4095])  # LUT Data: a non-linear VOI LUT
    a = np.array([[0, 1, 2, 3]] * 2, dtype=np.uint16)
    p = write_dicom(tmp_path / "voi.dcm", a, VOILUTSequence=[item])
    np.testing.assert_allclose(read_image(p)[0].numpy()[0], [0, 3000 / 4095, 3000 / 4095, 1], atol=1e-6)
    np.testing.assert_allclose(read_dicom(p, apply_voi=False)[0].numpy()[0], [0, 1 / 3, 2 / 3, 1], atol=1e-6)


def test_dicom_pixel_padding_is_black_and_ignored(tmp_path):
    a = gradient()
    a[:, :10] = 0  # outside the collimated field
    x = read_image(write_dicom(tmp_path / "pad.dcm", a, "MONOCHROME1", PixelPaddingValue=0))[0].numpy()
    assert (x[:, :10] == 0).all()
    inside = a[:, 10:]
    np.testing.assert_allclose(x[:, 10:], 1 - minmax(inside), atol=1e-6)


def test_dicom_without_preamble_is_read_by_content(tmp_path):
    a = gradient()
    ref = read_image(write_dicom(tmp_path / "with.dcm", a))
    bare = write_dicom(tmp_path / "bare.img", a, preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert torch.equal(read_image(bare), ref)
    assert torch.equal(read_image_bytes(bare.read_bytes()), ref)
    assert check_image(bare) == (60, 40)


def test_dicom_refusals(tmp_path):
    vol = write_dicom(tmp_path / "vol.dcm", np.stack([gradient()] * 3))
    for fn in (read_image, check_image):
        with pytest.raises(ImageReadError, match=r"vol.dcm: a 3-D volume / multi-frame DICOM \(3 frames"):
            fn(vol)
    nopix = write_dicom(tmp_path / "nopix.dcm", gradient(), pixels=False)
    for fn in (read_image, check_image):
        with pytest.raises(ImageReadError, match="nopix.dcm: a DICOM file with no pixel data"):
            fn(nopix)


# ---------------------------------------------------------------- bad inputs
def test_missing_file(tmp_path):
    for fn in (read_image, check_image):
        with pytest.raises(ImageReadError, match=r"scans/12.dcm: no such file; check the path"):
            fn(tmp_path / "scans" / "12.dcm")


def test_empty_file_and_folder(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    for fn in (read_image, check_image):
        with pytest.raises(ImageReadError, match="empty.png: the file is empty"):
            fn(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="the file is empty"):
        read_image_bytes(b"")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_text_with_image_extensions(tmp_path):
    cases = {"notes.png": "not a PNG file", "scan.dcm": r"not a DICOM file \(no DICM preamble",
             "photo.jpg": "not a JPEG file", "data.bin": "not a PNG, JPEG or DICOM file"}
    for name, why in cases.items():
        p = tmp_path / name
        p.write_text("patient 12, chest PA, no acute findings\n" * 20)
        for fn in (read_image, check_image):
            with pytest.raises(ImageReadError, match=f"{name}: {why}.*expected PNG, JPEG or DICOM") as e:
                fn(p)
            assert "starts with text 'patient 12, ches'" in str(e.value)
    with pytest.raises(ImageReadError, match="<upload>: not a PNG, JPEG or DICOM"):
        read_image_bytes(b"GIF89a...")
    with pytest.raises(ImageReadError, match=r"12.dcm: not a DICOM file \(it is a PNG file"):
        p = tmp_path / "12.dcm"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
        read_dicom(p)


def test_truncated_images(real_pngs, tmp_path):
    path, _ = real_pngs[0]
    data = path.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: the image data is truncated or corrupt"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="upload.png: the image data is truncated"):
        read_image_bytes(data[: len(data) // 2], name="upload.png")
    buf = io.BytesIO()
    Image.open(path).convert("L").save(buf, format="JPEG")
    with pytest.raises(ImageReadError, match="truncated"):
        read_image_bytes(buf.getvalue()[:300])


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = 10_000  # 100 Mpx > MAX_PIXELS (89 Mpx); a 1-bit PNG of zeros is only ~12 KB on disk
    Image.new("1", (side, side)).save(tmp_path / "bomb.png", optimize=True)
    data = (tmp_path / "bomb.png").read_bytes()
    assert len(data) < 100_000
    with pytest.raises(ImageReadError, match=r"bomb.png: .*89,478,485-pixel safety limit"):
        read_image_bytes(data, name="bomb.png")
    with pytest.raises(ImageReadError, match="safety limit"):
        check_image(tmp_path / "bomb.png")


def test_dicom_malformed_header_values(tmp_path):
    a = gradient()
    # An invalid window (width 0) is skipped as viewers do: the full range, as with apply_voi=False.
    p = write_dicom(tmp_path / "w0.dcm", a, WindowCenter=2000, WindowWidth=0)
    assert torch.equal(read_image(p), read_dicom(p, apply_voi=False))
    with pytest.raises(ImageReadError, match=r"mlut.dcm: the DICOM Modality LUT .* malformed"):
        read_image(write_dicom(tmp_path / "mlut.dcm", a, ModalityLUTSequence=[Dataset()]))
    with pytest.raises(ImageReadError, match=r"huge.dcm: Rescale Slope 1e\+?308 .* non-finite"):
        read_image(write_dicom(tmp_path / "huge.dcm", a, RescaleSlope="1e308", RescaleIntercept="0"))
    with pytest.raises(ImageReadError, match=r"rows.dcm: pixel array has shape \(2, 20, 60\), not the 20x60"):
        read_image(write_dicom(tmp_path / "rows.dcm", a, Rows=20))
    # NumberOfFrames with a letter in it (pydicom's own badVR.dcm has '1A'): patched into the bytes, as
    # pydicom refuses to write it.
    bad = write_dicom(tmp_path / "frames.dcm", a, NumberOfFrames=1)
    element = b"\x28\x00\x08\x00IS\x02\x001 "
    assert bad.read_bytes().count(element) == 1
    bad.write_bytes(bad.read_bytes().replace(element, element[:-1] + b"A"))
    for fn in (read_image, check_image):
        with pytest.raises(ImageReadError, match=r"frames.dcm: DICOM NumberOfFrames is '1A', not a whole number"):
            fn(bad)


def test_dicom_over_pixel_limit(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "big.dcm", gradient())
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="big.dcm: 60x40 pixels is above the 1,000-pixel safety limit"):
        read_image(p)


# ---------------------------------------------------------------- letterbox
@pytest.mark.parametrize("h,w", [(50, 100), (100, 50), (64, 64), (7, 20), (300, 299)])
def test_letterbox_keeps_aspect_and_centres(h, w):
    size = 64
    out = letterbox(torch.ones(1, h, w), size)
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, size, size)
    new_h, new_w, top, left = letterbox_geometry(h, w, size)
    assert max(new_h, new_w) == size
    assert abs(new_h / new_w - h / w) < 2 / min(new_h, new_w)
    assert top == (size - new_h) // 2 and left == (size - new_w) // 2
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[top:top + new_h, left:left + new_w] = True
    assert torch.allclose(out[0][inside], torch.ones(1))  # a constant stays constant (no overshoot)
    assert (out[0][~inside] == 0).all()


def test_letterbox_real_image_matches_content(real_pngs):
    path, (w, h) = real_pngs[2]  # NIH: 320 x 320 would be square; pick any and compare means
    x = read_image(path)
    out = letterbox(x, 128)
    new_h, new_w, top, left = letterbox_geometry(h, w, 128)
    content = out[0, top:top + new_h, left:left + new_w]
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert abs(float(content.mean()) - float(x.mean())) < 0.01  # antialiased downsizing keeps the mean
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        letterbox(x[0], 128)
