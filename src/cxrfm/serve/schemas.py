"""OpenAPI (3.1 JSON Schema) of what ``POST /v1/analyze`` answers, so clients can read it from ``/openapi.json``.

The routes build their answers as plain dicts (:meth:`cxrfm.inference.analyze.Analyzer.analyze`); these
schemas describe them. Keys not listed here may be added later (``additionalProperties`` is left open).
"""
from __future__ import annotations

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_INT = {"type": ["integer", "null"]}
_OPT_STR = {"type": ["string", "null"]}
_SIZE = {"type": "object", "required": ["height", "width"], "properties": {"height": _INT, "width": _INT}}

_POINT = {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2, "description": "[x, y]"}
_POLYGON = {"type": "array", "items": _POINT, "description": "a closed ring, its last point joined to its first"}
_LINE = {"anyOf": [{"type": "array", "items": _INT, "minItems": 3, "maxItems": 3}, {"type": "null"}],
         "description": "(row, x0, x1): the width's row and first and last columns, pixel indices of the "
                        "original image (inclusive; the drawn line spans x0 to x1 + 1 at row + 0.5)"}

CTR_SCHEMA = {
    "type": "object",
    "description": "Cardiothoracic ratio: the heart's width over the thorax's (both lungs), horizontal extents of "
                   "the predicted masks. `ratio` is null when refused (lateral view, lungs not found, no heart).",
    "required": ["ratio", "refused"],
    "properties": {
        "ratio": _OPT_NUM, "heart_width": _OPT_INT, "thorax_width": _OPT_INT,
        "heart_line": _LINE, "thorax_line": _LINE,
        "enlarged": {"type": ["boolean", "null"], "description": "ratio > 0.5 (meaningful on PA films)"},
        "view": _OPT_STR, "refused": {**_OPT_STR, "description": "why no ratio was measured"},
    },
}

ANATOMY_SCHEMA = {
    "type": "object",
    "description": "Heart and lung outlines and the CTR from the supervised anatomy model (the run's own "
                   "RUN/anatomy folder, else $CXRFM_ANATOMY or the shipped one). `available` is false, with a "
                   "`note`, when no anatomy model loads; the rest of the analysis is unaffected.",
    "required": ["available", "note", "structures", "ctr", "summary"],
    "properties": {
        "available": {"type": "boolean"},
        "note": _OPT_STR,
        "model": {"type": ["object", "null"], "description": "the anatomy model folder it came from",
                  "properties": {"available": {"type": "boolean"}, "folder": _OPT_STR,
                                 "origin": {"anyOf": [{"enum": ["run", "CXRFM_ANATOMY", "shipped"]}, {"type": "null"}]},
                                 "structures": {"type": "array", "items": {"type": "string"}}, "note": _OPT_STR}},
        "view": {**_OPT_STR, "description": "the `view` form field, upper-cased (null when not given)"},
        "image_size": {"anyOf": [_SIZE, {"type": "null"}],
                       "description": "the original image's pixels, in which outlines and lines are given"},
        "working_size": {**_SIZE, "description": "the size the masks were computed at (longest side <= 1024)"},
        "structures": {
            "type": "object",
            "description": "per structure (left_lung, right_lung, heart; left = the patient's left)",
            "additionalProperties": {
                "type": "object", "required": ["outline"],
                "properties": {
                    "outline": {"type": "array", "items": _POLYGON,
                                "description": "polygons in pixel-edge coordinates of the original image "
                                               "(0 <= x <= width, 0 <= y <= height), at most 300 points in all"},
                    "area_fraction": {**_NUM, "description": "share of the image's pixels in the mask"},
                },
            },
        },
        "ctr": {"anyOf": [CTR_SCHEMA, {"type": "null"}]},
        "summary": {"type": "string", "description": "one line for a reader, e.g. 'CTR 0.54 (above 0.5: enlarged "
                                                     "cardiac silhouette on a PA film)' or the refusal"},
    },
}

_STATUS = {"enum": ["present", "uncertain", "absent"]}
_PEAK = {"type": ["object", "null"], "required": ["x", "y", "value"],
         "properties": {"x": _INT, "y": _INT, "value": _NUM},
         "description": "the Grad-CAM map's hottest pixel in the original image (x right, y down)"}

EVIDENCE_SCHEMA = {
    "type": "object",
    "description": "The evidence trail of one finding (cxrfm.inference.evidence). Support is looked for only for "
                   "findings drafted present or uncertain; a finding drafted present with no support is stated "
                   "as uncertain (`downgraded` says why).",
    "required": ["id", "finding", "system", "probability", "head", "operating_point", "drafted", "status",
                 "downgraded", "region", "concepts", "ctr", "neighbours", "support", "supported", "trace"],
    "properties": {
        "id": {"type": "string", "description": "what report sentences point to, e.g. ev-pleural-effusion"},
        "finding": {"type": "string"},
        "system": {"enum": ["lungs_airways", "pleura", "cardiovascular_mediastinum", "bones", "devices", "other"]},
        "probability": {**_NUM, "description": "the findings head's (calibrated where `head` says so) probability"},
        "head": {"type": "string", "description": "linear-probe, zero-shot+platt or zero-shot"},
        "operating_point": {"type": "object", "required": ["possible", "likely", "band", "calibrated"],
                            "description": "the wording bands that turned the probability into words",
                            "properties": {"possible": _NUM, "likely": _NUM,
                                           "band": {"enum": ["no", "possible", "likely"]},
                                           "calibrated": {"type": "boolean"}}},
        "drafted": {**_STATUS, "description": "what the probability alone says"},
        "status": {**_STATUS, "description": "what the report states, after the evidence rule"},
        "downgraded": {**_OPT_STR, "description": "why a finding drafted present is stated as uncertain"},
        "region": {"type": ["object", "null"], "description": "the Grad-CAM peak and where it lies",
                   "properties": {"method": {"type": "string"}, "peak": _PEAK,
                                  "expected": {"type": "string", "description": "where a supporting peak must be"},
                                  "inside": {"type": "array", "items": {"type": "string"}},
                                  "zone": {**_OPT_STR, "description": "e.g. 'right lower zone' (the patient's "
                                                                      "right; thirds of each lung's height)"},
                                  "where": _OPT_STR, "supports": {"type": "boolean"}, "note": _OPT_STR,
                                  "share": {"type": "object", "additionalProperties": _NUM}}},
        "concepts": {"type": "array", "items": {"type": "object", "required": ["feature", "name", "link"],
                                                "properties": {"feature": _INT, "name": {"type": "string"},
                                                               "activation": _NUM, "link": {"type": "string"}}}},
        "ctr": {"type": ["object", "null"], "description": "cardiac findings: the anatomy entry's CTR"},
        "neighbours": {"type": "array", "description": "nearest training studies whose report states the finding",
                       "items": {"type": "object", "properties": {
                           "id": {"type": "string"}, "similarity": _NUM,
                           "sentences": {"type": "array", "items": {"type": "string"}}}}},
        "support": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "supported": {"type": ["boolean", "null"], "description": "null: not looked for (drafted absent)"},
        "trace": {**_OPT_STR, "description": "evidence -> finding -> impression, in words"},
    },
}

_SENTENCE = {"type": "object", "required": ["id", "text", "status", "findings", "evidence"],
             "properties": {"id": {"type": "string"}, "text": {"type": "string"}, "status": _STATUS,
                            "findings": {"type": "array", "items": {"type": "string"}},
                            "evidence": {"type": "array", "items": {"type": "string"},
                                         "description": "ids of `evidence` entries this sentence rests on"}}}

STRUCTURED_REPORT_SCHEMA = {
    "type": "object",
    "description": "The draft by organ system (SRRG-style) with present / absent / uncertain findings and a ranked "
                   "impression; every sentence points to its evidence. `report` is its text.",
    "required": ["sections", "impression", "statuses"],
    "properties": {
        "sections": {"type": "array", "items": {
            "type": "object", "required": ["system", "title", "sentences"],
            "properties": {"system": {"type": "string"}, "title": {"type": "string"},
                           "sentences": {"type": "array", "items": _SENTENCE}}}},
        "impression": {"type": "array", "items": _SENTENCE,
                       "description": "present before uncertain, then by clinical urgency, then by probability"},
        "statuses": {"type": "object", "additionalProperties": _STATUS},
        "thresholds": {"type": "object", "additionalProperties": _NUM},
    },
}

ANALYZE_SCHEMA = {
    "type": "object",
    "required": ["is_cxr", "ood", "findings", "report", "structured_report", "evidence", "image_png", "image_size",
                 "anatomy"],
    "properties": {
        "is_cxr": {"type": "boolean"},
        "ood": {"type": "object", "description": "the OOD gate's verdict (score >= threshold passed)"},
        "findings": {"type": "array", "items": {"type": "object", "required": ["finding", "probability", "head"],
                                                "properties": {"finding": {"type": "string"},
                                                               "probability": _NUM, "head": {"type": "string"}}}},
        "head": {"type": "object"},
        "top_finding": _OPT_STR,
        "report": {"type": "string", "description": "draft structured report (the text of `structured_report`)"},
        "structured_report": STRUCTURED_REPORT_SCHEMA,
        "evidence": {"type": "array", "items": EVIDENCE_SCHEMA, "description": "one entry per finding, head order"},
        "neighbours": {"type": "array", "items": {"type": "object"}},
        "concepts": {"type": "array", "items": {"type": "object"}},
        "image_png": {"type": "string", "description": "the image as a PNG data URL (longest side <= 512)"},
        "heatmap": {"type": ["object", "null"]},
        "image_size": _SIZE,
        "anatomy": ANATOMY_SCHEMA,
        "elapsed_ms": _NUM,
    },
}

ANALYZE_OK = {"description": "The analysis of a chest radiograph",
              "content": {"application/json": {"schema": ANALYZE_SCHEMA}}}
