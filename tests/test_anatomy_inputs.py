"""Bad input to the anatomy path (issue 12 item 5): each gives a clear error naming the file and the fix,
through the library (check_supports, cardiothoracic_ratio, the model folder) and through `cxrfm segment`
/ `cxrfm anatomy measure`. Plus the CTR on synthetic masks of known widths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm import cli
from cxrfm.inference.anatomy import FewShotError, cardiothoracic_ratio, check_supports, segment
from cxrfm.models.anatomy_store import AnatomyModelError


@pytest.fixture(scope="module")
def anatomy_dir(tmp_path_factory, one_torch_thread):
    """A tiny anatomy folder (random-init U-Net and in-context segmenter at 32 px)."""
    from cxrfm.models.anatomy_nets import InContextConfig, InContextSegmenter, UNet, UNetConfig
    from cxrfm.models.anatomy_store import save_anatomy

    torch.manual_seed(0)
    return save_anatomy(tmp_path_factory.mktemp("anatomy"), unet=UNet(UNetConfig(widths=(4, 8), size=32)),
                        incontext=InContextSegmenter(InContextConfig(widths=(4, 8, 8, 8), size=32)))


@pytest.fixture(autouse=True)
def _use_tiny(anatomy_dir, monkeypatch):
    monkeypatch.setenv("CXRFM_ANATOMY", str(anatomy_dir))


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w)).astype(np.uint8)


def _mask(h, w, value=255):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = value
    return m


def _support(root, pairs):
    """pairs: {stem: (image array or None, mask array or None)}."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for stem, (img, mask) in pairs.items():
        if img is not None:
            Image.fromarray(img).save(root / "images" / f"{stem}.png")
        if mask is not None:
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def _segment(tmp_path, support, query=None):
    if query is None:
        query = tmp_path / "q.png"
        Image.fromarray(_img(40, 40, 9)).save(query)
    return cli.main(["segment", "--support", str(support), "--query", str(query), "--out", str(tmp_path / "out"),
                     "--no-progress"])


# ---------------------------------------------------------------- library: check_supports
def test_library_refuses_each_bad_support():
    img = torch.rand(1, 40, 30)
    good = _mask(40, 30) > 0
    with pytest.raises(FewShotError, match="k = 0"):
        check_supports([], [])
    with pytest.raises(FewShotError, match="mask must have its image's size"):
        check_supports([img], [_mask(30, 40) > 0])
    with pytest.raises(FewShotError, match="empty"):
        check_supports([img], [np.zeros((40, 30), bool)])
    with pytest.raises(FewShotError, match="not binary"):
        check_supports([img], [np.arange(1200).reshape(40, 30) % 7])
    with pytest.raises(FewShotError, match="1 support images but 2"):
        check_supports([img], [good, good])
    assert len(check_supports([img], [good])[1]) == 1


def test_library_supports_and_query_of_different_sizes(anatomy_dir):
    sup = [torch.rand(1, 40, 30), torch.rand(1, 64, 64)]
    masks = [_mask(40, 30) > 0, _mask(64, 64) > 0]
    out = segment(torch.rand(1, 23, 57), sup, masks, model_dir=anatomy_dir)
    assert out.shape == (23, 57) and out.dtype == bool


# ---------------------------------------------------------------- cxrfm segment: the support folder
@pytest.mark.parametrize("case, pairs, expect", [
    ("mask of another size", {"a": (_img(40, 40), _mask(40, 50))}, ["masks/a.png", "50x40", "its image is 40x40"]),
    ("empty mask", {"a": (_img(40, 40), np.zeros((40, 40), np.uint8))}, ["masks/a.png", "empty"]),
    ("non-binary mask", {"a": (_img(40, 40), _mask(40, 40) // 2 + 3)}, ["masks/a.png", "not binary", "0 for"]),
    ("image without mask", {"a": (_img(40, 40), _mask(40, 40)), "b": (_img(40, 40), None)},
     ["images/b.png: no mask", "masks/b.png"]),
    ("mask without image", {"a": (_img(40, 40), _mask(40, 40)), "c": (None, _mask(40, 40))},
     ["masks/c.png: no image"]),
    ("k = 0", {}, ["k = 0", "at least one"]),
])
def test_segment_refuses_bad_supports(tmp_path, capsys, case, pairs, expect):
    rc = _segment(tmp_path, _support(tmp_path / "sup", pairs))
    err = capsys.readouterr().err
    assert rc == 2, case
    for text in expect:
        assert text in err, (case, err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_segment_lists_every_bad_support_at_once(tmp_path, capsys):
    sup = _support(tmp_path / "sup", {"a": (_img(40, 40), np.zeros((40, 40), np.uint8)),
                                      "b": (_img(40, 40), _mask(40, 41)), "c": (_img(40, 40), _mask(40, 40))})
    assert _segment(tmp_path, sup) == 2
    err = capsys.readouterr().err
    assert "2 of the 3 support pair(s)" in err and "masks/a.png" in err and "masks/b.png" in err


def test_segment_names_a_missing_folder_and_a_jpeg_mask(tmp_path, capsys):
    (tmp_path / "sup" / "images").mkdir(parents=True)
    assert _segment(tmp_path, tmp_path / "sup") == 2
    assert "masks: missing" in capsys.readouterr().err
    sup = _support(tmp_path / "sup2", {"a": (_img(40, 40), None)})
    Image.fromarray(_mask(40, 40)).save(sup / "masks" / "a.jpg")
    assert _segment(tmp_path, sup) == 2
    err = capsys.readouterr().err
    assert "masks must be PNG" in err and "a.png" in err


def test_segment_skips_an_unreadable_query_and_keeps_the_others(tmp_path, capsys):
    sup = _support(tmp_path / "sup", {"a": (_img(40, 40), _mask(40, 40))})
    q = tmp_path / "queries"
    q.mkdir()
    Image.fromarray(_img(30, 50, 1)).save(q / "good1.png")
    (q / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    Image.fromarray(_img(20, 20, 2)).save(q / "good2.png")
    rc = _segment(tmp_path, sup, q)
    cap = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.png", "good2.png"]
    assert "skipped" in cap.err and "broken.png" in cap.err and "2 of 3" in cap.out


def test_segment_will_not_write_into_the_query_folder(tmp_path, capsys):
    sup = _support(tmp_path / "sup", {"a": (_img(40, 40), _mask(40, 40))})
    q = tmp_path / "q"
    q.mkdir()
    Image.fromarray(_img(30, 30)).save(q / "x.png")
    rc = cli.main(["segment", "--support", str(sup), "--query", str(q), "--out", str(q), "--no-progress"])
    assert rc == 2 and "would be overwritten" in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(q / "x.png")), _img(30, 30))


# ---------------------------------------------------------------- a damaged anatomy folder
def _copy(src, dst):
    import shutil

    return shutil.copytree(src, dst)


def test_damaged_safetensors_and_missing_meta_are_named(anatomy_dir, tmp_path, capsys, monkeypatch):
    from cxrfm.models.anatomy_store import load_incontext, load_unet

    bad = _copy(anatomy_dir, tmp_path / "damaged")
    (bad / "incontext.safetensors").write_bytes(b"\x00" * 40)
    data = (bad / "unet.safetensors").read_bytes()
    (bad / "unet.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AnatomyModelError, match="incontext.safetensors: cannot be loaded"):
        load_incontext(bad)
    with pytest.raises(AnatomyModelError, match="unet.safetensors: cannot be loaded"):
        load_unet(bad)
    sup = _support(tmp_path / "sup", {"a": (_img(40, 40), _mask(40, 40))})
    monkeypatch.setenv("CXRFM_ANATOMY", str(bad))
    assert _segment(tmp_path, sup) == 2
    err = capsys.readouterr().err
    assert "AnatomyModelError" in err and "incontext.safetensors" in err and "retrain" in err
    film = tmp_path / "film.png"
    Image.fromarray(_img(40, 40)).save(film)
    assert cli.main(["anatomy", "measure", str(film)]) == 2
    assert "unet.safetensors" in capsys.readouterr().err

    nometa = _copy(anatomy_dir, tmp_path / "nometa")
    (nometa / "anatomy.json").unlink()
    assert cli.main(["anatomy", "measure", str(film), "--model", str(nometa)]) == 2
    err = capsys.readouterr().err
    assert "not an anatomy model folder" in err and "cxrfm anatomy train" in err
    (nometa / "anatomy.json").write_text("{ not json")
    with pytest.raises(AnatomyModelError, match="anatomy.json: unreadable"):
        load_unet(nometa)


# ---------------------------------------------------------------- the CTR
def _lungs_and_heart(h=200, w=300, heart=(100, 179), rows=(40, 160)):
    rl, ll, hm = (np.zeros((h, w), bool) for _ in range(3))
    rl[rows[0]:rows[1], 50:130] = True   # image left: the patient's right lung
    ll[rows[0]:rows[1], 170:250] = True  # thorax 50..249 -> 200 px
    hm[110:170, heart[0]:heart[1] + 1] = True
    return hm, ll, rl


def test_ctr_of_known_widths_and_where_its_lines_are():
    hm, ll, rl = _lungs_and_heart(heart=(100, 179))  # heart 80 px / thorax 200 px
    ctr = cardiothoracic_ratio(hm, ll, rl, view="PA")
    assert ctr.ratio == pytest.approx(0.4) and (ctr.heart_width, ctr.thorax_width) == (80, 200)
    assert ctr.heart_line == (140, 100, 179) and ctr.thorax_line == (100, 50, 249)  # rows: the masks' mean rows
    assert ctr.enlarged is False and ctr.refused is None
    big = cardiothoracic_ratio(*_lungs_and_heart(heart=(80, 209)), view="PA")  # 130 / 200
    assert big.ratio == pytest.approx(0.65) and big.enlarged is True
    assert cardiothoracic_ratio(*_lungs_and_heart(heart=(100, 199))).enlarged is False  # exactly 0.5: not above


@pytest.mark.parametrize("view", ["L", "LL", "lateral", "RL"])
def test_ctr_refused_on_a_lateral_film(view):
    ctr = cardiothoracic_ratio(*_lungs_and_heart(), view=view)
    assert ctr.ratio is None and "lateral" in ctr.refused and "frontal" in ctr.refused


def test_ctr_refused_without_lungs_or_heart():
    hm, ll, rl = _lungs_and_heart()
    none = np.zeros_like(ll)
    for masks in ((hm, none, rl), (hm, ll, none), (hm, none, none)):
        ctr = cardiothoracic_ratio(*masks, view="PA")
        assert ctr.ratio is None and "lungs were not found" in ctr.refused
    ctr = cardiothoracic_ratio(none, ll, rl, view="PA")
    assert ctr.ratio is None and "cardiac silhouette" in ctr.refused
