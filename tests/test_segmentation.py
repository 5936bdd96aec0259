"""Lung segmentation task: Dice / HD95 against hand-computed cases, the task on real masks, its skips."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cxrfm.data.schema import Manifest
from cxrfm.models import list_image_towers
from cxrfm.tasks import segmentation as seg
from cxrfm.tasks.suite import EvalContext, TaskSkipped
from tests.helpers import StandInModel, make_tiny_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StandInSpatial(StandInModel):
    """The zero-shot stand-in plus a fixed random two-layer conv feature map (strides 2 and 4)."""

    def __init__(self, image_size: int = 32, seed: int = 0):
        super().__init__(image_size=image_size, seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.c1 = torch.randn(8, 1, 3, 3, generator=g)
        self.c2 = torch.randn(16, 8, 3, 3, generator=g) / 5
        self.seed = seed

    def forward_features(self, x):
        a = torch.relu(torch.nn.functional.conv2d(x - 0.5, self.c1, stride=2, padding=1))  # (B, 8, S/2, S/2)
        b = torch.relu(torch.nn.functional.conv2d(a, self.c2, stride=2, padding=1))  # (B, 16, S/4, S/4)
        return [a, b]

    def randomized(self, seed):
        return StandInSpatial(self.image_size, seed + 100)


def masked_subset(path, n_per_source: int = 50) -> Manifest:
    m = Manifest.load(path)
    has = m.table["mask"].notna().to_numpy()
    src = m.table["source"].to_numpy()
    rows = np.concatenate([np.flatnonzero(has & (src == s))[:n_per_source] for s in sorted(set(src[has]))])
    return m.subset(np.sort(rows))


@pytest.fixture(scope="module")
def masked(cxr_manifest_path):
    return masked_subset(cxr_manifest_path)


def _ctx(model, manifest, cache_dir, out=None):
    ctx = EvalContext(model=model, manifest=manifest, n_boot=100, cache_dir=cache_dir)
    ctx.out_dir = out
    return ctx


# ---------------------------------------------------------------- metrics
def test_dice_hand_computed():
    p, t = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    p[0:4, 0:4] = True  # 16 px
    t[0:4, 2:6] = True  # 16 px, 8 shared
    assert seg.dice_score(p, t) == pytest.approx(0.5)
    assert seg.dice_score(p, p) == 1.0 and seg.dice_score(p, ~p) == 0.0
    assert seg.dice_score(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_hd95_hand_computed():
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[5, 5], b[5, 9] = True, True
    assert seg.hd95(a, b) == pytest.approx(4.0)
    # a 1-px line (its own surface) vs the same line plus two pixels 30 px away:
    # directed distances are 20 zeros and [30, 30]; numpy's 95th percentile of 22 values is 0.95 * 30
    line = np.zeros((40, 40), bool)
    line[0:20, 5] = True
    outliers = line.copy()
    outliers[0, 35] = outliers[19, 35] = True
    assert seg.hd95(outliers, line) == pytest.approx(28.5)
    assert seg.hd95(line, outliers) == pytest.approx(28.5)  # symmetric
    assert seg.hd95(line, line) == 0.0
    assert seg.hd95(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
    assert np.isnan(seg.hd95(line, np.zeros_like(line)))


def test_hd95_matches_brute_force_on_blobs():
    from scipy.ndimage import binary_erosion

    yy, xx = np.mgrid[:48, :48]
    p = (yy - 20) ** 2 + (xx - 22) ** 2 < 100
    t = ((yy - 25) ** 2 / 2 + (xx - 26) ** 2 < 90) | ((yy > 40) & (xx < 6))
    sp, st = np.argwhere(p ^ binary_erosion(p)), np.argwhere(t ^ binary_erosion(t))
    d = cdist(sp, st)
    want = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
    assert seg.hd95(p, t) == pytest.approx(want)


def test_bootstrap_mean_ci_brackets_the_mean():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.6, 0.9, 200)
    lo, hi = seg.bootstrap_mean_ci(v, np.arange(200) // 2, rng, n_boot=300)
    assert lo < v.mean() < hi and hi - lo < 0.05
    assert seg.bootstrap_mean_ci(np.full(10, 0.7), np.arange(10), rng, 50) == pytest.approx((0.7, 0.7))


# ---------------------------------------------------------------- the task
def test_segmentation_task_on_real_masks(masked, cache_dir, tmp_path):
    r = seg.run(_ctx(StandInSpatial(), masked, cache_dir, tmp_path), seg.DecoderSettings(epochs=8))
    assert r["n_train"] + r["n_eval"] == len(masked) and r["n"] == r["n_eval"] >= 20
    lo, hi = r["dice"]["ci"]
    assert lo <= r["dice"]["mean"] <= hi
    assert r["dice"]["mean"] > 0.6  # lungs are large and central; a light decoder finds them
    assert 0 <= r["baseline"]["dice"]["mean"] <= 1 and r["hd95"]["mean"] > 0
    assert 0.1 < r["prevalence"] < 0.6
    assert r["overlays"]["worst"]["dice"] <= r["overlays"]["median"]["dice"] <= r["overlays"]["best"]["dice"]
    for name, o in r["overlays"].items():
        assert (tmp_path / seg.OVERLAY_FILES[name]).stat().st_size > 1000 and o["image"] in masked.ids


def test_segmentation_skips_without_masks(cxr_manifest_path, cache_dir):
    m = Manifest.load(cxr_manifest_path)
    nih = m.subset(np.flatnonzero(m.table["source"].to_numpy() == "nih-chestxray14")[:40])
    with pytest.raises(TaskSkipped, match="no lung masks"):
        seg.run(_ctx(StandInSpatial(), nih, cache_dir))


def test_segmentation_skips_too_few_masks(masked, cache_dir):
    few = masked.subset(np.arange(6))
    with pytest.raises(TaskSkipped, match="needs >= 8"):
        seg.run(_ctx(StandInSpatial(), few, cache_dir))


def test_segmentation_refuses_a_mask_of_another_aspect(masked, cache_dir, tmp_path):
    from PIL import Image

    bad = tmp_path / "wide_mask.png"
    Image.fromarray(np.full((10, 60), 255, np.uint8)).save(bad)
    m = masked.subset(np.arange(30))
    m.table.loc[0, "mask"] = str(bad)  # absolute: the manifest root does not apply
    with pytest.raises(TaskSkipped, match="wide_mask.png.*aspect"):
        seg.run(_ctx(StandInSpatial(), m, cache_dir))


def test_segmentation_with_a_real_tiny_run(tmp_path_factory, cxr_manifest_path, masked, cache_dir, tmp_path):
    from cxrfm import load_model

    model = load_model(make_tiny_run(tmp_path_factory.mktemp("tiny"), cxr_manifest_path, cache_dir))
    maps = seg.encoder_feature_maps(model, torch.rand(2, 1, 32, 32))
    assert [m.shape[-1] for m in maps] == [8, 4, 2, 1]  # ConvNeXt stages at strides 4..32
    r = seg.run(_ctx(model, masked, cache_dir, tmp_path), seg.DecoderSettings(epochs=4))
    assert r["image_size"] == 32 and 0 < r["dice"]["mean"] <= 1 and r["baseline"]["dice"]["mean"] <= 1


@pytest.mark.parametrize("kind", list_image_towers())
def test_feature_maps_come_from_the_tower_contract(kind):
    """encoder_feature_maps is the tower's forward_features (after resizing), for every registered tower,
    and the random baseline encoder has the same architecture."""
    from cxrfm.config import ModelConfig
    from cxrfm.models import build_model
    from cxrfm.models.image import resize_to
    from cxrfm.models.tower import image_tower_entry

    model = build_model(ModelConfig(image_tower=kind, image_arch=image_tower_entry(kind).tiny_arch, image_size=32,
                                    embed_dim=8)).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        maps = seg.encoder_feature_maps(model, x)
        want = model.image.forward_features(resize_to(x, 32))
        base = seg.encoder_feature_maps(seg.random_encoder(model, seed=7), x)
    assert len(maps) == len(want) and all(torch.equal(m, w) for m, w in zip(maps, want))
    assert [b.shape for b in base] == [m.shape for m in maps]
    assert not torch.equal(base[-1], maps[-1])  # other weights
