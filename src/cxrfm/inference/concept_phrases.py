"""The bank of radiology phrases that SAE features are labelled with through the model's own text tower.

Written for this project (no LLM, no network): short phrases a radiologist or a technologist would use
about what a chest film shows, covering the canonical findings, their locations and severities, devices,
anatomy, the acquisition (view, positioning, exposure, age) and artefacts (burned-in text, markers,
rulers), because a feature may encode any of these. A phrase names a concept only when the model's text
tower places it near the feature's direction, so phrases the tower never learned simply never win.
"""
from __future__ import annotations

CONCEPT_PHRASES: tuple[str, ...] = (
    # findings and their appearance
    "no acute cardiopulmonary abnormality", "clear lungs", "normal heart size",
    "enlarged cardiac silhouette", "cardiomegaly", "widened mediastinum",
    "pulmonary edema", "interstitial edema", "vascular congestion", "kerley b lines",
    "lobar consolidation", "airspace consolidation", "patchy airspace opacity", "right lower lobe pneumonia",
    "left lower lobe opacity", "bilateral pneumonia", "multifocal ground glass opacities",
    "peripheral ground glass opacity", "bilateral interstitial opacities", "viral pneumonia pattern",
    "bacterial pneumonia with lobar consolidation", "covid-19 pneumonia", "diffuse alveolar damage",
    "perihilar opacities in a child", "atelectasis", "subsegmental atelectasis", "volume loss",
    "pleural effusion", "small left pleural effusion", "large right pleural effusion",
    "blunted costophrenic angle", "pleural thickening", "pneumothorax", "apical pneumothorax",
    "tension pneumothorax", "pulmonary nodule", "lung mass", "cavitary lesion", "hilar lymphadenopathy",
    "emphysema", "hyperinflated lungs", "pulmonary fibrosis", "reticular opacities", "hiatal hernia",
    "rib fracture", "healed rib fractures", "infiltrate", "lung opacity",
    # devices
    "endotracheal tube", "nasogastric tube", "central venous catheter", "pacemaker leads",
    "sternotomy wires", "surgical clips", "chest tube", "ecg leads on the chest",
    # anatomy and acquisition
    "lateral view of the chest", "frontal chest radiograph", "portable anteroposterior film",
    "supine patient", "rotated patient", "poor inspiration", "low lung volumes", "underexposed film",
    "overexposed film", "pediatric chest radiograph", "infant chest", "adult chest radiograph",
    "elderly patient", "female breast shadows", "scoliosis", "arms over the chest",
    # artefacts and shortcuts
    "burned-in text annotation", "letter marker in the corner", "bright square marker",
    "side marker on the film", "ruler on the image", "cropped image", "black border around the image",
    "scanned film with a border", "image with text labels", "compressed low quality image",
)
