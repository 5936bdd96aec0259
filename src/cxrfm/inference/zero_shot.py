"""The zero-shot findings head: positive / negative prompt ensembles scored against an image.

Follows CheXzero (Tiu et al., "Expert-level detection of pathologies from unannotated chest X-ray
images via self-supervised learning", Nat. Biomed. Eng. 2022): each finding has a positive and a
negative prompt ("chest x-ray showing cardiomegaly." / "no cardiomegaly."); an image's score is the
softmax over its two similarities, i.e. the probability of the positive prompt. The classifier is
built as open_clip's ``build_zero_shot_classifier``: every prompt of an ensemble is embedded, the
embeddings averaged and renormalised (Radford et al., CLIP, 2021, section 3.1.4).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.findings import FINDINGS
from ..errors import ConfigError
from .embed import DualEncoderLike, embed_texts

# held-out radiology phrasings (the default), disjoint from what the pseudo-report generator writes
PROMPTS_FILE = Path(__file__).resolve().parent / "prompts" / "zeroshot.json"
# the generator's own sentences: on label-only data they measure template matching, reported beside
TEMPLATE_PROMPTS_FILE = Path(__file__).resolve().parent / "prompts" / "zeroshot_template_matched.json"


def load_prompts(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Prompt ensembles ``{finding: {"positive": [...], "negative": [...]}}`` from a JSON file.

    ``None`` reads the bundled held-out prompts (``inference/prompts/zeroshot.json``). Keys starting with ``_`` are
    comments. Finding names must be canonical (:data:`~cxrfm.data.findings.FINDINGS`).
    """
    path = Path(path) if path is not None else PROMPTS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such prompts file; give a JSON file like {PROMPTS_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); see {PROMPTS_FILE} for the format") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{finding: {{\"positive\": [...], \"negative\": [...]}}}}")
    out: dict[str, dict[str, list[str]]] = {}
    for finding, entry in raw.items():
        if finding.startswith("_"):
            continue
        if finding not in FINDINGS:
            raise ConfigError(f"{path}: {finding!r} is not a canonical finding; use one of {', '.join(FINDINGS)}")
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), list) and entry[k] and all(isinstance(t, str) and t.strip() for t in entry[k])
            for k in ("positive", "negative"))
        if not ok:
            raise ConfigError(
                f"{path}: {finding!r} needs non-empty lists of sentences under \"positive\" and \"negative\", "
                f"e.g. {{\"positive\": [\"chest x-ray showing cardiomegaly.\"], \"negative\": [\"no cardiomegaly.\"]}}")
        out[finding] = {"positive": list(entry["positive"]), "negative": list(entry["negative"])}
    return out


@torch.inference_mode()
def build_zero_shot_classifier(
    model: DualEncoderLike, findings: Sequence[str], templates: Mapping[str, Mapping[str, Sequence[str]]],
    batch_size: int = 128,
) -> torch.Tensor:
    """(F, 2, D) float32: per finding the renormalised mean embedding of its positive (index 0) and
    negative (index 1) prompts."""
    missing = [f for f in findings if f not in templates]
    if missing:
        raise ConfigError(f"no prompts for {', '.join(missing)}; add them to the prompts file ({PROMPTS_FILE} format)")
    texts: list[str] = []
    spans: list[tuple[int, int]] = []
    for f in findings:
        for polarity in ("positive", "negative"):
            start = len(texts)
            texts.extend(templates[f][polarity])
            spans.append((start, len(texts)))
    emb = torch.from_numpy(embed_texts(model, texts, batch_size=batch_size))  # (T, D)
    means = torch.stack([emb[a:b].mean(dim=0) for a, b in spans])  # (2F, D)
    means = torch.nn.functional.normalize(means, dim=-1)
    return means.reshape(len(findings), 2, -1)  # (F, 2, D)


def zero_shot_scores(image_emb: np.ndarray | torch.Tensor, classifier: torch.Tensor, logit_scale: float = 100.0
                     ) -> np.ndarray:
    """(N, F) float64 probability of the positive prompt: softmax over (positive, negative) logits.

    ``logit_scale`` is CLIP's temperature multiplier (exp of the learned log-scale); it changes
    calibration only, never the AUROC (the score is monotone in pos - neg similarity).
    """
    x = torch.as_tensor(np.asarray(image_emb) if not isinstance(image_emb, torch.Tensor) else image_emb,
                        dtype=torch.float32)
    cls = classifier.to(torch.float32)
    logits = logit_scale * torch.einsum("nd,fkd->nfk", x, cls)  # (N, F, 2)
    return logits.softmax(dim=-1)[..., 0].double().numpy()  # (N, F)
