"""Indiana University chest X-ray collection, Open-i (Demner-Fushman et al., JAMIA 2016).

Official layout (openi.nlm.nih.gov/faq, ``NLMCXR_reports.tgz`` + ``NLMCXR_png.tgz``)::

    SRC/ecgen-radiology/1.xml ...      one report per XML: <uId id="CXR1"/>, <licenseURL>,
                                       <AbstractText Label="FINDINGS|IMPRESSION|...">, <MeSH><major>,
                                       <parentImage id="CXR1_1_IM-0001-3001"> per image
    SRC/NLMCXR_png/CXR1_1_IM-0001-3001.png ...   (PNGs are found by name anywhere under SRC)

One row per ``parentImage``. ``report`` is "FINDINGS: ... IMPRESSION: ..." (the sections that are
present; empty when neither is), ``labels`` the MeSH major terms ``;``-joined, which
:func:`cxrfm.data.findings.mesh_to_findings` maps for source ``iu-xray-openi``. The collection has
no patient ids: each report (``iu:CXR1``) is treated as one patient, which is how the report
generation literature splits it. An XML file that does not parse (not UTF-8, truncated) is skipped
with its reason, since its image ids cannot be read.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import ManifestError
from .registry import ORIGIN, SKIP, copy_image, register_layout

SOURCE = "iu-xray-openi"
REPORT_DIR = "ecgen-radiology"
SECTIONS = ("FINDINGS", "IMPRESSION")


_EXAMPLE_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
<MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation><MeSH><major>{mesh}</major></MeSH>{images}</eCitation>
"""


def write_example(root: Path, images: Sequence[Path]) -> Path:
    """``root/ecgen-radiology/N.xml`` (two images per report) + ``root/NLMCXR_png/CXRN_k_IM-....png``."""
    texts = [("The lungs are clear.", "No acute disease.", "normal"),
             ("Heart size is enlarged.", "Cardiomegaly.", "Cardiomegaly/mild"),
             ("Patchy opacity at the left base.", "Possible pneumonia.", "Opacity/lung/base/left")]
    (root / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    for n in range(1, (len(images) + 1) // 2 + 1):
        ids = [f"CXR{n}_{k}_IM-{n:04d}-{k}001" for k in (1, 2) if 2 * (n - 1) + k - 1 < len(images)]
        for k, image_id in enumerate(ids):
            copy_image(images[2 * (n - 1) + k], root / "NLMCXR_png" / f"{image_id}.png")
        findings, impression, mesh = texts[n % len(texts)]
        (root / REPORT_DIR / f"{n}.xml").write_text(_EXAMPLE_XML.format(
            n=n, findings=findings, impression=impression, mesh=mesh,
            images="".join(f'<parentImage id="{i}"/>' for i in ids)), encoding="utf-8")
    return root


@register_layout("iu-xray", example=write_example)
def read_rows(src: Path) -> pd.DataFrame:
    """One row per image referenced by SRC/ecgen-radiology/*.xml (paths relative to SRC)."""
    src = Path(src)
    xml_dir = src / REPORT_DIR
    xmls = sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)) if xml_dir.is_dir() else []
    if not xmls:
        raise ManifestError(f"{xml_dir}: no report XML files; extract NLMCXR_reports.tgz "
                            f"(openi.nlm.nih.gov) into SRC so that SRC/{REPORT_DIR}/1.xml exists")
    pngs = _index_pngs(src)
    rows: list[dict] = []
    n_without_images = 0
    for path in xmls:
        rel = path.relative_to(src).as_posix()
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            rows.append({"image": None, "patient_id": None, "source": SOURCE, ORIGIN: rel,
                         SKIP: f"{path}: not a well-formed UTF-8 report XML ({e}); re-extract it from "
                               f"NLMCXR_reports.tgz or delete it"})
            continue
        uid = _attr(root, "uId", "id") or f"CXR{path.stem}"
        # whitespace runs are XML line-wrapping, not content
        texts = {(a.get("Label") or "").upper(): " ".join((a.text or "").split()) for a in root.iter("AbstractText")}
        report = " ".join(f"{s}: {texts[s]}" for s in SECTIONS if texts.get(s))
        mesh = [" ".join(m.text.split()) for m in root.iter("major") if m.text and m.text.strip()]
        images = [im.get("id") for im in root.iter("parentImage") if im.get("id")]
        n_without_images += not images
        for image_id in images:
            rows.append({
                "image": pngs.get(image_id, f"NLMCXR_png/{image_id}.png"),
                "patient_id": f"iu:{uid}",
                "source": SOURCE,
                "labels": ";".join(mesh) or None,
                "report": report,
                "license": _license(root),
                "source_image": f"{image_id}.png",
                "source_ref": rel,
                ORIGIN: rel,
                SKIP: None,
            })
    df = pd.DataFrame(rows)
    df.attrs["inputs"] = xmls
    if n_without_images:
        df.attrs["notes"] = [f"{n_without_images} report XMLs list no image (no <parentImage>) and add no row"]
    return df


def _index_pngs(src: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != REPORT_DIR)
        rel = Path(dirpath).relative_to(src)
        for f in filenames:
            if f.lower().endswith(".png"):
                found.setdefault(f[:-4], (rel / f).as_posix())
    return found


def _attr(root: ET.Element, tag: str, name: str) -> str | None:
    el = root.find(tag)
    return el.get(name) if el is not None else None


def _license(root: ET.Element) -> str | None:
    url = (root.findtext("licenseURL") or "").strip()
    m = re.search(r"creativecommons\.org/licenses/([a-z\-]+)/([\d.]+)", url)
    return f"CC {m.group(1).upper()} {m.group(2)}" if m else (url or None)
