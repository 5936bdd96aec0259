"""The labeler's vocabulary: mention phrases, size descriptors and NegEx termsets (data only).

Modelled on the CheXpert labeler's public mention / unmention / negation / uncertainty lists
(Irvin et al., AAAI 2019; github.com/stanfordmlgroup/chexpert-labeler), written for this project.
:mod:`cxrfm.data.labeler` builds its spaCy pipeline from these tables.
"""
from __future__ import annotations

from .findings import CHEXPERT_14

OTHER = "OTHER"  # an abnormality outside the 13 findings: it blocks "No Finding" (CheXpert's no_finding list)
NORMAL = "NORMAL"  # an explicit normal statement ("no acute cardiopulmonary abnormality")
_PATHOLOGIES: tuple[str, ...] = tuple(f for f in CHEXPERT_14 if f not in ("No Finding", "Support Devices"))

# ---------------------------------------------------------------- mention phrases (data)
# finding -> phrases (lower case, matched token by token). Where one phrase contains another, the
# longest match wins, so "calcified nodule" (OTHER) overrides "nodule" (Lung Lesion): this is how
# CheXpert's "unmention" lists are expressed here.
MENTIONS: dict[str, tuple[str, ...]] = {
    "Atelectasis": (
        "atelectasis", "atelectases", "atelectatic", "collapse", "collapsed", "lobar collapse",
        "atelectatic change", "atelectatic changes", "subsegmental atelectasis", "plate-like atelectasis"),
    "Cardiomegaly": (
        "cardiomegaly", "cardiac enlargement", "enlarged heart", "enlargement of the heart",
        "enlargement of the cardiac silhouette", "cardiac hypertrophy"),
    "Enlarged Cardiomediastinum": (
        "widened mediastinum", "mediastinal widening", "widening of the mediastinum",
        "mediastinal enlargement", "enlarged cardiomediastinum", "enlarged mediastinum",
        "enlarged cardiomediastinal silhouette", "widened cardiomediastinal silhouette"),
    "Edema": (
        "edema", "oedema", "pulmonary edema", "interstitial edema", "alveolar edema", "edematous",
        "heart failure", "congestive heart failure", "chf", "fluid overload", "volume overload",
        "kerley b lines", "kerley lines", "septal lines"),
    "Consolidation": (
        "consolidation", "consolidations", "consolidated", "consolidative", "consolidating"),
    "Pneumonia": (
        "pneumonia", "pneumonias", "bronchopneumonia", "pneumonic", "infection", "infections",
        "infectious", "infectious process", "infective process", "pneumonitis"),
    "Lung Opacity": (
        "opacity", "opacities", "opacification", "opacifications", "opacified", "opacifies",
        "airspace disease", "air-space disease", "air space disease", "airspace process",
        "infiltrate", "infiltrates", "infiltration", "infiltrative", "interstitial marking",
        "interstitial markings", "interstitial pattern", "interstitial lung disease", "interstitial disease",
        "interstitial prominence", "interstitial thickening", "reticular", "reticulation",
        "reticulonodular", "reticular pattern", "scar", "scars", "scarring", "parenchymal scarring",
        "peribronchial thickening", "bronchial wall thickening", "increased density", "density",
        "densities", "ground glass", "ground-glass", "haziness", "hazy", "decreased translucency"),
    "Lung Lesion": (
        "mass", "masses", "nodule", "nodules", "nodular density", "nodular densities",
        "nodular opacity", "nodular opacities", "nodular opacification", "lump", "cavitary lesion",
        "cavitary lesions", "cavitation", "carcinoma", "neoplasm", "tumor", "tumour", "malignancy",
        "lung lesion", "pulmonary lesion", "lung cancer", "pulmonary metastases", "pulmonary metastasis",
        "lung metastases", "spiculated"),
    "Pneumothorax": ("pneumothorax", "pneumothoraces", "pneumothoraxes", "ptx"),
    "Pneumothorax|Pleural Effusion": ("hydropneumothorax", "hydropneumothoraces"),
    "Pleural Effusion": (
        "effusion", "effusions", "pleural effusion", "pleural effusions", "pleural fluid",
        "hydrothorax", "fluid in the fissure"),
    "Pleural Other": (
        "pleural thickening", "thickening of the pleura", "pleural plaque", "pleural plaques",
        "fibrothorax", "pleural scar", "pleural scarring", "pleural-parenchymal scarring",
        "pleuroparenchymal scarring", "pleuroparenchymal scar", "pleural parenchymal scarring",
        "pleural calcification", "pleural calcifications", "calcified pleural plaques", "pleural fibrosis",
        "apical pleural thickening", "apical cap", "apical capping", "pleural-based"),
    "Fracture": ("fracture", "fractures", "fractured", "fx", "refracture"),
    "Support Devices": (
        "pacer", "pacemaker", "line", "lines", "picc", "picc line", "port", "port-a-cath", "portacath",
        "mediport", "tube", "tubes", "et tube", "endotracheal tube", "ng tube", "og tube",
        "nasogastric tube", "feeding tube", "chest tube", "tracheostomy", "tracheostomy tube",
        "catheter", "catheters", "swan-ganz", "valve replacement", "prosthetic valve", "valve prosthesis",
        "hardware", "arthroplasty", "icd", "aicd", "defibrillator", "device", "devices", "drain", "drains",
        "plate", "plates", "screw", "screws", "cannula", "coil", "coils", "stent", "stents", "clip", "clips",
        "surgical clip", "surgical clips", "sternotomy wire", "sternotomy wires", "wire", "wires",
        "leads", "staples", "prosthesis", "orthopedic hardware", "fixation hardware", "spinal rods",
        "electrodes", "loop recorder", "kyphoplasty", "vertebroplasty", "cement", "stimulator",
        "neurostimulator", "nerve stimulator", "spinal stimulator", "generator", "prosthetic", "bone anchor",
        "bone anchors", "anchor", "anchors", "shunt", "shunt tubing", "tubing", "bypass markers",
        "bypass graft markers", "graft markers", "sutures", "suture", "internal fixation", "occluder",
        "ivc filter", "filter", "monitor leads", "cardiac monitor leads"),
    OTHER: (
        # CheXpert's "no finding" blockers: abnormalities that are none of the 13 findings
        "emphysema", "emphysematous", "copd", "chronic obstructive pulmonary disease",
        "chronic obstructive lung disease", "hyperinflation", "hyperinflated", "hyperexpanded",
        "hyperexpansion", "hyperaeration", "overinflation", "flattening of the diaphragms",
        "flattened diaphragms", "flattened hemidiaphragms", "low lung volumes", "low volumes",
        "hypoinflation", "hypoventilatory", "granuloma", "granulomas", "granulomata", "granulomatous",
        "calcified granuloma", "calcified granulomas", "calcified nodule", "calcified nodules",
        "calcified density", "calcified densities", "calcified lymph node", "calcified lymph nodes",
        "calcification", "calcifications", "calcified", "calcific", "scoliosis", "kyphosis",
        "kyphotic", "degenerative", "spondylosis", "osteophyte", "osteophytes", "osteophytosis",
        "osteopenia", "osteoporosis", "demineralization", "hernia", "hiatal hernia", "eventration",
        "elevated hemidiaphragm", "elevation", "tortuous", "tortuosity", "ectatic", "ectasia",
        "unfolded", "unfolding", "atherosclerotic", "atherosclerosis", "bulla", "bullae", "bullous",
        "bleb", "blebs", "bronchiectasis", "cyst", "cysts", "pneumomediastinum", "pneumoperitoneum",
        "free air", "subcutaneous emphysema", "lucency", "lucencies", "thickening",
        "pericardial effusion", "joint effusion", "aspiration", "bronchitis", "bronchiolitis",
        "airways disease", "airway disease", "reactive airway disease", "asthma", "pulmonary hypertension",
        "hypertension", "volume loss", "deformity", "deformities", "hematoma", "hemorrhage", "contusion",
        "metastasis", "metastases", "metastatic", "metastatic disease", "cuffing", "peribronchial cuffing",
        "fibrosis", "fibrotic", "pulmonary fibrosis", "interstitial fibrosis", "granulomatous infection",
        "granulomatous disease", "granulomatous process", "old infection", "prior infection",
        "aspiration pneumonitis", "radiation pneumonitis",
        "inflammation", "inflammatory", "nipple shadow", "nipple shadows", "hilar prominence",
        "prominent hila", "prominent hilum", "enlarged hila", "hilar enlargement", "lymphadenopathy",
        "adenopathy", "sclerotic", "lytic", "dextrocardia", "pectus", "pectus excavatum", "foreign body",
        "aneurysm", "aortic aneurysm", "dilated aorta", "soft tissue edema", "subcutaneous edema",
        "pleural line", "skin fold", "skin line", "vertebral collapse", "compression deformity",
        "bone density", "soft tissue density", "soft tissue densities", "breast density",
        "chronic lung disease", "chronic changes",
        # our additions (not in CheXpert's list): spine curvature, low lung volumes, crowding
        "dextroscoliosis", "levoscoliosis", "scoliotic", "curvature", "dextrocurvature", "levocurvature",
        "elevated", "hypoinflated", "hypoventilated", "hypoventilation", "low lung volume", "low volume",
        "low-volume", "decreased lung volumes", "diminished lung volumes", "reduced lung volumes",
        "lower lung volumes", "lung volumes are low", "lung volumes are decreased", "lung volumes are diminished",
        "lung volumes are reduced", "poor inspiration", "shallow inspiration", "crowding",
        "bronchovascular crowding", "bihilar prominence", "hilar fullness", "lobectomy", "pneumonectomy"),
}

# Mentions that are uncertain by nature (CheXpert classifies them as uncertain unless negated).
UNCERTAIN_MENTIONS: dict[str, tuple[str, ...]] = {
    "Edema": (
        "vascular congestion", "pulmonary vascular congestion", "pulmonary congestion", "venous congestion",
        "pulmonary venous congestion", "congestion", "indistinctness", "vascular indistinctness",
        "vascular prominence", "pulmonary vascular prominence", "prominent pulmonary vasculature",
        "prominence of the pulmonary vasculature", "vascular engorgement", "engorgement", "engorged",
        "vascular redistribution", "redistribution", "cephalization", "vascular cephalization",
        "pulmonary venous hypertension", "venous hypertension", "increased pulmonary vascularity",
        "increased lung vascularity", "increased vascularity", "prominent vascularity",
        "prominent central vasculature", "prominence of the central vasculature",
        "prominent central pulmonary vasculature", "prominence of the central pulmonary vasculature",
        "indistinct vascular margination", "indistinct pulmonary vasculature"),
    "Pleural Effusion": (
        "blunting", "blunted", "blunt", "blunting of the costophrenic angle",
        "blunting of the costophrenic angles", "costophrenic angle blunting", "costophrenic blunting",
        "blunted costophrenic angle", "blunted costophrenic angles", "meniscus"),
}

# Mentions of a structure whose state comes from a nearby descriptor ("heart size is normal" -> 0,
# "the heart is enlarged" -> 1, "borderline heart size" -> -1; "heart size is stable" -> unmentioned).
SIZE_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        "heart", "the heart", "heart size", "cardiac size", "cardiac silhouette", "cardiac shadow",
        "cardiac contour", "cardiac contours", "heart shadow", "cardiac diameter", "cardiac silhouettes",
        "heart silhouette", "cardiothoracic ratio"),
    "Enlarged Cardiomediastinum": (
        "mediastinum", "mediastinal contour", "mediastinal contours", "mediastinal silhouette",
        "mediastinal width", "mediastinal configuration", "mediastinal structures", "superior mediastinum",
        "cardiomediastinal silhouette", "cardiomediastinal silhouettes", "cardiomediastinal contour",
        "cardiomediastinal contours", "cardiomediastinum", "cardiomediastinal", "cardiomediastinal structures",
        "pericardial silhouette", "mediastinal contour"),
}
SIZE_DESCRIPTORS: dict[float, tuple[str, ...]] = {
    1.0: ("enlarged", "enlargement", "large", "larger", "increased", "increase", "prominent", "prominence",
          "widened", "widening", "wide", "dilated", "enlarging", "cardiomegaly", "mildly enlarged"),
    # "upper limits of normal" is within normal: 0 ("borderline" stays uncertain, as in CheXpert)
    0.0: ("normal", "within normal limits", "within limits of normal", "unremarkable", "not enlarged",
          "not widened", "normal-sized", "normal size", "not increased", "no enlargement", "not prominent",
          "small", "upper limits of normal", "upper limit of normal", "upper normal", "top normal",
          "top-normal", "upper-normal", "high normal", "high-normal", "upper limits normal",
          "at the upper limits", "near top normal", "upper range of normal"),
    -1.0: ("borderline", "borderline enlarged", "borderline enlargement", "borderline large",
           "possibly enlarged", "questionably enlarged", "may be enlarged", "probably enlarged",
           "possibly mildly enlarged", "borderline prominent"),
}
_DESCRIPTOR_WINDOW = 8  # tokens between a size mention and its descriptor
_DESCRIPTOR_NEGATORS = frozenset({"not", "no", "without", "nor", "n't"})

# "no acute cardiopulmonary abnormality" and friends (token patterns; used by label_sentence_findings)
# "tip projects over the SVC": a line or catheter tip, whatever the (often de-identified) device word
_DEVICE_TIP_PATTERNS: list[list[dict]] = [
    [{"LOWER": {"IN": ["tip", "tips"]}},
     {"LOWER": {"IN": ["projects", "projecting", "projected", "project", "overlies", "overlying", "overlie",
                       "terminates", "terminating", "is", "in", "at", "near", "within", "lies", "located",
                       "extends", "ends", "approximating", "approximates", "remains", "positioned", "now"]}}],
]

_NORMAL_TOKEN_PATTERNS: list[list[dict]] = [
    [{"LOWER": {"IN": ["no", "without"]}}, {"LOWER": {"IN": ["evidence", "radiographic", "signs"]}, "OP": "*"},
     {"LOWER": "of", "OP": "?"},
     {"LOWER": {"IN": ["acute", "active", "significant", "focal", "other"]}},
     {"LOWER": {"IN": ["cardiopulmonary", "pulmonary", "intrathoracic", "thoracic", "cardiac", "lung", "chest",
                       "radiographic", "osseous", "disease", "or", "and", "/", ",", "bony", "interval"]}, "OP": "*"},
     {"LOWER": {"IN": ["abnormality", "abnormalities", "disease", "process", "processes", "finding",
                       "findings", "pathology", "change", "changes", "abnormal"]}}],
    [{"LOWER": {"IN": ["normal", "negative", "unremarkable"]}},
     {"LOWER": {"IN": ["chest", "study", "examination", "exam", "radiograph", "radiographs", "film", "x-ray",
                       "xray", "cxr", "frontal"]}}],
    [{"LOWER": "normal"}, {"LOWER": "chest"}, {"LOWER": {"REGEX": "^(x|radiograph|film|xray|x-ray)"}}],
    [{"LOWER": "no"}, {"LOWER": "acute"}, {"LOWER": {"IN": ["findings", "abnormality", "disease", "process"]}}],
]

# ---------------------------------------------------------------- NegEx termsets (data)
NEGATION_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": [
        "no change", "no significant change", "no interval change", "no definite change", "no substantial change",
        "no appreciable change", "no significant interval change", "no substantial interval change",
        "not changed", "not significantly changed", "without change", "no increase", "no significant increase",
        "no interval increase", "no decrease", "no worsening", "no further", "not only", "not necessarily",
        "gram negative", "cannot exclude", "can not exclude", "cannot be excluded", "can not be excluded",
        "not be excluded", "not excluded", "not entirely excluded", "not completely excluded",
        "cannot rule out", "can not rule out", "cannot be ruled out", "can not be ruled out",
        "not be ruled out", "not ruled out", "not well seen", "not well visualized", "not well evaluated",
        "not clearly seen", "difficult to exclude", "not well assessed"],
    "preceding_negations": [
        "no", "not", "without", "negative for", "free of", "clear of", "absence of", "absent", "no evidence of",
        "no sign of", "no signs of", "no radiographic evidence of", "no definite", "no suspicious", "no acute",
        "resolution of", "resolved", "interval resolution of", "removal of", "interval removal of",
        "rather than", "never", "none", "nor", "neither", "no longer", "denies", "negative"],
    "following_negations": [
        "is not seen", "are not seen", "not seen", "not identified", "not visualized", "not appreciated",
        "not evident", "not present", "not demonstrated", "not detected", "is absent", "are absent", "absent",
        "has resolved", "have resolved", "resolved", "has cleared", "have cleared", "cleared", "removed",
        "has been removed", "have been removed", "unlikely", "is unlikely", "no longer seen",
        "no longer visualized", "no longer present", "not noted", "not apparent"],
    "termination": [
        "but", "however", "although", "though", "yet", "which", "aside from", "apart from", "except",
        "with", "there is", "there are", "there has been", "there have been", ";", "while", "whereas",
        "nevertheless", "still", "secondary to", "due to", "may represent", "could represent",
        "may reflect", "likely", "possibly", "probably", "possible", "probable", "questionable"],
}
UNCERTAINTY_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": ["no doubt", "without doubt", "not likely", "less likely", "possible that no"],
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "likely", "most likely", "presumed", "presumably",
        "questionable", "question of", "questionably", "suspicious", "suspicious for", "suspect", "suspected",
        "suspicion", "suspicion for", "concern for", "concerning for", "worrisome for", "worrisome",
        "suggestive of", "suggesting", "suggests", "suggest", "suggestion of", "may", "might", "could",
        "cannot exclude", "can not exclude", "difficult to exclude", "cannot rule out", "can not rule out",
        "rule out", "r/o", "to exclude", "evaluate for", "versus", "vs", "vs.", "or", "and/or",
        "differential diagnosis", "differential", "consider", "considered", "consideration",
        "borderline", "equivocal", "indeterminate", "not excluded", "correlate for",
        "clinical correlation for", "may represent", "could represent", "may reflect", "could reflect",
        "developing", "early"],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "not be excluded", "not excluded", "not entirely excluded",
        "not completely excluded", "cannot be ruled out", "can not be ruled out", "not be ruled out",
        "not ruled out", "is possible", "are possible", "is suspected", "are suspected", "suspected",
        "is questioned", "questioned", "?", "versus", "vs", "vs.", "or", "and/or", "is likely", "are likely",
        "is not excluded", "may be present", "could be present", "is favored", "not well seen",
        "not well visualized", "not well evaluated", "not clearly seen", "is considered", "is uncertain",
        "may not be demonstrated", "may not be visible", "may not be seen", "may not be apparent"],
    # A hedge that opens a new clause also ends the previous one: in "opacity may represent
    # atelectasis or pneumonia" the "or" hedges atelectasis and pneumonia, not the opacity.
    "termination": [
        "but", "however", "although", "though", "yet", "which", "aside from", "apart from", "except", ";",
        "while", "whereas", "nevertheless", "with", "there is", "there are", "no", "without",
        "may represent", "could represent", "may reflect", "could reflect", "likely", "most likely", "possibly",
        "probably", "suggestive of", "suggesting", "concerning for", "suspicious for", "worrisome for",
        "consistent with", "compatible with", "representing", "reflecting"],
}
# hedges that only join alternatives ("no effusion or pneumothorax"): they never beat a negation
_CONJUNCTION_HEDGES = frozenset({"or", "versus", "vs", "vs.", "and/or"})
