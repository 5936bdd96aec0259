"""Where in the image a finding's score comes from: Grad-CAM on the image tower's last feature map.

Grad-CAM (Selvaraju et al., ICCV 2017): weight each channel of the last convolutional feature map
by the spatial mean of the gradient of the target score, sum, ReLU, upsample. The target here is
the zero-shot logit margin of one finding, ``scale * <z, t_pos - t_neg>`` with ``z`` the normalised
image embedding and ``t_pos``/``t_neg`` the finding's prompt embeddings (CheXzero's positive vs
negative prompts), so the map shows what pushes the image towards the positive sentence.

Safe under concurrent requests: a hook only records tensors from the thread that registered it.
The feature map is found without knowing the tower's layout: the last 4-D ``(B, C, h, w)`` tensor
produced inside the image tower during the forward pass (a ConvNeXt stage output). A heat map is a
saliency aid, not a segmentation; on a tiny model it is coarse (the last map is ``S / 32`` wide).
"""
from __future__ import annotations

import base64
import io
import threading

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


def _image_module(model) -> torch.nn.Module:
    return getattr(model, "image", None) or getattr(model, "vision", None) or model


def grad_cam(model, image: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """Grad-CAM map (S, S) in [0, 1] of the score ``<encode_image(image), direction>``.

    ``image``: (1, 1, S, S) float in [0, 1] (already letterboxed to the model's size);
    ``direction``: (D,) a text-embedding direction, e.g. ``t_pos - t_neg`` of one finding.
    """
    if image.ndim != 4 or image.shape[:2] != (1, 1):
        raise ValueError(f"grad_cam expects one (1, 1, S, S) image, got {tuple(image.shape)}")
    maps: list[torch.Tensor] = []
    owner = threading.get_ident()  # hooks are global to the module: ignore other threads' forwards

    def keep_4d(_module, _inputs, output):
        if (threading.get_ident() == owner and isinstance(output, torch.Tensor) and output.ndim == 4
                and output.requires_grad):
            maps.append(output)

    handles = [m.register_forward_hook(keep_4d) for m in _image_module(model).modules()]
    try:
        with torch.enable_grad():
            x = image.detach().clone().requires_grad_(True)  # the input needs grad so the graph exists
            emb = model.encode_image(x, normalize=True)  # (1, D)
            if not maps:
                raise ConfigError("Grad-CAM found no 4-D feature map in the image tower; heat maps need a "
                                  "convolutional image tower (ConvNeXt/ResNet)")
            feat = maps[-1]  # (1, C, h, w) the last feature map
            score = (emb[0] * direction.to(emb.dtype)).sum()
            (grad,) = torch.autograd.grad(score, feat)
    finally:
        for h in handles:
            h.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * feat.detach()).sum(dim=1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]  # (S, S)
    hi = float(cam.max())
    return (cam / hi).numpy().astype(np.float32) if hi > 0 else np.zeros(image.shape[-2:], np.float32)


def finding_heatmap(model, image: torch.Tensor, classifier: torch.Tensor, finding_index: int) -> np.ndarray:
    """Grad-CAM (S, S) in [0, 1] of one finding's zero-shot margin; ``classifier`` is (F, 2, D)
    from :func:`cxrfm.inference.zero_shot.build_zero_shot_classifier` (index 0 positive, 1 negative)."""
    direction = classifier[finding_index, 0] - classifier[finding_index, 1]  # (D,)
    return grad_cam(model, image, direction)


def _colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 with matplotlib's perceptually uniform 'inferno'."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def heatmap_png_data_url(image: torch.Tensor | np.ndarray, heat: np.ndarray | None, alpha: float = 0.45) -> str:
    """A ``data:image/png;base64,...`` URL of ``image`` (1, H, W) or (H, W) in [0, 1] with ``heat``
    (resized to the image) blended on top; ``heat=None`` gives the plain grey image."""
    from PIL import Image

    img = image.squeeze().detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.squeeze(image)
    grey = np.clip(img, 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)
    if heat is not None:
        h = np.asarray(heat, dtype=np.float32)
        if h.shape != grey.shape:
            h = F.interpolate(torch.from_numpy(h)[None, None], size=grey.shape, mode="bilinear",
                              align_corners=False)[0, 0].numpy()
        a = (alpha * np.clip(h, 0, 1))[..., None]  # stronger where the map is hot
        rgb = ((1 - a) * rgb + a * _colormap(h)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
