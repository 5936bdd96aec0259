"""An evidence trail per finding, and the rule that a finding without evidence is not stated as present.

For every finding the findings head answers (:mod:`.heads`), :class:`EvidenceBuilder` gathers:

* the calibrated probability, the head that answered it and the operating point that turned it into
  words: the report's wording bands (:data:`cxrfm.inference.report.DEFAULT_THRESHOLDS`, or the
  analysis settings' ones): ``>= likely`` is drafted as present, ``>= possible`` as uncertain, below
  as absent. The head has no per-finding operating point of its own; the bands assume calibrated
  probabilities, and ``calibrated`` says whether this finding's head is (Platt or probe);
* for a finding drafted present or uncertain: its Grad-CAM map (:mod:`.gradcam`) along the head's own
  direction (the probe weight for a ``linear-probe`` finding, the prompt margin otherwise, sign-flipped
  when the Platt slope is negative), the map's peak named by lung zone from the anatomy model's
  predicted lungs (:mod:`.evidence_regions`) and whether the peak lies where the finding is seen;
* the SAE concepts (:mod:`.concepts`) that fire on the image AND whose top images are enriched for the
  finding (or for a report word the labeler reads as the finding), with their names;
* for cardiac findings, the cardiothoracic ratio (enlarged supports, measured and not enlarged
  contradicts);
* the nearest training studies (an index, :mod:`.index`) whose report states the finding, with the
  sentences that state it.

**The rule**: a finding drafted present is stated as present only with support: a Grad-CAM peak where
the finding is seen, a concept, an enlarged CTR (cardiac) or at least ``MIN_NEIGHBOURS`` nearest
reports. Without any (or with a CTR that contradicts a cardiac finding) it is downgraded to uncertain
and ``downgraded`` says why. A peak that cannot be placed (no anatomy model) is no support.

Each entry ends with a reasoning ``trace``: evidence -> finding -> impression, in words.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.findings import CHEXPERT_14, PNEUMONIA_SUBTYPES
from .evidence_regions import REGION_OF, REGION_WORDS, heat_peak, heat_share, locate, region_supports, working_masks
from .report import DEFAULT_THRESHOLDS, PHRASES, SYSTEM_OF, grade

MIN_NEIGHBOURS = 2  # nearest training reports that must state a finding to support it (fewer when fewer exist)
CARDIAC = ("Cardiomegaly", "Enlarged Cardiomediastinum")
STATUS_OF_BAND = {"likely": "present", "possible": "uncertain", "no": "absent"}
# the labeler reads pneumonia sub-types as Pneumonia: a neighbour's sentence supports a sub-type only when
# it also names it
SUBTYPE_WORDS = {"COVID-19": re.compile(r"covid|sars-cov-2|coronavirus", re.I),
                 "Viral pneumonia": re.compile(r"vira[l]|virus|influenza|covid|sars-cov-2", re.I),
                 "Bacterial pneumonia": re.compile(r"bacteri|streptococc|staphylococc|pneumococc|klebsiella|"
                                                   r"legionella|mycoplasma|chlamydia|tubercul", re.I)}


def evidence_id(finding: str) -> str:
    """The stable id of a finding's evidence entry, e.g. ``ev-pleural-effusion`` (what sentences point to)."""
    return "ev-" + re.sub(r"[^a-z0-9]+", "-", finding.lower()).strip("-")


def _labeler_column(finding: str) -> str | None:
    """The CheXpert-14 column the labeler reads ``finding`` into (pneumonia sub-types: Pneumonia)."""
    if finding in PNEUMONIA_SUBTYPES:
        return "Pneumonia"
    return finding if finding in CHEXPERT_14 else None


def head_direction(head, j: int) -> torch.Tensor:
    """(D,) the direction in embedding space that raises finding ``j``'s answer under ``head``."""
    f = head.findings[j]
    if f in head.probe:
        return torch.as_tensor(np.asarray(head.probe[f][0]), dtype=torch.float32)
    d = head.classifier[j, 0] - head.classifier[j, 1]
    if f in head.calibration and head.calibration[f][0] < 0:  # Platt flipped the score's sense
        d = -d
    return d


class EvidenceBuilder:
    """Collects the evidence trail of one image (used by ``Analyzer.analyze`` and by evaluation).

    ``anatomy``: a :class:`cxrfm.inference.anatomy.Anatomy` or None (``anatomy_note`` says why);
    ``concepts``: :class:`cxrfm.inference.concepts.Concepts` or None; ``thresholds``: the wording bands.
    """

    def __init__(self, model, head, anatomy=None, concepts=None, thresholds: Mapping[str, float] | None = None,
                 anatomy_note: str | None = None, min_neighbours: int = MIN_NEIGHBOURS):
        self.model, self.head = model, head
        self.findings = list(head.findings)
        self.anatomy, self.anatomy_note = anatomy, anatomy_note
        self.concepts = concepts
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.min_neighbours = int(min_neighbours)

    # ---------------------------------------------------------------- pieces
    def heatmaps(self, img: torch.Tensor, findings: Sequence[str],
                 letterboxed: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Grad-CAM (h, w) in [0, 1] per finding, cropped to the image's part of the letterbox.
        ``letterboxed``: ``letterbox(img, model.image_size)`` as (1, 1, S, S), when the caller has it."""
        from ..data.images import letterbox, letterbox_geometry
        from .gradcam import grad_cams

        s = int(self.model.image_size)
        x = letterboxed if letterboxed is not None and tuple(letterboxed.shape) == (1, 1, s, s) \
            else letterbox(img, s).unsqueeze(0)
        nh, nw, top, left = letterbox_geometry(img.shape[1], img.shape[2], s)
        findings = list(findings)
        maps = grad_cams(self.model, x, [head_direction(self.head, self.findings.index(f)) for f in findings])
        return {f: m[top:top + nh, left:left + nw] for f, m in zip(findings, maps)}

    def masks(self, img: torch.Tensor, shared=None) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(the working masks or None, why not); ``shared``: the anatomy's U-Net pass over ``img``, when the
        caller has one (``Anatomy.one_pass``: the served outlines of the same answer use it too)."""
        if self.anatomy is None:
            return None, self.anatomy_note or "no anatomy model is loaded"
        try:
            return working_masks(self.anatomy, img, shared), None
        except Exception as e:  # noqa: BLE001 - anatomy never takes the analysis down
            return None, f"the anatomy model failed on this image ({type(e).__name__}: {str(e)[:160]})"

    def concept_links(self, emb: np.ndarray) -> list[dict]:
        """Fired concepts with the findings they are linked to: [{feature, name, activation, links}]."""
        if self.concepts is None:
            return []
        from ..data.labeler import label_reports

        codes = self.concepts.encode(np.asarray(emb, np.float32).reshape(1, -1))[0]
        fired = [int(k) for k in np.argsort(-codes, kind="stable") if codes[k] > 0]
        out = []
        for k in fired:
            info = self.concepts.names[k] if k < len(self.concepts.names) else {}
            links = {e["value"]: f"enriched finding (odds ratio {e.get('odds_ratio', float('nan')):.1f})"
                     for e in info.get("findings", []) if e.get("value") in self.findings}
            words = [e["value"] for e in info.get("words", []) if e.get("value")]
            if words:
                labels = label_reports(words)
                for w, row in zip(words, labels):
                    for j, f in enumerate(CHEXPERT_14):
                        if row[j] in (1.0, -1.0) and f != "No Finding" and f in self.findings:
                            links.setdefault(f, f"enriched report word '{w}'")
            out.append({"feature": k, "name": self.concepts.name(k), "activation": float(codes[k]), "links": links})
        return out

    @staticmethod
    def neighbour_sentences(neighbours: Sequence[Mapping]) -> list[dict]:
        """Per neighbour: its id, similarity and {CheXpert finding: [sentences stating it]}."""
        from ..data.labeler import label_reports
        from ..data.reports import report_body, split_sentences

        per = [split_sentences(report_body(n.get("report"))) if n.get("report") else [] for n in neighbours]
        flat = [s for ss in per for s in ss]
        labels = label_reports(flat) if flat else np.zeros((0, len(CHEXPERT_14)), np.float32)
        out, k = [], 0
        for n, ss in zip(neighbours, per):
            states: dict[str, list[str]] = {}
            for s, row in zip(ss, labels[k:k + len(ss)]):
                for j, f in enumerate(CHEXPERT_14):
                    if row[j] in (1.0, -1.0):
                        states.setdefault(f, []).append(s)
            k += len(ss)
            out.append({"id": n.get("id"), "similarity": n.get("similarity"), "states": states})
        return out

    @staticmethod
    def measure_ctr(masks: Mapping[str, np.ndarray], view: str | None) -> dict | None:
        """The CTR from the working masks, when no anatomy entry gave one (evaluation)."""
        from .anatomy import cardiothoracic_ratio

        if not all(k in masks for k in ("heart", "left_lung", "right_lung")):
            return None
        return cardiothoracic_ratio(masks["heart"], masks["left_lung"], masks["right_lung"], view).to_dict()

    def draft(self, img: torch.Tensor, emb, probs: Mapping[str, float], view: str | None = None,
              ctr: Mapping | None = None, neighbours: Sequence[Mapping] = ()) -> tuple[list[dict], dict]:
        """(evidence entries, the structured draft of :func:`cxrfm.inference.report.draft_report`) of one image:
        what ``eval --tasks report`` scores per evaluation image (``draft["text"]``)."""
        from .report import draft_report

        entries, _ = self.collect(img, emb, probs, view=view, ctr=ctr, neighbours=neighbours)
        return entries, draft_report(probs, self.thresholds, entries)

    # ---------------------------------------------------------------- the trail
    def collect(self, img: torch.Tensor, emb, probs: Mapping[str, float], view: str | None = None,
                ctr: Mapping | None = None, neighbours: Sequence[Mapping] = (), anatomy_pass=None,
                letterboxed: torch.Tensor | None = None) -> tuple[list[dict], dict]:
        """(evidence entries in the head's finding order, Grad-CAM maps per finding computed).

        ``img`` (1, H, W) in [0, 1]; ``emb`` its (D,) embedding; ``probs`` the head's answer; ``ctr`` the
        anatomy entry's CTR dict when measured; ``neighbours`` [{id, similarity, report}] nearest first.
        What the caller computed already, so that it is not computed twice: ``anatomy_pass`` the anatomy's
        U-Net pass over ``img`` (``Anatomy.one_pass``, shared with the anatomy entry), ``letterboxed``
        ``img`` letterboxed to the model's input (1, 1, S, S)."""
        emb = np.asarray(emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else emb, np.float32).reshape(-1)
        _, height, width = img.shape
        drafted = {f: STATUS_OF_BAND[grade(float(probs[f]), self.thresholds)] for f in self.findings if f in probs}
        stated = [f for f in self.findings if drafted.get(f) in ("present", "uncertain") and f != "No Finding"]
        maps = self.heatmaps(img, stated, letterboxed) if stated else {}
        masks, mask_note = self.masks(img, anatomy_pass) if stated else (None, None)
        concepts = self.concept_links(emb) if stated else []
        near = self.neighbour_sentences(neighbours) if stated and neighbours else []
        if ctr is None and masks is not None and set(stated) & set(CARDIAC):
            ctr = self.measure_ctr(masks, view)
        entries = []
        for f in self.findings:
            if f not in probs:
                continue
            e = self._entry(f, float(probs[f]), drafted[f])
            if f in stated:
                self._support(e, maps.get(f), masks, mask_note, concepts, near, ctr, height, width)
            entries.append(e)
        return entries, maps

    def _entry(self, f: str, p: float, drafted: str) -> dict:
        kind = self.head.kind_of(f)
        return {"id": evidence_id(f), "finding": f, "system": SYSTEM_OF.get(f, "other"), "probability": p,
                "head": kind,
                "operating_point": {"possible": self.thresholds["possible"], "likely": self.thresholds["likely"],
                                    "band": grade(p, self.thresholds), "calibrated": kind != "zero-shot"},
                "drafted": drafted, "status": drafted, "downgraded": None, "region": None, "concepts": [],
                "ctr": None, "neighbours": [], "support": {}, "supported": None, "trace": None}

    def _support(self, e: dict, heat, masks, mask_note, concepts, near, ctr, height, width) -> None:
        f = e["finding"]
        peak = heat_peak(heat, height, width)
        region = {"method": "grad-cam", "peak": peak, "expected": REGION_WORDS[REGION_OF.get(f, "thorax")],
                  "inside": [], "zone": None, "where": None, "supports": False, "note": None}
        if peak is None:
            region["note"] = "the Grad-CAM map is flat (no peak)"
        elif masks is None:
            region["note"] = f"the peak cannot be placed: {mask_note}"
        else:
            place = locate(peak, masks, height, width)
            region.update({k: place[k] for k in ("inside", "zone", "where")},
                          supports=region_supports(f, place), share=heat_share(heat, masks))
        e["region"] = region
        e["concepts"] = [{"feature": c["feature"], "name": c["name"], "activation": round(c["activation"], 4),
                          "link": c["links"][f]} for c in concepts if f in c["links"]][:3]
        col = _labeler_column(f)
        words = SUBTYPE_WORDS.get(f)
        e["neighbours"] = []
        for n in near:
            said = [x for x in n["states"].get(col, []) if words is None or words.search(x)]
            if said:
                e["neighbours"].append({"id": n["id"], "similarity": n["similarity"], "sentences": said[:2]})
        contradicts = False
        if f in CARDIAC and ctr is not None:
            r = ctr.get("ratio")
            e["ctr"] = {"ratio": r, "enlarged": ctr.get("enlarged"), "refused": ctr.get("refused"),
                        "view": ctr.get("view")}
            contradicts = r is not None and not ctr.get("enlarged")
        need = min(self.min_neighbours, len(near)) if near else None
        e["support"] = {"region": bool(region["supports"]), "concepts": bool(e["concepts"]),
                        "neighbours": bool(need) and len(e["neighbours"]) >= need,
                        "ctr": bool(e["ctr"] and e["ctr"]["enlarged"])}
        e["supported"] = any(e["support"].values())
        if e["drafted"] == "present" and (contradicts or not e["supported"]):
            e["status"] = "uncertain"
            e["downgraded"] = (f"the CTR {e['ctr']['ratio']:.2f} is at or below 0.5" if contradicts
                               else "no supporting evidence: " + self._missing(e, region, near))
        e["trace"] = trace(e)

    def _missing(self, e: dict, region: dict, near) -> str:
        parts = [region["note"] or f"the Grad-CAM peak is {region['where']}, while a supporting one lies in "
                                   f"{region['expected']}"]
        parts.append("no fired concept is linked to it" if self.concepts is not None else "no concepts for this run")
        parts.append(f"fewer than {min(self.min_neighbours, len(near))} of the {len(near)} nearest training reports "
                     "state it" if near else "no retrieval index")
        return "; ".join(parts)


# ---------------------------------------------------------------- the reasoning trace
def _evidence_words(e: dict) -> str:
    bits = []
    r = e.get("region") or {}
    if r.get("peak") is not None and r.get("where"):
        bits.append(f"Grad-CAM peak {r['where']}")
    for c in e.get("concepts", [])[:2]:
        bits.append(f"concept #{c['feature']} '{c['name']}'")
    if e.get("ctr") and e["ctr"].get("ratio") is not None:
        bits.append(f"CTR {e['ctr']['ratio']:.2f}")
    if e.get("neighbours"):
        n = len(e["neighbours"])
        bits.append(f"{n} nearest training report{'s state' if n > 1 else ' states'} it")
    return "; ".join(bits)


def trace(e: dict) -> str:
    """evidence -> finding -> impression, e.g. "Right lower zone (Grad-CAM peak in the right lower zone;
    concept #41 'airspace opacity') -> consolidation, probability 0.71 -> impression: consolidation is likely"."""
    noun = PHRASES.get(e["finding"], e["finding"].lower())
    ev = _evidence_words(e)
    r = e.get("region") or {}
    zone = r.get("zone") if r.get("supports") else None
    head = (f"{zone[0].upper()}{zone[1:]} ({ev})" if zone and ev else ev[0].upper() + ev[1:] if ev
            else "No supporting evidence")
    op = e["operating_point"]
    cut = op["likely"] if e["drafted"] == "present" else op["possible"]
    finding = f"{noun}, probability {e['probability']:.2f} (operating point {cut:.2f}, {e['head']})"
    if e["status"] == "present":
        impression = f"{noun} is likely"
    elif e["downgraded"]:
        impression = f"{noun} is possible, not stated as present ({e['downgraded']})"
    else:
        impression = f"{noun} is possible"
    return f"{head} -> {finding} -> impression: {impression}"


__all__ = ["EvidenceBuilder", "MIN_NEIGHBOURS", "evidence_id", "head_direction", "trace"]
