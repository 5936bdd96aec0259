"""Grad-CAM through the tower contract: every registered tower gives a real map, threads do not mix."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cxrfm.config import ModelConfig
from cxrfm.errors import ConfigError
from cxrfm.inference.gradcam import finding_heatmap, grad_cam
from cxrfm.models import build_model, list_image_towers
from cxrfm.models.tower import image_tower_entry

pytestmark = pytest.mark.usefixtures("one_torch_thread")
S = 64


def frozen_model(kind: str):
    cfg = ModelConfig(image_tower=kind, image_arch=image_tower_entry(kind).tiny_arch, image_size=S, embed_dim=16)
    model = build_model(cfg, seed=0).eval()
    for p in model.parameters():  # as the Analyzer serves it: Grad-CAM differentiates activations only
        p.requires_grad_(False)
    return model


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, S, S, generator=torch.Generator().manual_seed(seed))


def direction(seed: int = 1) -> torch.Tensor:
    return torch.randn(16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list_image_towers())
def test_every_tower_gives_a_spatial_map_in_unit_range(kind):
    model = frozen_model(kind)
    heat = grad_cam(model, image(), direction())
    assert heat.shape == (S, S) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    # A spatial map, not one value spread over the image (the old hook search found ResNet's 1x1 pool).
    assert len(np.unique(heat.round(4))) > 16
    assert not np.allclose(heat, grad_cam(model, image(), -direction()))  # the sign of the finding matters
    assert not np.any(grad_cam(model, image(), torch.zeros(16)))  # no direction, no evidence


def test_concurrent_requests_give_the_sequential_maps():
    model = frozen_model("convnext")
    dirs = [direction(s) for s in range(8)]
    alone = [grad_cam(model, image(s), d) for s, d in enumerate(dirs)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda sd: grad_cam(model, image(sd[0]), sd[1]), enumerate(dirs)))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_finding_heatmap_uses_the_positive_minus_negative_prompt():
    model = frozen_model("convnext")
    classifier = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(4))  # (F, 2, D)
    want = grad_cam(model, image(), classifier[2, 0] - classifier[2, 1])
    np.testing.assert_array_equal(finding_heatmap(model, image(), classifier, 2), want)


def test_bad_inputs():
    model = frozen_model("convnext")
    with pytest.raises(ValueError, match=r"\(1, 1, S, S\)"):
        grad_cam(model, torch.rand(2, 1, S, S), direction())
    with pytest.raises(ConfigError, match="image_feature_maps"):
        grad_cam(object(), image(), direction())


@pytest.mark.parametrize("kind", list_image_towers())
def test_several_directions_from_one_pass_equal_one_pass_each(kind):
    """grad_cams (one forward, the deepest map's gradient first) gives the maps of a full backward per
    direction, for every tower (convolutional maps and token grids)."""
    import torch.nn.functional as F

    from cxrfm.inference.gradcam import grad_cams

    model, x = frozen_model(kind), image()
    dirs = [direction(s) for s in (1, 2, 3)]
    got = grad_cams(model, x, dirs)
    for d, g in zip(dirs, got):
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)
            feats = model.image_feature_maps(xx)
            emb = model.encode_feature_maps(feats, normalize=True)
            grads = feats.gradients((emb[0] * d).sum())  # every map, one backward for this direction
        k = next((i for i in reversed(range(len(grads))) if bool(grads[i].any())), len(grads) - 1)
        w = grads[k].mean(dim=(2, 3), keepdim=True)
        cam = F.interpolate(F.relu((w * feats[k].detach()).sum(1, keepdim=True)), size=x.shape[-2:],
                            mode="bilinear", align_corners=False)[0, 0]
        cam = cam / cam.max() if float(cam.max()) > 0 else cam
        np.testing.assert_allclose(g, cam.detach().numpy(), atol=1e-5)
