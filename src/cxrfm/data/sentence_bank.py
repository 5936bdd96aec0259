"""The ``sentences`` style of pseudo-reports: real IU X-ray sentences indexed by what they state.

The 3,955 IU X-ray / Open-i reports (Demner-Fushman et al., JAMIA 2016) are split into sentences and
each is labeled once by :mod:`cxrfm.data.labeler`; a row's report is then assembled from sentences
whose every statement matches the row (:func:`real_sentence_report`), with the templates of
:mod:`cxrfm.data.report_templates` for what IU never says.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ReportError
from .findings import CHEXPERT_14, FINDING_INDEX
from .report_templates import (BANK_VERSION, _NOT_PLAINLY_POSITIVE, _PART_NORMAL, _PNA_TYPES, _WHOLE_STUDY_NORMAL,
                             _assemble, _check_row, _impression_line, _negative_sentences, _positive_sentences)


def _iu_reports_path() -> Path | None:
    from ..paths import shared_data_dir

    d = shared_data_dir()
    p = d / "text" / "iu_xray_reports.csv" if d is not None else None
    return p if p is not None and p.is_file() else None


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _labeler_hash() -> str:
    """The labeler's code and vocabulary: a change to either re-labels the bank."""
    from . import labeler, labeler_terms

    h = hashlib.sha256()
    for module in (labeler, labeler_terms):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class SentenceBank:
    """Real report sentences indexed by what the labeler says each one states.

    ``statements[i]`` maps canonical finding -> 1 / 0 for sentence ``sentences[i]``. Only sentences that
    state exactly one positive finding (and nothing else), or only negations, are kept; a sentence is
    used for a row only when every statement in it matches the row.
    """

    sentences: list[str]
    statements: list[dict[str, float]]
    source: str = ""
    positive: dict[str, list[int]] = field(default_factory=dict, repr=False)
    negative: list[int] = field(default_factory=list, repr=False)
    normal: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for i, st in enumerate(self.statements):
            pos = [f for f, v in st.items() if v == 1]
            if pos == ["No Finding"]:
                # only whole-study normal statements ("No acute cardiopulmonary process"), not
                # "No acute bony abnormality", stand in for the normal line
                if _WHOLE_STUDY_NORMAL.search(self.sentences[i]) and not _PART_NORMAL.search(self.sentences[i]):
                    self.normal.append(i)
            elif len(pos) == 1:
                self.positive.setdefault(pos[0], []).append(i)
            elif not pos:
                self.negative.append(i)

    def __len__(self) -> int:
        return len(self.sentences)

    @classmethod
    def build(cls, reports_csv: str | Path | None = None, cache_dir: str | Path | None = None,
              progress: bool = False) -> "SentenceBank":
        """Label the sentences of the IU reports once; later calls read the cached JSON (keyed by the
        CSV's hash and the labeler's source)."""
        import pandas as pd

        from .labeler import label_sentence_findings
        from .reports import split_sentences

        path = Path(reports_csv) if reports_csv is not None else _iu_reports_path()
        if path is None or not path.is_file():
            raise ReportError(f"{path or 'iu_xray_reports.csv'}: not found; the sentence style reads the IU X-ray "
                              f"reports from $CXRFM_DATA/text/iu_xray_reports.csv (use style='template' without it)")
        if cache_dir is None:
            from ..paths import cache_dir as default_cache

            cache_dir = default_cache()
        key = f"{_file_hash(path)}-{_labeler_hash()}-v{BANK_VERSION}"
        cache = Path(cache_dir) / f"sentence_bank-{key}.json"
        if cache.is_file():
            data = json.loads(cache.read_text(encoding="utf-8"))
            return cls(data["sentences"], data["statements"], source=str(path))
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        seen: dict[str, None] = {}
        for col in ("findings", "impression"):
            for text in df.get(col, []):
                for s in split_sentences(text):
                    # de-identification ("XXXX") and comparisons to priors read badly out of context
                    if "XXXX" in s or len(s.split()) < 2 or len(s) > 160:
                        continue
                    seen.setdefault(s, None)
        sentences, statements = [], []
        items = list(seen)
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="labelling IU sentences", unit="sentence")
        for s in items:
            out = label_sentence_findings(s)
            st = {f: float(v) for f, v in out.items() if v is not None and v == v}
            if any(v == -1 for v in st.values()) or _states_other_abnormality(s):
                continue
            pos = [f for f, v in st.items() if v == 1]
            rest = {f for f in st if f not in pos}
            if pos == ["No Finding"] and all(st[f] == 0 for f in rest):
                keep = True  # "No acute cardiopulmonary abnormality" (+ negations)
            elif len(pos) == 1:
                # exactly one finding; the labeler's implied "No Finding = 0" is the only other statement
                keep = rest <= {"No Finding"} and not _NOT_PLAINLY_POSITIVE.search(s)
            else:
                keep = not pos and bool(st) and "No Finding" not in st
            if keep:
                sentences.append(s)
                statements.append(st)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"source": str(path), "sentences": sentences, "statements": statements}),
                       encoding="utf-8")
        tmp.replace(cache)
        return cls(sentences, statements, source=str(path))

    def consistent(self, i: int, row: np.ndarray) -> bool:
        """Every statement of sentence ``i`` matches the row (a NaN finding must not be mentioned)."""
        return all(row[FINDING_INDEX[f]] == v for f, v in self.statements[i].items())


def _states_other_abnormality(sentence: str) -> bool:
    """Whether the labeler sees an abnormality outside the canonical findings (granuloma, scoliosis...).

    Such a sentence ("Cardiomegaly and a calcified granuloma.") would describe something the row's labels
    do not, so the bank leaves it out. Uses the labeler's mention pass; without it nothing is filtered.
    """
    from . import labeler

    if not (hasattr(labeler, "_doc_mentions") and hasattr(labeler, "build_pipeline")):
        return False
    nlp = labeler.build_pipeline()
    _, other, _ = labeler._doc_mentions(nlp(sentence), nlp)
    return any(v in (1.0, -1.0) for v in other)


def real_sentence_report(labels_row: np.ndarray, rng: np.random.Generator, bank: SentenceBank) -> str:
    """A report of real IU sentences stating exactly the row's positives and negatives.

    Each positive gets one sentence whose labeler output is that finding alone; negatives are covered
    greedily by negation-only sentences whose negations are all known negatives of the row; what no
    sentence covers (pneumonia sub-types, findings IU rarely negates) falls back to templates.
    """
    row = _check_row(labels_row)
    if np.isnan(row).all():
        raise ReportError("a labels row with no known finding has no pseudo-report; drop the row or label it")
    normal = bool(row[FINDING_INDEX["No Finding"]] == 1)
    positives: list[str] = []
    templated: set[str] = set()
    for f in CHEXPERT_14[1:]:
        if row[FINDING_INDEX[f]] != 1:
            continue
        # IU never names pneumonia sub-types: a typed pneumonia is stated by a template
        subtyped = f == "Pneumonia" and any(row[FINDING_INDEX[t]] == 1 for t in _PNA_TYPES)
        cand = [i for i in bank.positive.get(f, []) if bank.consistent(i, row)] if not subtyped else []
        if cand:
            positives.append(bank.sentences[cand[int(rng.integers(len(cand)))]])
        else:
            templated.add(f)
    positives += _positive_sentences(row, rng, skip=set(CHEXPERT_14[1:]) - templated)
    negatives = [f for f in CHEXPERT_14[1:] if row[FINDING_INDEX[f]] == 0]
    if normal and rng.random() < 0.5:
        keep = int(rng.integers(0, min(4, len(negatives)) + 1))
        negatives = [negatives[i] for i in rng.permutation(len(negatives))[:keep]]
    uncovered = set(negatives)
    neg_sentences: list[str] = []
    order = rng.permutation(len(bank.negative)) if uncovered else []
    for j in order:
        i = bank.negative[int(j)]
        st = bank.statements[i]
        if not uncovered:
            break
        if set(st) & uncovered and bank.consistent(i, row) and set(st) <= set(negatives):
            neg_sentences.append(bank.sentences[i])
            uncovered -= set(st)
    left = [f for f in negatives if f in uncovered]
    left += [t for t in _PNA_TYPES if row[FINDING_INDEX[t]] == 0]
    neg_sentences += _negative_sentences(left, rng)
    if normal and bank.normal and rng.random() < 0.5:
        cand = [i for i in bank.normal if bank.consistent(i, row)]
        if cand:
            neg_sentences.append(bank.sentences[cand[int(rng.integers(len(cand)))]])
            normal = False  # the real sentence already says it
    return _assemble(positives, neg_sentences, normal, rng, _impression_line(row, rng))
