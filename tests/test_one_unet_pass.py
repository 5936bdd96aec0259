"""One anatomy U-Net pass per ``/v1/analyze`` answer, shared by the outlines (<= 1024 px) and the evidence zones
(<= 256 px): both read the network's probabilities at its own input size, resized to their working size.

Against the separate passes they replaced (the U-Net run on the <= 1024 px copy for the outlines and on the
<= 256 px copy for the zones), on real films with the shipped U-Net (128 px, the tiny run's input size too, so
the encoder's letterbox is reused): the outlines and the CTR are the same on films up to 1024 px; the zones
differ only where the resizing order does (film -> 256 px -> 128 px before, film -> 128 px now): Dice >= 0.95
per structure that covers >= 1 % of the image, <= 1 % of its pixels, and at most 5 % of the points of a grid
named differently (where a lung's thirds or the thorax's box moved by a working pixel).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import HELD_OUT

STRUCTURES = ("heart", "left_lung", "right_lung")


class CountingNet(torch.nn.Module):
    """The U-Net, counting its forward passes (``fail``: every pass raises instead)."""

    def __init__(self, net, fail: bool = False):
        super().__init__()
        self.net, self.config, self.fail, self.calls = net, net.config, fail, 0

    def forward(self, x):
        self.calls += 1
        if self.fail:
            raise RuntimeError("the U-Net broke on purpose")
        return self.net(x)


@pytest.fixture(scope="module")
def shipped_net():
    from cxrfm.models.anatomy_store import SHIPPED, load_unet

    return load_unet(SHIPPED)


@pytest.fixture(scope="module")
def films(shared_data, one_torch_thread):
    """Three real films: two of the anatomy set, one of the CXR set (320 px, not square)."""
    from cxrfm.data.images import read_image

    paths = sorted((shared_data / "anatomy" / "images").glob("*.png"))[:2] + \
        sorted((shared_data / "cxr" / "images").glob("ccx_*.png"))[:1]
    return [read_image(p) for p in paths]


def _copy(img: torch.Tensor, side: int) -> torch.Tensor:
    """The downscaled copy the separate passes ran the U-Net on."""
    from cxrfm.inference.anatomy import working_size

    _, h, w = img.shape
    if max(h, w) <= side:
        return img
    return F.interpolate(img[None], size=working_size(h, w, side), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not (a.any() or b.any()) else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _assert_close_masks(old: dict, new: dict, what: str) -> None:
    assert set(old) == set(new) == set(STRUCTURES)
    for s in STRUCTURES:
        assert old[s].shape == new[s].shape, f"{what} {s}: {old[s].shape} vs {new[s].shape}"
        assert (old[s] != new[s]).mean() <= 0.01, f"{what} {s}: {(old[s] != new[s]).mean():.3%} of pixels differ"
        if old[s].mean() >= 0.01:
            assert _dice(old[s], new[s]) >= 0.95, f"{what} {s}: Dice {_dice(old[s], new[s]):.3f}"


def test_outlines_zones_and_ctr_from_one_pass_equal_the_separate_passes(films, shipped_net):
    from cxrfm.data.images import letterbox
    from cxrfm.inference import anatomy_outlines as ao
    from cxrfm.inference.anatomy import Anatomy
    from cxrfm.inference.evidence_regions import MASK_SIDE, locate, working_masks

    net = CountingNet(shipped_net)
    anatomy = Anatomy(model=net)
    size = int(shipped_net.config.size)
    measured = 0
    for img in films:
        _, h, w = img.shape
        assert max(h, w) <= ao.ANATOMY_SIDE  # the outlines' working size is the film's own
        old_masks, old_ctr = anatomy.measure(_copy(img, ao.ANATOMY_SIDE), view="PA")  # the separate passes
        old_zones = {k: np.asarray(v, bool) for k, v in anatomy.structures(_copy(img, MASK_SIDE)).items()}
        net.calls = 0
        shared = anatomy.one_pass(img, letterbox(img, size))  # the letterbox the encoder saw
        entry = ao.measure(anatomy, img, "PA", shared)
        zones = working_masks(anatomy, img, shared)
        assert net.calls == 1, f"{net.calls} U-Net passes for one film's outlines and zones"
        # outlines and CTR: the same
        assert entry["working_size"] == {"height": h, "width": w}
        assert entry["ctr"] == old_ctr.to_dict()
        measured += entry["ctr"]["ratio"] is not None
        for s in STRUCTURES:
            assert entry["structures"][s]["outline"] == ao.outline(old_masks[s]), s
            assert entry["structures"][s]["area_fraction"] == round(float(old_masks[s].mean()), 4)
        # ... and what the served entry makes without a shared pass
        assert ao.measure(anatomy, img, "PA") == entry
        # zones: the same working size, masks equal up to the resizing order
        _assert_close_masks(old_zones, zones, "zones")
        grid = [{"x": x, "y": y} for y in range(3, h, 8) for x in range(3, w, 8)]
        differ = sum(locate(p, old_zones, h, w)["where"] != locate(p, zones, h, w)["where"] for p in grid)
        assert differ <= 0.05 * len(grid), f"{differ} of {len(grid)} grid points placed differently"
        assert working_masks(anatomy, img).keys() == zones.keys()
        assert all((working_masks(anatomy, img)[s] == zones[s]).all() for s in zones)
    assert measured >= 2, "the shipped U-Net measured no CTR on the real films"


def test_a_film_over_1024_px_is_measured_from_the_same_pass(films, shipped_net):
    """Over ANATOMY_SIDE the separate pass ran on a 1024 px copy; the shared one resizes the 128 px map to
    1024 px: masks within the resizing order, the CTR within a working pixel, outlines in the film's pixels."""
    from cxrfm.inference import anatomy_outlines as ao
    from cxrfm.inference.anatomy import Anatomy

    anatomy = Anatomy(model=shipped_net)
    img = F.interpolate(films[0][None], scale_factor=4, mode="bilinear", align_corners=False)[0]  # 1280 px
    _, h, w = img.shape
    old_masks, old_ctr = anatomy.measure(_copy(img, ao.ANATOMY_SIDE))
    shared = anatomy.one_pass(img)
    new = ao.measure(anatomy, img, None, shared)
    wh, ww = new["working_size"]["height"], new["working_size"]["width"]
    assert max(wh, ww) == ao.ANATOMY_SIDE and (wh, ww) == old_masks["heart"].shape
    _assert_close_masks(old_masks, shared.masks(wh, ww), "outlines")
    old = ao.scale_ctr(old_ctr.to_dict(), h / wh, w / ww)
    if old["ratio"] is None or new["ctr"]["ratio"] is None:
        pytest.fail(f"no CTR measured: {old['refused']} / {new['ctr']['refused']}")
    assert new["ctr"]["ratio"] == pytest.approx(old["ratio"], abs=0.01)
    for k in ("heart_width", "thorax_width"):
        assert new["ctr"][k] == pytest.approx(old[k], abs=2 * w / ww)
    pts = np.concatenate([np.asarray(p) for s in STRUCTURES for p in new["structures"][s]["outline"]])
    assert pts[:, 0].max() <= w and pts[:, 1].max() <= h and pts[:, 0].max() > w / 2


def test_the_pass_reuses_a_matching_letterbox_and_ignores_another(films, shipped_net):
    from cxrfm.data.images import letterbox
    from cxrfm.inference.anatomy import Anatomy

    anatomy = Anatomy(model=shipped_net)
    img = films[2]
    own = anatomy.one_pass(img).probability_map()
    given = anatomy.one_pass(img, letterbox(img, int(shipped_net.config.size))).probability_map()
    assert torch.equal(own, given)
    wrong = anatomy.one_pass(img, letterbox(img, 64)).probability_map()  # not the network's input size
    assert torch.equal(own, wrong)
    p = anatomy.probabilities(img)
    assert set(p) == set(STRUCTURES) and p["heart"].shape == img.shape[-2:]


def test_a_failing_unet_fails_once_and_both_users_say_so(films, shipped_net):
    from cxrfm.inference.anatomy import Anatomy
    from cxrfm.inference.anatomy_outlines import ServedAnatomy
    from cxrfm.inference.evidence import EvidenceBuilder

    net = CountingNet(shipped_net, fail=True)
    served = ServedAnatomy(Anatomy(model=net), "anatomy", "shipped")
    img = films[0]
    shared = served.one_pass(img)
    entry = served.entry(img, "PA", shared)
    assert entry["available"] is False and "broke on purpose" in entry["note"] and entry["ctr"] is None
    masks, note = EvidenceBuilder(None, type("H", (), {"findings": []})(), anatomy=served.anatomy).masks(img, shared)
    assert masks is None and "anatomy model failed" in note and "broke on purpose" in note
    assert net.calls == 1
    assert ServedAnatomy(None, "x", "shipped", "none here").one_pass(img) is None


def test_analyze_runs_the_anatomy_unet_once_per_answer(run_dir, shared_data, shipped_net, one_torch_thread):
    """A whole answer, every finding stated (so the trail places its peaks in zones): one U-Net pass, and the
    anatomy entry and the trail equal the ones made on their own."""
    from cxrfm.data.images import read_image_bytes
    from cxrfm.inference.analyze import AnalyzeSettings, Analyzer, Refused
    from cxrfm.inference.anatomy import Anatomy
    from cxrfm.inference.anatomy_outlines import ServedAnatomy

    analyzer = Analyzer(run_dir, settings=AnalyzeSettings(report_thresholds={"possible": 1e-9, "likely": 0.999}))
    net = CountingNet(shipped_net)
    analyzer.anatomy = ServedAnatomy(Anatomy(model=net), "anatomy_weights", "shipped")
    assert analyzer.model.image_size == shipped_net.config.size  # the encoder's letterbox is the U-Net's input
    for name in HELD_OUT:
        data = (shared_data / "cxr" / "images" / name).read_bytes()
        img = read_image_bytes(data, name=name)
        net.calls = 0
        try:
            out = analyzer.analyze(img, source=data, view="PA")
        except Refused:
            continue
        break
    else:
        pytest.fail("no held-out CXR passed the OOD gate")
    assert net.calls == 1, f"{net.calls} anatomy U-Net passes in one answer"
    placed = [e for e in out["evidence"] if e["region"] is not None and e["region"]["peak"] is not None]
    assert placed and all(e["region"]["note"] is None and e["region"]["where"] for e in placed)
    assert out["anatomy"]["available"] and out["anatomy"]["structures"]
    # the same as each made on its own (its own U-Net pass)
    assert analyzer.anatomy.entry(img, "PA") == out["anatomy"]
    prob = {f["finding"]: f["probability"] for f in out["findings"]}
    alone, _ = analyzer.evidence_builder().collect(img, analyzer.embed_image(img), prob, view="PA",
                                                   ctr=out["anatomy"]["ctr"], neighbours=out["neighbours"])
    assert alone == out["evidence"]
    assert net.calls == 3
