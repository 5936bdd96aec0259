"""The ``evidence`` method of the report task: a structured draft per evaluation image whose every finding
carries its evidence trail, and the paired comparison with the retrieval baseline.

Per evaluation image, :class:`cxrfm.inference.evidence.EvidenceBuilder` (the same code ``analyze`` and
``/v1/analyze`` use) gathers, for each finding the fitted findings head states as present or
uncertain: the calibrated probability and the operating point, the Grad-CAM peak named by lung zone
from the anatomy model's lungs, the fired SAE concepts linked to the finding, the CTR measured from
the same masks (cardiac findings), and the 5 nearest *training* studies with the sentences that state
it (:func:`training_corpus`, the index the ``retrieval`` method copies from). A finding drafted present
without any support is written as possible (the no-evidence rule of :mod:`cxrfm.inference.evidence`);
``draft["text"]`` is what is scored.

The anatomy model is ``RUN/anatomy``, else ``$CXRFM_ANATOMY`` or the shipped folder; when none loads the
trail has no zones (a Grad-CAM peak that cannot be placed supports nothing) and ``anatomy`` in the
result says why. Concepts are the ``--concepts`` folder, else the run's own (``cxrfm concepts train``
or the ``concepts`` task), else none.

:func:`paired_f1_difference` is the paired patient bootstrap of micro-F1(A) - micro-F1(B): the same
resampled patients score both methods in every draw.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .suite import EvalContext

N_NEIGHBOURS = 5  # nearest training studies given to the trail per image
WORK_SIDE = 512  # evaluation images are decoded and shrunk to this longest side before the trail
NO_EVIDENCE_RULE = ("a finding the head puts at or above the 'likely' operating point is stated present only with "
                    "support (a Grad-CAM peak where the finding is seen, a linked concept, an enlarged CTR for a "
                    "cardiac finding, or >= 2 of the nearest training reports stating it); otherwise it is written "
                    "as possible and its trail says why")


def _train_embeddings(context: "EvalContext", split, rows: np.ndarray) -> np.ndarray:
    if not split.train_external:
        return context.image_embeddings(split.train_rows[rows])
    from .embed import embed_images, open_image_cache

    images = open_image_cache(split.train, int(context.model.image_size), cache_dir=context.cache_dir,
                              progress=context.progress)
    return embed_images(context.model, images, split.train_rows[rows], batch_size=context.batch_size,
                        progress=context.progress)


def training_corpus(context: "EvalContext", split) -> tuple[object, list[str], dict]:
    """(index over the training part's image embeddings, its reports, how it was built): what retrieval
    copies from and where the evidence trail finds its nearest training studies."""
    from ..data.pseudo_reports import template_report
    from ..data.reports import report_body
    from .embed import report_texts
    from .retrieval import build_index
    from .suite import TaskSkipped

    train = split.train
    texts = report_texts(train)
    bodies = [report_body(texts[i]) if texts[i] else "" for i in split.train_rows]
    cand = np.asarray([k for k, b in enumerate(bodies) if b.strip()], dtype=np.int64)
    if len(cand):
        corpus = [bodies[k] for k in cand]
        how = f"report text of {len(cand)} training rows"
    else:
        labels = train.labels()[split.train_rows]
        cand = np.flatnonzero(~np.isnan(labels).all(axis=1))
        if not len(cand):
            raise TaskSkipped("no training row has report text or labels to retrieve")
        rng = context.rng("report/pseudo")
        corpus = [template_report(labels[k], rng) for k in cand]
        how = f"template pseudo-reports of {len(cand)} labelled training rows (no training row has report text)"
    ids = [train.ids[i] for i in split.train_rows[cand]]
    index = build_index(_train_embeddings(context, split, cand), ids, corpus)
    return index, corpus, {"corpus": how, "n_candidates": int(len(cand))}


def load_trail_parts(context: "EvalContext") -> tuple[object | None, str, object | None, str]:
    """(anatomy or None, how / why not, concepts or None, how / why not) for ``context``'s run."""
    from ..inference.anatomy_outlines import load_served_anatomy
    from ..inference.concepts import load_concepts, run_concepts

    served = load_served_anatomy(context.run_dir)
    anatomy = served.anatomy
    anatomy_how = (f"{served.origin} anatomy folder '{served.folder}'" if anatomy is not None
                   else f"none: {served.note}")
    concepts, concepts_how = None, "none: the run has no concepts (`cxrfm concepts train`, or eval --tasks concepts)"
    try:
        if context.concepts is not None:
            concepts = load_concepts(context.concepts, context.run_dir)
            concepts_how = f"--concepts {context.concepts}"
        elif context.run_dir is not None:
            concepts = run_concepts(context.run_dir)
            if concepts is not None:
                concepts_how = "the run's concepts folder"
        else:
            concepts_how = "none: a model object without a run folder has no concepts"
    except Exception as e:  # noqa: BLE001 - ConceptsError or a folder of another version: the trail goes on
        concepts, concepts_how = None, f"none: the concepts could not be loaded ({type(e).__name__}: {str(e)[:200]})"
    return anatomy, anatomy_how, concepts, concepts_how


def _work_image(path) -> "object":
    """(1, H, W) in [0, 1], longest side at most WORK_SIDE."""
    import torch.nn.functional as F

    from ..data.images import read_image

    img = read_image(path)
    _, h, w = img.shape
    if max(h, w) > WORK_SIDE:
        s = WORK_SIDE / max(h, w)
        img = F.interpolate(img[None], size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return img


def _view(manifest, row: int) -> str | None:
    if "view" not in manifest.table.columns:
        return None
    v = manifest.table["view"].iloc[row]
    return str(v).strip() if isinstance(v, str) and v.strip() else None


def evidence_reports(context: "EvalContext", manifest, rows: np.ndarray, eval_emb: np.ndarray, head,
                     probs: np.ndarray, index=None, builder=None) -> tuple[list[str], list[list[dict]], dict]:
    """(draft texts, evidence entries per row, info) for the evaluation ``rows`` of ``manifest``.

    ``head`` is the fitted findings head and ``probs`` (M, F) its answer on ``eval_emb`` (M, D);
    ``index`` the retrieval corpus over the training part (neighbours; None: no neighbours); ``builder``
    replaces the EvidenceBuilder made from the run's anatomy and concepts (tests)."""
    from ..errors import ConfigError
    from ..inference.evidence import EvidenceBuilder
    from ..inference.report import DEFAULT_THRESHOLDS
    from .suite import TaskSkipped

    model = context.model
    if not (hasattr(model, "image_feature_maps") and hasattr(model, "encode_feature_maps")):
        raise TaskSkipped(f"the evidence trail needs Grad-CAM, i.e. a model with image_feature_maps and "
                          f"encode_feature_maps (a DualEncoder); {type(model).__name__} has neither")
    info: dict = {"thresholds": dict(DEFAULT_THRESHOLDS), "rule": NO_EVIDENCE_RULE}
    if builder is None:
        anatomy, info["anatomy"], concepts, info["concepts"] = load_trail_parts(context)
        builder = EvidenceBuilder(model, head, anatomy=anatomy, concepts=concepts, thresholds=DEFAULT_THRESHOLDS,
                                  anatomy_note=None if anatomy is not None else "no anatomy model is loaded")
    else:
        info["anatomy"] = "given builder" if builder.anatomy is not None else f"none: {builder.anatomy_note}"
        info["concepts"] = "given builder" if builder.concepts is not None else "none"
    neighbours: list[list[dict]] = [[] for _ in range(len(rows))]
    if index is not None and len(index):
        sims, nn = index.search(eval_emb, k=N_NEIGHBOURS)  # (M, k) each, best first
        neighbours = [[{"id": index.ids[j], "similarity": float(s), "report": index.reports[j]}
                       for s, j in zip(srow, jrow) if j >= 0] for srow, jrow in zip(sims, nn)]
    info["neighbours"] = (f"the {N_NEIGHBOURS} nearest training studies of the retrieval corpus" if index is not None
                          else "none: no retrieval corpus")
    findings = list(head.findings)
    paths = manifest.image_paths()
    texts, trails = [], []
    it = range(len(rows))
    if context.progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="report: evidence trails", unit="img")
    for k in it:
        r = int(rows[k])
        try:
            img = _work_image(paths[r])
            entries, draft = builder.draft(img, eval_emb[k], dict(zip(findings, map(float, probs[k]))),
                                           view=_view(manifest, r), neighbours=neighbours[k])
        except ConfigError as e:
            raise TaskSkipped(f"the evidence trail could not be built: {e}") from e
        texts.append(draft["text"])
        trails.append(entries)
    flat = [e for es in trails for e in es]
    info["counts"] = {"images": len(trails),
                      "drafted_present": sum(e["drafted"] == "present" for e in flat),
                      "stated_present": sum(e["status"] == "present" for e in flat),
                      "downgraded": sum(bool(e["downgraded"]) for e in flat),
                      "uncertain": sum(e["status"] == "uncertain" for e in flat),
                      "with_zone": sum(bool((e.get("region") or {}).get("zone")) for e in flat),
                      "with_concepts": sum(bool(e.get("concepts")) for e in flat),
                      "with_ctr": sum(bool(e.get("ctr")) for e in flat),
                      "with_neighbours": sum(bool(e.get("neighbours")) for e in flat)}
    return texts, trails, info


def _shorten(text: str | None, n: int = 700) -> str | None:
    """At most ``n`` characters, line breaks kept (the structured draft is read line by line)."""
    if text is None:
        return None
    text = "\n".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def make_examples(manifest, rows: np.ndarray, kinds: list[str], ref_texts: list[str | None],
                  generated: Mapping[str, list[str]], trails: list[list[dict]] | None, n: int) -> list[dict]:
    """The first ``n`` evaluation rows with reference text (else the first rows): reference, each method's
    draft and the evidence trail of its stated findings (report.html shows them side by side)."""
    show = [k for k, r in enumerate(ref_texts) if r][:n] or list(range(min(n, len(rows))))
    return [{"id": manifest.ids[rows[k]], "reference_kind": kinds[k], "reference": _shorten(ref_texts[k]),
             **{m: _shorten(generated[m][k], 1200 if m == "evidence" else 700) for m in generated},
             **({"evidence_trail": example_trail(trails[k])} if trails is not None else {})} for k in show]


def example_trail(entries: Sequence[Mapping]) -> list[dict]:
    """The stated (present / uncertain) findings of one image's trail, compact for results.json."""
    out = []
    for e in entries:
        if e.get("status") not in ("present", "uncertain") or e.get("finding") == "No Finding":
            continue
        region = e.get("region") or {}
        ctr = e.get("ctr") or {}
        out.append({"finding": e["finding"], "status": e["status"], "drafted": e.get("drafted"),
                    "probability": round(float(e["probability"]), 3), "head": e.get("head"),
                    "zone": region.get("zone"), "where": region.get("where"),
                    "region_note": (region.get("note") or "")[:120] or None,
                    "concepts": [f"#{c['feature']} {c['name']}" for c in e.get("concepts", [])],
                    "ctr": ctr.get("ratio"), "neighbours": len(e.get("neighbours") or []),
                    "supported": e.get("supported"), "downgraded": e.get("downgraded"), "trace": e.get("trace")})
    return out


# ---------------------------------------------------------------- the paired comparison
def _cell_counts(generated: np.ndarray, reference: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, 3) true positives, false positives, false negatives per row (labels already 1 / 0)."""
    return np.stack([((generated == 1) & (reference == 1) & known).sum(1),
                     ((generated == 1) & (reference == 0) & known).sum(1),
                     ((generated == 0) & (reference == 1) & known).sum(1)], axis=1).astype(np.float64)


def _micro(c: np.ndarray) -> np.ndarray:
    """Micro F1 from (..., 3) counts; NaN where undefined."""
    denom = 2 * c[..., 0] + c[..., 1] + c[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * c[..., 0] / np.maximum(denom, 1e-12), np.nan)


def paired_f1_difference(gen_a: np.ndarray, gen_b: np.ndarray, reference: np.ndarray, known: np.ndarray,
                         patient_ids: Sequence, rng: np.random.Generator, n_boot: int = 1000,
                         alpha: float = 0.05) -> dict:
    """micro-F1(A) - micro-F1(B) on binarised (N, F) labels, with a paired patient-bootstrap percentile CI.

    Each draw resamples patients with replacement and scores both methods on the same draw."""
    import pandas as pd

    ca = _cell_counts(gen_a, reference, known)
    cb = _cell_counts(gen_b, reference, known)
    fa, fb = float(_micro(ca.sum(0))), float(_micro(cb.sum(0)))
    out = {"a": None if np.isnan(fa) else fa, "b": None if np.isnan(fb) else fb,
           "difference": None if np.isnan(fa - fb) else fa - fb, "ci": None, "n_boot": int(n_boot)}
    inv, uniques = pd.factorize(pd.Series([str(p) for p in patient_ids]))
    g = len(uniques)
    if g < 2 or out["difference"] is None:
        return out
    pa, pb = np.zeros((g, 3)), np.zeros((g, 3))
    np.add.at(pa, inv, ca)
    np.add.at(pb, inv, cb)
    draws = rng.integers(0, g, size=(n_boot, g))
    w = np.stack([np.bincount(d, minlength=g) for d in draws]).astype(np.float64)  # (B, G)
    diff = _micro(w @ pa) - _micro(w @ pb)
    diff = diff[~np.isnan(diff)]
    if len(diff):
        lo, hi = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
        out["ci"] = [float(lo), float(hi)]
    return out


def evidence_vs_retrieval(labels: Mapping[str, np.ndarray], ref: np.ndarray, known: np.ndarray, pids: Sequence,
                          rng: np.random.Generator, n_boot: int, idx5: Sequence[int], goal: float = 0.05) -> dict:
    """The issue's comparison: evidence - retrieval in label micro-F1 (14 and 5 findings), paired CIs,
    and whether the difference reaches ``goal``. ``labels``: method -> its (N, 14) labels and ``ref`` the
    reference labels, all binarised (1 / 0: :func:`cxrfm.tasks.report.binarize_labels`)."""
    r, a, b = ref, labels["evidence"], labels["retrieval"]
    known = np.asarray(known, dtype=bool)
    d14 = paired_f1_difference(a, b, r, known, pids, rng, n_boot)
    d5 = paired_f1_difference(a[:, idx5], b[:, idx5], r[:, idx5], known[:, idx5], pids, rng, n_boot)
    diff = d14["difference"]
    return {"micro_14": d14, "micro_5": d5, "goal": goal,
            "meets_goal": bool(diff is not None and diff >= goal),
            "ci_above_zero": bool(d14["ci"] is not None and d14["ci"][0] > 0),
            "note": "evidence minus retrieval (copy the nearest training report), paired patient bootstrap; "
                    f"issue 14's goal is a difference >= {goal}"}
