"""`cxrfm segment` and `cxrfm anatomy train | measure` end to end, on tiny random-init anatomy folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm import cli
from cxrfm.inference.anatomy import CTR


@pytest.fixture(scope="module")
def anatomy_dir(tmp_path_factory, one_torch_thread):
    """A tiny anatomy folder (random-init U-Net and in-context segmenter at 32 px)."""
    from cxrfm.models.anatomy_nets import InContextConfig, InContextSegmenter, UNet, UNetConfig
    from cxrfm.models.anatomy_store import save_anatomy

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("anatomy")
    return save_anatomy(d, unet=UNet(UNetConfig(widths=(4, 8), size=32)),
                        incontext=InContextSegmenter(InContextConfig(widths=(4, 8, 8, 8), size=32)),
                        training={"test": {"note": "random init"}})


@pytest.fixture(autouse=True)
def _use_tiny(anatomy_dir, monkeypatch):
    monkeypatch.setenv("CXRFM_ANATOMY", str(anatomy_dir))


def _film(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 120 + 60 * np.sin(xx / max(w, 1) * 6) + rng.integers(0, 40, (h, w))
    return img.clip(0, 255).astype(np.uint8)


def _blob(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
    return m


def support_folder(root, sizes=((40, 48), (64, 64)), fmt="png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(_film(h, w, i)).save(root / "images" / f"s{i}.{fmt}")
        Image.fromarray(_blob(h, w)).save(root / "masks" / f"s{i}.png")
    return root


def test_segment_folder_of_queries_contract(tmp_path, capsys):
    sup = support_folder(tmp_path / "sup", fmt="jpg")  # .jpg images with .png masks pair by stem
    q = tmp_path / "queries"
    q.mkdir()
    sizes = {"a": (50, 70), "b": (33, 20), "c": (64, 64)}  # other sizes than the supports: letterboxed
    for name, (h, w) in sizes.items():
        Image.fromarray(_film(h, w, 7)).save(q / f"{name}.{'jpg' if name == 'b' else 'png'}")
    (q / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    rc = cli.main(["segment", "--support", str(sup), "--query", str(q), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for name, (h, w) in sizes.items():
        arr = np.asarray(Image.open(out / f"{name}.png"))
        assert arr.shape == (h, w) and arr.dtype == np.uint8
        assert set(np.unique(arr).tolist()) <= {0, 255}
    line = capsys.readouterr().out
    assert "k=2" in line and "3 of 3" in line and str(out) in line


def test_segment_single_file_query_matches_the_library(tmp_path, anatomy_dir):
    from cxrfm.data.anatomy import read_mask
    from cxrfm.data.images import read_image
    from cxrfm.inference.anatomy import segment

    sup = support_folder(tmp_path / "sup")
    query = tmp_path / "film.png"
    Image.fromarray(_film(45, 61, 3)).save(query)
    out = tmp_path / "out"
    assert cli.main(["segment", "--support", str(sup), "--query", str(query), "--out", str(out),
                     "--threshold", "0.3", "--no-progress"]) == 0
    assert [p.name for p in out.iterdir()] == ["film.png"]
    got = read_mask(out / "film.png", expect_hw=(45, 61))
    imgs = [read_image(sup / "images" / f"s{i}.png") for i in range(2)]
    masks = [read_mask(sup / "masks" / f"s{i}.png") for i in range(2)]
    want = segment(read_image(query), imgs, masks, model_dir=anatomy_dir, threshold=0.3)
    assert np.array_equal(got, want)


def test_segment_help_explains_the_layout(capsys):
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    text = capsys.readouterr().out
    assert "images/NAME.png" in text and "masks/NAME.png" in text and "query's size" in text


def _fake_measure_masks(h=100, w=120):
    heart, ll, rl = (np.zeros((h, w), bool) for _ in range(3))
    rl[20:80, 10:50] = True  # image left = patient's right
    ll[20:80, 70:110] = True
    heart[50:85, 40:88] = True
    return {"left_lung": ll, "right_lung": rl, "heart": heart}


def test_measure_prints_ctr_and_writes_the_overlay(tmp_path, monkeypatch, capsys):
    from cxrfm.inference import anatomy as inf

    monkeypatch.setattr(inf.Anatomy, "structures", lambda self, image: _fake_measure_masks())
    film = tmp_path / "film.png"
    Image.fromarray(_film(100, 120, 1)).save(film)
    over = tmp_path / "o" / "film_ctr.png"
    assert cli.main(["anatomy", "measure", str(film), "--view", "PA", "--overlay", str(over)]) == 0
    text = capsys.readouterr().out
    # heart 40..87 -> 48 px; thorax 10..109 -> 100 px
    assert "CTR 0.480" in text and "heart 48 px / thorax 100 px" in text and "not above 0.5" in text
    assert Image.open(over).format == "PNG" and over.stat().st_size > 1000
    assert cli.main(["anatomy", "measure", str(film), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["ratio"] == pytest.approx(0.48) and rec["heart_line"] == [67, 40, 87] and rec["refused"] is None


def test_measure_refuses_a_lateral_film(tmp_path, capsys):
    film = tmp_path / "lat.png"
    Image.fromarray(_film(64, 64, 2)).save(film)
    over = tmp_path / "lat_overlay.png"
    assert cli.main(["anatomy", "measure", str(film), "--view", "L", "--overlay", str(over)]) == 0
    text = capsys.readouterr().out
    assert "CTR not measured" in text and "lateral" in text and "frontal" in text
    assert over.is_file()


def test_measure_with_the_random_model_runs(tmp_path, capsys):
    """The real U-Net path (random weights: a ratio or a refusal, never a crash)."""
    film = tmp_path / "film.png"
    Image.fromarray(_film(70, 90, 4)).save(film)
    assert cli.main(["anatomy", "measure", str(film), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["ratio"] is None) == (rec["refused"] is not None)


def test_overlay_draws_lines_where_the_ctr_says(tmp_path):
    from cxrfm.inference.anatomy import cardiothoracic_ratio
    from cxrfm.inference.anatomy_overlay import draw_anatomy_overlay, render_anatomy_overlay

    masks = _fake_measure_masks()
    ctr = cardiothoracic_ratio(masks["heart"], masks["left_lung"], masks["right_lung"], "PA")
    img = np.full((100, 120), 0.5, np.float32)
    with_lines = render_anatomy_overlay(img, masks, ctr)
    without = render_anatomy_overlay(img, masks, CTR(None, refused="test"))
    assert with_lines[:8] == b"\x89PNG\r\n\x1a\n" and with_lines != without
    p = draw_anatomy_overlay(torch.from_numpy(img)[None], masks, ctr, tmp_path / "x.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="image's size"):
        render_anatomy_overlay(img, {"heart": np.zeros((10, 10), bool)}, None)


# ---------------------------------------------------------------- anatomy train on real data
@pytest.fixture(scope="module")
def six_rows(shared_data, tmp_path_factory):
    from cxrfm.data.schema import Manifest

    src = shared_data / "anatomy" / "manifest.csv"
    if not src.is_file():
        pytest.skip(f"{src}: the anatomy data set is not there")
    path = tmp_path_factory.mktemp("six") / "manifest.csv"
    Manifest.load(src).subset(range(6)).save(path)  # another folder: every mask_* path is re-based
    return path


def test_train_supervised_writes_a_loadable_folder_with_its_record(six_rows, tmp_path, capsys, monkeypatch):
    from cxrfm.data.anatomy import anatomy_split
    from cxrfm.data.schema import Manifest
    from cxrfm.models.anatomy_store import load_unet, read_meta

    out = tmp_path / "anat"
    assert cli.main(["anatomy", "train", "--data", str(six_rows), "--out", str(out), "--what", "supervised",
                     "--steps", "2", "--size", "32", "--no-progress"]) == 0
    assert "U-Net" in capsys.readouterr().out
    net = load_unet(out)
    assert set(net.config.structures) == {"heart", "left_lung", "right_lung"} and net.config.size == 32
    rec = read_meta(out)["training"]["unet"]
    m = Manifest.load(six_rows)
    train_rows = list(m.table["image"][anatomy_split(m) == "train"])
    assert rec["rows"] == train_rows and 0 < len(train_rows) < 6
    assert rec["split"] == "train" and rec["manifest"] == str(six_rows.resolve())
    assert rec["mask_columns"] == ["mask_heart", "mask_left_lung", "mask_right_lung"]
    assert rec["settings"]["steps"] == 2 and rec["settings"]["size"] == 32
    monkeypatch.setenv("CXRFM_ANATOMY", str(out))
    assert cli.main(["anatomy", "measure", str(m.image_paths()[0]), "--view", "PA", "--json"]) == 0


def test_train_incontext_never_reads_a_heart_mask(six_rows, shared_data, tmp_path):
    pytest.importorskip("cxrfm.train.anatomy_pretext", reason="the in-context pretraining module is not there yet")
    from cxrfm.data.schema import Manifest
    from cxrfm.models.anatomy_store import load_incontext, read_meta

    pretext = tmp_path / "pretext.csv"  # a 6-row anatomy manifest keeps too few train images: add 8 lung-mask rows
    Manifest.load(shared_data / "cxr" / "manifest.csv").subset(range(8)).save(pretext)
    out = tmp_path / "anat"
    assert cli.main(["anatomy", "train", "--data", str(six_rows), "--out", str(out), "--what", "incontext",
                     "--pretext-data", str(pretext), str(six_rows), "--steps", "2", "--size", "32",
                     "--no-progress"]) == 0
    assert load_incontext(out).config.size == 32
    assert "mask_heart" not in json.dumps(read_meta(out)["training"]["incontext"])


def test_train_refuses_a_manifest_without_mask_columns(tmp_path, capsys):
    Image.fromarray(_film(40, 40, 0)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,patient_id,source\na.png,p1,test\n")
    assert cli.main(["anatomy", "train", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
                     "--what", "supervised", "--steps", "1"]) == 2
    assert "mask_<structure>" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_manifest_save_rebases_every_mask_column(tmp_path):
    import pandas as pd

    from cxrfm.data.schema import Manifest

    df = pd.DataFrame({"image": ["img/a.png", "img/b.png"], "patient_id": ["p1", "p2"], "source": ["t", "t"],
                       "mask": ["m/a.png", None], "mask_heart": ["heart/a.png", None],
                       "mask_left_lung": ["ll/a.png", "ll/b.png"], "view": ["PA", "PA"]})
    m = Manifest.from_table(df, tmp_path / "data")
    saved = Manifest.load(m.save(tmp_path / "elsewhere" / "deep" / "m.csv"))
    for col in ("image", "mask", "mask_heart", "mask_left_lung"):
        for before, after in zip(df[col], saved.table[col]):
            if pd.isna(before):
                assert pd.isna(after), col
            else:
                assert (saved.root / after).resolve() == (tmp_path / "data" / before).resolve(), col
    assert list(saved.table["view"]) == ["PA", "PA"]
