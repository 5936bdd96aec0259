"""One canonical finding list and the per-source mapping onto it.

The canonical list is CheXpert's 14 observations (Irvin et al., AAAI 2019) plus the pneumonia
sub-types that the public COVID-era and pediatric sets label (COVID-19, bacterial, viral).

Each source says which findings it labels *exhaustively*: for those, a finding the row does not
list is a known negative (0); for every other finding, absence means unknown (NaN). Evaluation
depends on this: scoring "not listed" as negative where the source never looked would invent
negatives. Values are 1 / 0 / NaN; -1 ("uncertain") exists only at the labeler's output and is
mapped by an explicit policy (:func:`apply_uncertain_policy`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ..errors import ManifestError

CHEXPERT_14: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
PNEUMONIA_SUBTYPES: tuple[str, ...] = ("COVID-19", "Bacterial pneumonia", "Viral pneumonia")
FINDINGS: tuple[str, ...] = CHEXPERT_14 + PNEUMONIA_SUBTYPES
FINDING_INDEX: dict[str, int] = {f: i for i, f in enumerate(FINDINGS)}

# The five findings of the CheXpert competition tasks (used for 5-finding F1 in report metrics).
CHEXPERT_5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# A child is only a known negative where its parent's aetiology is known: "Pneumonia" alone says
# nothing about bacterial vs viral, so a row positive for the parent with no child listed leaves
# the children unknown instead of 0.
CHILDREN: dict[str, tuple[str, ...]] = {"Pneumonia": PNEUMONIA_SUBTYPES}


@dataclass(frozen=True)
class SourceLabels:
    """How one source names its labels and which findings it labels exhaustively."""

    name: str
    # raw label (case-insensitive) -> canonical findings it asserts
    mapping: Mapping[str, tuple[str, ...]]
    # findings for which "not listed" means 0 for every labelled row of this source
    exhaustive: frozenset[str]
    # raw labels we know but cannot map to a canonical finding (kept in the manifest, ignored here)
    unmapped: frozenset[str] = field(default_factory=frozenset)
    # findings that cannot occur in this source at all (COVID-19 in images taken before 2019):
    # 0 on every labelled row, whatever the other rules say
    absent: frozenset[str] = field(default_factory=frozenset)
    # raw names are paths ("Pneumonia/Bacterial/Streptococcus"): each segment is looked up
    hierarchical: bool = False
    note: str = ""


def _m(**kw: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {k.lower(): v for k, v in kw.items()}


_PNA_VIRAL = ("Pneumonia", "Viral pneumonia")
_PNA_BACT = ("Pneumonia", "Bacterial pneumonia")
# fungal / lipoid pneumonia: known to be neither bacterial nor viral ("!" = a known negative)
_PNA_OTHER = ("Pneumonia", "!Bacterial pneumonia", "!Viral pneumonia", "!COVID-19")

# covid-chestxray-dataset's ``finding`` field (Cohen et al., github.com/ieee8023/covid-chestxray-dataset):
# flat names in the 2020 snapshots ("Streptococcus", "COVID-19, ARDS"), a path in later ones
# ("Pneumonia/Bacterial/Staphylococcus/MRSA", "Pneumonia/Viral/Influenza/H1N1", "Pneumonia/Fungal/
# Pneumocystis", "Pneumonia/Lipoid", "Pneumonia/Aspiration", "Tuberculosis", "No Finding", "Unknown",
# "todo"), and slices that keep only a leaf or a partial path ("Bacterial", "Pneumonia/Viral").
# Keys are path *segments*: a path asserts the union of what its known segments assert
# (:func:`_lookup`), so a leaf we do not know under a known parent still yields the parent.
_COVID_SET = {
    "covid-19": ("COVID-19", "Pneumonia", "Viral pneumonia"),
    "covid19": ("COVID-19", "Pneumonia", "Viral pneumonia"),
    "sars-cov-2": ("COVID-19", "Pneumonia", "Viral pneumonia"),
    "pneumonia": ("Pneumonia",),
    "viral pneumonia": _PNA_VIRAL,
    "bacterial pneumonia": _PNA_BACT,
    "fungal pneumonia": _PNA_OTHER,
    "viral": _PNA_VIRAL,
    "bacterial": _PNA_BACT,
    "fungal": _PNA_OTHER,
    # aspiration pneumonia is often bacterial but not always: the aetiology stays unknown
    "aspiration": ("Pneumonia",),
    "mycoplasma bacterial pneumonia": _PNA_BACT,
    "mycoplasma": _PNA_BACT,
    "klebsiella": _PNA_BACT,
    "streptococcus": _PNA_BACT,
    "legionella": _PNA_BACT,
    "chlamydophila": _PNA_BACT,
    "e.coli": _PNA_BACT,
    "staphylococcus": _PNA_BACT,
    "mrsa": _PNA_BACT,
    "nocardia": _PNA_BACT,
    "varicella": _PNA_VIRAL,
    "influenza": _PNA_VIRAL,
    "h1n1": _PNA_VIRAL,
    "sars": _PNA_VIRAL,
    "mers-cov": _PNA_VIRAL,
    "mers": _PNA_VIRAL,
    "herpes": _PNA_VIRAL,
    "pneumocystis": _PNA_OTHER,
    "aspergillosis": _PNA_OTHER,
    "histoplasmosis": _PNA_OTHER,
    "mucormycosis": _PNA_OTHER,
    "cryptococcus": _PNA_OTHER,
    "lipoid": _PNA_OTHER,
    "no finding": ("No Finding",),
    "normal": ("No Finding",),
}
# Named in the dataset but outside the canonical list (a labelled row: exhaustive negatives hold).
_COVID_UNMAPPED = frozenset({"ards", "tuberculosis"})
_COVID_EXHAUSTIVE = frozenset({"No Finding", "Pneumonia", "COVID-19", "Bacterial pneumonia", "Viral pneumonia"})

SOURCES: dict[str, SourceLabels] = {
    "kermany-pediatric-cxr": SourceLabels(
        name="kermany-pediatric-cxr",
        # the canonical names shared/data writes, and the published folder names (NORMAL, PNEUMONIA,
        # and the file-name tags bacteria / virus: "PNEUMONIA/bacteria" as a path)
        mapping=_m(Normal=("No Finding",), Pneumonia=("Pneumonia",), Bacteria=_PNA_BACT, Virus=_PNA_VIRAL, **{
            "No Finding": ("No Finding",), "Bacterial pneumonia": _PNA_BACT, "Viral pneumonia": _PNA_VIRAL}),
        hierarchical=True,
        # collected before 2019: COVID-19 is a known negative
        exhaustive=frozenset({"No Finding", "Pneumonia", "Bacterial pneumonia", "Viral pneumonia", "COVID-19"}),
        absent=frozenset({"COVID-19"}),
        note="Kermany et al. 2018: every image is normal, bacterial or viral pneumonia.",
    ),
    "covid-chestxray-dataset": SourceLabels(
        name="covid-chestxray-dataset",
        mapping=_COVID_SET,
        exhaustive=_COVID_EXHAUSTIVE,
        unmapped=_COVID_UNMAPPED,
        hierarchical=True,
        note="Cohen et al.: the `finding` field is the case diagnosis (a path such as Pneumonia/Viral/COVID-19); "
             "ARDS and Tuberculosis have no canonical finding.",
    ),
    "hannover-covid-19-image-repository": SourceLabels(
        name="hannover-covid-19-image-repository",
        mapping=_COVID_SET,
        exhaustive=_COVID_EXHAUSTIVE,
        unmapped=_COVID_UNMAPPED,
        hierarchical=True,
        note="Winther et al.: a COVID-19 case collection; COVID-19 is a patient-level label.",
    ),
    "nih-chestxray14": SourceLabels(
        name="nih-chestxray14",
        mapping=_m(
            **{"No Finding": ("No Finding",), "Effusion": ("Pleural Effusion",),
               "Pleural_Thickening": ("Pleural Other",), "Infiltration": ("Lung Opacity",)},
            Atelectasis=("Atelectasis",), Cardiomegaly=("Cardiomegaly",), Consolidation=("Consolidation",),
            Edema=("Edema",), Mass=("Lung Lesion",), Nodule=("Lung Lesion",), Pneumonia=("Pneumonia",),
            Pneumothorax=("Pneumothorax",),
        ),
        # NIH text-mined 14 labels for every image; Lung Opacity is only partly covered by
        # "Infiltration" so its absence is not a negative. Collected 1992-2015: no COVID-19.
        exhaustive=frozenset({
            "No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Lesion",
            "Pneumonia", "Pneumothorax", "Pleural Effusion", "Pleural Other", "COVID-19"}),
        absent=frozenset({"COVID-19"}),
        unmapped=frozenset({"emphysema", "fibrosis", "hernia"}),
        note="Wang et al. CVPR 2017: 14 text-mined labels; Emphysema, Fibrosis, Hernia have no CheXpert finding.",
    ),
    "iu-xray-openi": SourceLabels(
        name="iu-xray-openi",
        mapping={},  # MeSH terms are mapped by mesh_to_findings (hierarchical terms)
        exhaustive=frozenset(),
        note="Demner-Fushman et al. 2016: MeSH major terms; absence is unknown.",
    ),
}

# Placeholders some sources put where a label is still to come: the row is unlabelled.
# "nan" / "none" / "n/a" are what spreadsheets and pandas write for an empty cell.
UNINFORMATIVE: frozenset[str] = frozenset({"todo", "unknown", "pending", "", "nan", "none", "n/a", "na", "null"})

# IU/Open-i MeSH: the first segment of a term ("Opacity/lung/base/left") decides, refined by its
# first two segments ("cicatrix/lung") or by a qualifier anywhere ("costophrenic angle+blunted").
# Only mappings that are clear under CheXpert's definitions are listed (e.g. CheXpert counts scarring
# and interstitial markings as Lung Opacity, blunted costophrenic angles and pulmonary congestion as
# (uncertain) effusion and edema); docs/labeler.md lists the frequent terms we could not map.
IU_MESH: dict[str, tuple[str, ...]] = {
    "normal": ("No Finding",),
    "cardiomegaly": ("Cardiomegaly",),
    "pulmonary atelectasis": ("Atelectasis",),
    "atelectasis": ("Atelectasis",),
    "pleural effusion": ("Pleural Effusion",),
    "costophrenic angle+blunted": ("Pleural Effusion",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "opacity": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "density+round": ("Lung Lesion",),  # a round density is CheXpert's "nodular density"
    "density/lung": ("Lung Opacity",),
    "markings+interstitial": ("Lung Opacity",),
    "lung diseases, interstitial": ("Lung Opacity",),
    "cicatrix/lung": ("Lung Opacity",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "pulmonary edema": ("Edema",),
    "edema": ("Edema",),
    "pulmonary congestion": ("Edema",),
    "heart failure": ("Edema",),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "lung/hyperlucent": (),
    "fractures, bone": ("Fracture",),
    "thickening/pleura": ("Pleural Other",),
    "cicatrix/pleura": ("Pleural Other",),
    "medical device": ("Support Devices",),
    "implanted medical device": ("Support Devices",),
    "catheters, indwelling": ("Support Devices",),
    "tube, inserted": ("Support Devices",),
    "pacemaker, artificial": ("Support Devices",),
    "stents": ("Support Devices",),
    "surgical instruments": ("Support Devices",),
    "mediastinum/enlarged": ("Enlarged Cardiomediastinum",),
    "mediastinum/prominent": ("Enlarged Cardiomediastinum",),
    "mediastinum/widened": ("Enlarged Cardiomediastinum",),
    "cardiac shadow/enlarged": ("Cardiomegaly",),
}


def mesh_to_findings(term: str) -> tuple[str, ...]:
    """Map one IU MeSH term (``Opacity/lung/base/left/mild``) to canonical findings (maybe none)."""
    t = term.strip().lower()
    parts = [p.strip() for p in t.split("/")]
    for q in parts[1:]:
        if f"{parts[0]}+{q}" in IU_MESH:
            return IU_MESH[f"{parts[0]}+{q}"]
    for k in (("/".join(parts[:2])), parts[0]):
        if k in IU_MESH:
            return IU_MESH[k]
    return ()


def split_labels(value: object) -> list[str]:
    """The ``labels`` cell as a list of raw names (``;``-separated; empty/NaN -> [])."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [s.strip() for s in str(value).split(";") if s.strip()]


def _lookup(spec: SourceLabels, key: str) -> tuple[str, ...] | None:
    """Canonical findings a raw name asserts in ``spec`` (None: the name is not in its mapping).

    A hierarchical name asserts the union of its known segments, so the bare leaf ``bacterial``, the
    partial path ``pneumonia/viral`` and a path ending in a leaf we do not list
    (``pneumonia/bacterial/<new organism>``) all resolve to what their known parts say.
    """
    if key in spec.mapping:
        return spec.mapping[key]
    if not spec.hierarchical or not ("/" in key or "," in key):
        return None
    found: list[str] = []
    for part in key.split(","):  # the 2020 snapshots join two diagnoses: "COVID-19, ARDS"
        part = part.strip()
        if part in spec.mapping:
            found.extend(spec.mapping[part])
            continue
        for seg in part.split("/"):
            found.extend(spec.mapping.get(seg.strip(), ()))
    return tuple(dict.fromkeys(found)) or None


def _classify(name: str, spec: SourceLabels | None, source: str) -> tuple[str, tuple[str, ...]]:
    """(kind, findings) for one raw name: kind is mapped, placeholder, outside (known, no finding) or unknown."""
    key = name.strip().lower()
    if spec is not None and source == "iu-xray-openi":
        return "mapped", mesh_to_findings(name)  # unmatched MeSH terms are outside the list, not errors
    if key in UNINFORMATIVE:
        return "placeholder", ()
    if spec is not None:
        found = _lookup(spec, key)
        if found is not None:
            return "mapped", found
        segments = {seg.strip() for part in key.split(",") for seg in part.split("/")} if spec.hierarchical else {key}
        if key in spec.unmapped or segments & spec.unmapped:
            return "outside", ()
        if segments <= UNINFORMATIVE:
            return "placeholder", ()
    canon = _canonical_lookup().get(key)
    return ("mapped", (canon,)) if canon is not None else ("unknown", ())


def unknown_labels(raw: Iterable[str], source: str) -> list[str]:
    """The raw names of one row that cxrfm cannot map for ``source`` (kept as unmapped, see harmonise_row)."""
    spec = SOURCES.get(source)
    return [name for name in raw if _classify(name, spec, source)[0] == "unknown"]


def harmonise_row(raw: Iterable[str], source: str, strict: bool = False) -> np.ndarray:
    """Canonical vector (len(FINDINGS),) of 1 / 0 / NaN for one row's raw labels.

    Unknown sources use canonical names directly (a user's own manifest). A raw name cxrfm cannot
    map is handled per row: the row keeps what its other names assert, and the source's exhaustive
    negatives are *not* applied (the unknown name may be one of those findings); list such names with
    :func:`unknown_labels`. ``strict=True`` raises :class:`ManifestError` naming the label instead.
    "No Finding" negates only the source's exhaustive findings: a source that never labels devices
    or fractures says nothing about them by calling an image normal.
    """
    raw = list(raw)
    out = np.full(len(FINDINGS), np.nan, dtype=np.float32)
    spec = SOURCES.get(source)
    positives: set[str] = set()
    negatives: set[str] = set()
    labelled = has_unknown = False
    for name in raw:
        kind, found = _classify(name, spec, source)
        if kind == "unknown":
            if strict:
                raise ManifestError(
                    f"unknown label name {name!r} for source {source!r}; use one of the canonical findings "
                    f"({', '.join(FINDINGS)}) or a source whose mapping cxrfm knows ({', '.join(SOURCES)}), "
                    f"or drop --strict to keep the row with the label recorded as unmapped")
            has_unknown = True
            continue
        if kind == "placeholder":
            continue
        labelled = True  # "outside": a real finding beyond our list, the row is labelled
        for f in found:
            (negatives.add(f[1:]) if f.startswith("!") else positives.add(f))
    if not labelled:
        return out  # unlabelled row, only placeholders such as "todo", or only unknown names
    if spec is not None and not has_unknown:
        for f in spec.exhaustive:
            out[FINDING_INDEX[f]] = 0.0
    for f in positives:
        out[FINDING_INDEX[f]] = 1.0
    if positives - {"No Finding"}:
        out[FINDING_INDEX["No Finding"]] = 0.0
    for parent, children in CHILDREN.items():
        if parent in positives and not positives.intersection(children):
            for c in children:
                out[FINDING_INDEX[c]] = np.nan
    for f in negatives | (spec.absent if spec is not None else frozenset()):
        out[FINDING_INDEX[f]] = 0.0
    return out


_CANON_LOWER: dict[str, str] = {}


def _canonical_lookup() -> dict[str, str]:
    if not _CANON_LOWER:
        _CANON_LOWER.update({f.lower(): f for f in FINDINGS})
        _CANON_LOWER.update({"normal": "No Finding", "effusion": "Pleural Effusion", "covid19": "COVID-19"})
    return _CANON_LOWER


def apply_uncertain_policy(values: np.ndarray, policy: str = "ignore") -> np.ndarray:
    """Map labeler output (1/0/-1/NaN) to 1/0/NaN: ``ignore`` -> NaN, ``ones`` -> 1, ``zeros`` -> 0."""
    out = np.asarray(values, dtype=np.float32).copy()
    fill = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}.get(policy)
    if fill is None and policy not in {"ignore"}:
        raise ValueError(f"uncertain policy {policy!r}: use ignore, ones or zeros")
    out[out == -1] = fill
    return out
