"""The anatomy overlay: a chest film with its heart and lung outlines and the two CTR width lines.

:func:`draw_anatomy_overlay` is the one drawing used by ``cxrfm anatomy measure``, the evaluation's
anatomy section and the served page. It uses matplotlib's Agg canvas directly (no global backend
switch, no pyplot state), so it is safe in a server thread.
"""
from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import IO, Mapping

import numpy as np

# structure -> outline colour; other structures get the next colour of EXTRA_COLOURS
COLOURS = {"heart": "#ff3b30", "left_lung": "#00c8ff", "right_lung": "#ffd60a", "lungs": "#ff9f0a"}
EXTRA_COLOURS = ("#bf5af2", "#64d2ff", "#ff375f", "#a2845e", "#ffffff")
HEART_LINE, THORAX_LINE = "#ff3b30", "#30d158"


def _grey(image) -> np.ndarray:
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"draw_anatomy_overlay: expected a grey image (1, H, W) or (H, W), got {arr.shape}")
    return arr


def _title(ctr) -> str:
    if ctr is None:
        return ""
    if getattr(ctr, "refused", None):
        return f"CTR not measured: {ctr.refused}"
    if getattr(ctr, "ratio", None) is None:
        return ""
    flag = "  (> 0.5: enlarged on a PA film)" if ctr.enlarged else ""
    return f"CTR {ctr.ratio:.3f} = heart {ctr.heart_width} px / thorax {ctr.thorax_width} px{flag}"


def render_anatomy_overlay(image, masks: Mapping[str, np.ndarray], ctr=None, out: IO[bytes] | None = None,
                           dpi: int = 100, max_side: float = 6.0) -> bytes | None:
    """Draw the overlay as PNG into ``out`` (a binary file object), or return the PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img = _grey(image)
    h, w = img.shape
    scale = max_side / max(h, w)
    fig = Figure(figsize=(max(w * scale, 2.5), max(h * scale, 2.5) + 0.45), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, h * scale / (h * scale + 0.45)])
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    handles, extra = [], itertools.cycle(EXTRA_COLOURS)
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"draw_anatomy_overlay: the {name} mask is {m.shape[1]}x{m.shape[0]} (WxH), the image "
                             f"{w}x{h}; masks must have the image's size")
        colour = COLOURS.get(name) or next(extra)
        if m.any() and not m.all():
            ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.4)
            handles.append(Line2D([], [], color=colour, lw=1.4, label=name.replace("_", " ")))
    if ctr is not None and getattr(ctr, "ratio", None) is not None:
        for line, colour, label in ((ctr.thorax_line, THORAX_LINE, "thorax width"),
                                    (ctr.heart_line, HEART_LINE, "heart width")):
            if line is None:
                continue
            row, x0, x1 = line
            ax.plot([x0, x1], [row, row], color=colour, lw=2.0, ls="--")
            ax.plot([x0, x1], [row, row], ls="none", marker="|", ms=10, mew=2.0, color=colour)
            handles.append(Line2D([], [], color=colour, lw=2.0, ls="--", label=label))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    fig.text(0.5, 1 - 0.2 / (h * scale + 0.45), _title(ctr), ha="center", va="center", fontsize=8, wrap=True)
    buf = out if out is not None else io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return None if out is not None else buf.getvalue()


def draw_anatomy_overlay(image, masks: Mapping[str, np.ndarray], ctr, path: str | Path | IO[bytes]):
    """Write the overlay PNG: ``image`` (1, H, W) or (H, W) in [0, 1], ``masks`` ``{structure: bool (H, W)}``
    (heart red, left lung blue, right lung yellow, any other structure in another colour), ``ctr`` a
    :class:`cxrfm.inference.anatomy.CTR` or None (the width lines are drawn at the rows it measured; a
    refusal is written as the title). ``path``: a file path (written atomically; returned) or a binary
    file object (e.g. ``io.BytesIO`` for an HTTP answer)."""
    if hasattr(path, "write"):
        render_anatomy_overlay(image, masks, ctr, out=path)
        return path
    from ..atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = render_anatomy_overlay(image, masks, ctr)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


__all__ = ["COLOURS", "draw_anatomy_overlay", "render_anatomy_overlay"]
