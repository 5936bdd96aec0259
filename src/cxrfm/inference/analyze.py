"""``analyze(image) -> dict``: everything cxrfm says about one image, for ``serve`` and the API.

:class:`Analyzer` loads a run once (``config.json`` + ``model.safetensors``, never a pickle) and then,
per image: decodes within bounds, asks the OOD gate (:mod:`.gate`) whether it is a chest radiograph at
all (refused with the gate's verdict if not), answers each finding with the run's findings head
(:mod:`.heads`: the head ``cxrfm eval`` fitted and saved, else the zero-shot one, and it says which),
drafts the structured report with the same function the ``report`` task scores (:mod:`.report`),
adds the nearest training studies from an index (:mod:`.index`), a Grad-CAM map of the top finding
(:mod:`.gradcam`) and the anatomy (:mod:`.anatomy_outlines`: heart and lung outlines and the
cardiothoracic ratio from the run's own anatomy folder, else the default one; absent with a note when
none loads). The evidence trail per finding (:mod:`.evidence`: Grad-CAM peak by lung zone, concepts,
CTR, nearest reports, a reasoning trace) decides what the structured draft may state as present, and
every sentence of the draft points to its entries. The HTTP layer (:mod:`cxrfm.serve.app`) only moves
bytes in and JSON out.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.findings import FINDINGS
from ..errors import ConfigError, CxrfmError, ImageReadError
from ..run import RunDir
from .report import draft_report

DISPLAY_SIDE = 512  # longest side of the image shown on the page (heat map overlaid at this size)


@dataclass(frozen=True)
class AnalyzeSettings:
    """Bounds and options of one analysis. Bounds protect a shared CPU box from one large or hostile upload."""

    max_upload_bytes: int = 20 * 1024 * 1024  # a 16-bit 3000 x 3000 DICOM is ~18 MB
    max_pixels: int = 40_000_000  # declared in the header, checked before decoding (CXRs are <= ~18 Mpx)
    neighbours: int = 5  # nearest training reports returned when an index is loaded
    heatmap: bool = True
    ood_reference: str | None = None  # manifest of in-distribution CXRs; None = the bundled sample
    ood_reference_size: int = 200
    ood_weights: dict | None = None  # None = cxrfm.inference.gate.DEFAULT_WEIGHTS
    ood_tpr: float = 0.95
    report_thresholds: dict = field(default_factory=dict)  # {"possible": .., "likely": ..}


class Refused(CxrfmError):
    """The upload is a readable image but not a chest radiograph; carries the gate's verdict."""

    def __init__(self, message: str, ood: dict):
        super().__init__(message)
        self.ood = ood


class UploadTooLarge(CxrfmError):
    """The upload exceeds the configured byte or pixel bound."""


class Analyzer:
    """Everything ``/v1/analyze`` does, callable without HTTP (the benchmark's baseline)."""

    def __init__(self, run_dir: str | Path, index_dir: str | Path | None = None,
                 settings: AnalyzeSettings | None = None, model=None, progress: bool = False):
        from ..models.dual import load_model
        from .gate import OODGate, default_reference_images, reference_images_from_manifest
        from .heads import load_findings_head
        from .zero_shot import load_prompts

        self.settings = settings or AnalyzeSettings()
        self.run_dir = Path(run_dir)
        t0 = time.perf_counter()
        self.model = (model if model is not None else load_model(self.run_dir)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # Grad-CAM differentiates w.r.t. activations only
        prompts = load_prompts()
        self.findings = [f for f in FINDINGS if f in prompts]
        # the head `cxrfm eval` fitted and saved in the run (calibrated / probe), else plain zero-shot
        self.head, self.head_note = load_findings_head(self.run_dir, self.model, self.findings, prompts)
        self.classifier = self.head.classifier  # (F, 2, D): Grad-CAM's direction per finding
        from .concepts import run_concepts

        self.concepts = run_concepts(self.run_dir)  # named SAE features, when `cxrfm concepts train` made them
        from .anatomy_outlines import load_served_anatomy

        self.anatomy = load_served_anatomy(self.run_dir)  # RUN/anatomy, else $CXRFM_ANATOMY / shipped; or a note
        self.index = None
        if index_dir is not None:
            from .index import load_index

            self.index = load_index(index_dir)
            if self.index.dim != self.model.embed_dim:
                raise ConfigError(f"{index_dir}: index dimension {self.index.dim} != model embedding dimension "
                                  f"{self.model.embed_dim}; rebuild it with `cxrfm index --model {run_dir}`")
        s = self.settings
        rng = np.random.default_rng(0)
        ref = (reference_images_from_manifest(s.ood_reference, s.ood_reference_size, rng) if s.ood_reference
               else default_reference_images(s.ood_reference_size, rng))
        kw = {"weights": dict(s.ood_weights)} if s.ood_weights else {}
        self.gate = OODGate(self.model, **kw).fit(ref, tpr=s.ood_tpr, progress=progress)
        self.n_reference = len(ref)
        self.startup_s = time.perf_counter() - t0

    # -- decoding
    def decode(self, data: bytes, name: str = "upload", settings: AnalyzeSettings | None = None) -> torch.Tensor:
        """Bytes -> (1, H, W) in [0, 1]; bounds first, then the safe decoder. Raises CxrfmError only."""
        from ..data.images import read_image_bytes

        limits = settings or self.settings
        if not data:
            raise ImageReadError(f"{name}: the upload is empty (0 bytes); choose a PNG, JPEG or DICOM file")
        if len(data) > limits.max_upload_bytes:
            raise UploadTooLarge(f"{name}: {len(data)} bytes is over the limit of {limits.max_upload_bytes}; "
                                 "downsample or compress the image")
        declared = declared_pixels(data)
        if declared is not None and declared > limits.max_pixels:
            raise UploadTooLarge(f"{name}: the image declares {declared} pixels, over the limit of "
                                 f"{limits.max_pixels}; downsample it (a chest film needs <= 4k x 4k)")
        try:
            img = read_image_bytes(data, name=name)
        except CxrfmError:
            raise
        except Exception as e:  # noqa: BLE001 - hostile bytes can break a decoder in any way
            raise ImageReadError(f"{name}: could not decode the image ({type(e).__name__}); "
                                 "upload a PNG, JPEG or DICOM chest radiograph") from e
        if img.ndim != 3 or img.shape[0] != 1 or img.shape[1] < 8 or img.shape[2] < 8:
            raise ImageReadError(f"{name}: image of shape {tuple(img.shape)} is too small to analyse; "
                                 "upload a chest radiograph of at least 8 x 8 pixels")
        if img.shape[1] * img.shape[2] > limits.max_pixels:
            raise UploadTooLarge(f"{name}: {img.shape[1]} x {img.shape[2]} pixels is over the limit of "
                                 f"{limits.max_pixels}; downsample it")
        return img

    # -- inference
    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        from ..data.images import letterbox

        return letterbox(img, self.model.image_size).unsqueeze(0)  # (1, 1, S, S)

    @torch.no_grad()
    def embed_image(self, img: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self._prepare(img), normalize=True)[0].float()  # (D,)

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        return self.model.encode_text([text], normalize=True)[0].float()  # (D,)

    def analyze_bytes(self, data: bytes, name: str = "upload", settings: AnalyzeSettings | None = None,
                      view: str | None = None) -> dict[str, Any]:
        """The full analysis of one upload. Raises ImageReadError / UploadTooLarge / Refused / ViewError."""
        from .anatomy_outlines import check_view

        view = check_view(view)  # a bad view is refused before any decoding
        return self.analyze(self.decode(data, name, settings), source=data, view=view)

    def analyze(self, img: torch.Tensor, source: bytes | str | Path | None = None,
                view: str | None = None) -> dict[str, Any]:
        """Everything about one (1, H, W) image; ``source`` (its bytes or path) lets the gate see its colour;
        ``view`` (PA, AP, LATERAL..., None when unknown) decides whether the CTR is measured."""
        from ..data.images import letterbox_geometry
        from .anatomy_outlines import check_view
        from .gradcam import finding_heatmap, heatmap_png_data_url

        t0 = time.perf_counter()
        view = check_view(view)
        x = self._prepare(img)  # (1, 1, S, S)
        with torch.no_grad():
            emb = self.model.encode_image(x, normalize=True).float()  # (1, D)
        v = self.gate.verdict(img, emb, source=source)
        ood = {"score": v["score"], "threshold": v["threshold"], "components": v["components"],
               "tpr": self.gate.tpr, "reason": v["reason"]}
        if not v["passed"]:  # no report: the refusal instead
            raise Refused(f"This image does not look like a chest radiograph ({v['reason']}), so it was not "
                          "analysed. Upload a frontal or lateral chest X-ray (PNG, JPEG or DICOM).", ood)
        probs = self.head.predict(emb)[0]  # (F,) the evaluated head's answer
        prob = {f: float(p) for f, p in zip(self.findings, probs)}
        ranked = [f for f in sorted(self.findings, key=lambda f: -prob[f]) if f != "No Finding"]
        top = ranked[0] if ranked else None
        out: dict[str, Any] = {
            "is_cxr": True, "ood": ood,
            "findings": [{"finding": f, "probability": prob[f], "head": self.head.kind_of(f)} for f in self.findings],
            "head": {**self.head.describe(), "note": self.head_note},
            "top_finding": top,
            "neighbours": self.neighbours(emb),
            "concepts": self.top_concepts(emb),
        }
        # one anatomy U-Net pass (lazy), on the letterbox the encoder saw when the sizes agree: the outlines and
        # the evidence zones are both read from it
        shared = self.anatomy.one_pass(img, x[0])
        out["anatomy"] = self.anatomy.entry(img, view, shared)  # outlines in these pixels, the CTR; or why absent
        # the evidence trail per finding, then the structured draft whose sentences point into it
        evidence, maps = self.evidence_builder().collect(img, emb[0], prob, view=view, ctr=out["anatomy"].get("ctr"),
                                                         neighbours=out["neighbours"], anatomy_pass=shared,
                                                         letterboxed=x)
        draft = draft_report(prob, self.settings.report_thresholds or None, evidence)
        out.update(evidence=evidence, report=draft["text"],
                   structured_report={k: draft[k] for k in ("sections", "impression", "statuses", "thresholds")})
        disp = _display_image(img)
        heat = maps.get(top) if top is not None else None  # the top finding's map, along the head's direction
        if self.settings.heatmap and top is not None and heat is None:
            s = self.model.image_size
            full = finding_heatmap(self.model, x, self.classifier, self.findings.index(top))  # (S, S)
            nh, nw, t, left = letterbox_geometry(img.shape[1], img.shape[2], s)
            heat = full[t:t + nh, left:left + nw]  # the image's part of the letterbox
        heat = heat if self.settings.heatmap else None
        out["image_png"] = heatmap_png_data_url(disp, None)
        out["heatmap"] = ({"finding": top, "method": "grad-cam", "overlay_png": heatmap_png_data_url(disp, heat)}
                          if heat is not None else None)
        out["image_size"] = {"height": int(img.shape[1]), "width": int(img.shape[2])}
        out["elapsed_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    def evidence_builder(self):
        """The evidence trail's builder over this analyzer's model, head, anatomy and concepts (as they are now)."""
        from .evidence import EvidenceBuilder

        return EvidenceBuilder(self.model, self.head, anatomy=self.anatomy.anatomy, concepts=self.concepts,
                               thresholds=self.settings.report_thresholds or None, anatomy_note=self.anatomy.note)

    def top_concepts(self, emb: torch.Tensor, k: int = 5) -> list[dict]:
        """The image's strongest named concepts (empty when the run has none)."""
        from .concepts import top_concepts

        return top_concepts(emb.numpy()[0], self.concepts, k=k) if self.concepts is not None else []

    def neighbours(self, emb: torch.Tensor) -> list[dict]:
        if self.index is None or len(self.index) == 0:
            return []
        sims, rows = self.index.search(emb.numpy().reshape(1, -1), self.settings.neighbours)
        return [{"id": self.index.ids[r], "similarity": float(s), "report": self.index.reports[r]}
                for s, r in zip(sims[0], rows[0]) if r >= 0]

    def describe(self) -> dict[str, Any]:
        """What /v1/model returns: config, data hash and curation summary of the run, gate and index."""
        run = RunDir(self.run_dir)
        cfg = _read_json(run.config) or {}
        cur = _read_json(run.curation)
        return {
            "run": self.run_dir.name,
            "config": cfg,
            "data_hash": _find_key(cfg, "data_hash") or _find_key(cur or {}, "data_hash"),
            "curation": _summarize(cur) if cur is not None else None,
            "findings": self.findings,
            "head": {**self.head.describe(), "note": self.head_note},
            "concepts": ({"n_features": len(self.concepts.names)} if self.concepts is not None else None),
            "anatomy": self.anatomy.describe(),
            "image_size": self.model.image_size,
            "embed_dim": self.model.embed_dim,
            "ood_gate": {"threshold": self.gate.threshold, "tpr": self.gate.tpr, "weights": self.gate.weights,
                         "k": self.gate.k, "n_reference": self.n_reference,
                         "reference": self.settings.ood_reference or "bundled sample",
                         "model_free": self.gate.model_free.provenance if self.gate.model_free is not None else None},
            "index": ({"n": len(self.index), **{k: v for k, v in self.index.meta.items() if not isinstance(v, (list, dict))}}
                      if self.index is not None else None),
            "version": __version__,
        }


def declared_pixels(data: bytes) -> int | None:
    """Pixels the header declares (width x height x frames), read without decoding; None if unknown."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
            return int(im.size[0]) * int(im.size[1]) * int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError:  # Pillow's own guard fired on the header: over any sane bound
        return 2**62
    except Exception:  # noqa: BLE001 - not a Pillow format; try DICOM
        pass
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip() or 1)
        return rows * cols * frames if rows and cols else None
    except Exception:  # noqa: BLE001 - the decoder will say what is wrong
        return None


def _display_image(img: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    _, h, w = img.shape
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return img


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _find_key(d: dict, key: str):
    if key in d:
        return d[key]
    for v in d.values():
        if isinstance(v, dict):
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _summarize(obj, depth: int = 0):
    """curation.json without its per-sample arrays (long lists become their length)."""
    if isinstance(obj, dict):
        return {k: _summarize(v, depth + 1) for k, v in obj.items()} if depth < 4 else "..."
    if isinstance(obj, list):
        return obj if len(obj) <= 20 and all(not isinstance(v, (list, dict)) for v in obj) else f"<{len(obj)} items>"
    return obj
