"""The evaluation prompts are held out from every sentence the pseudo-report generator can emit.

Zero-shot on label-only data is only zero-shot when the prompts are not the training texts: the
pseudo-reports (:mod:`cxrfm.data.pseudo_reports`; templates in :mod:`cxrfm.data.report_templates`) are
what a label-only row is trained against, so a prompt equal to one of their sentences measures
template matching. This module enumerates what the
generator can say (fixed phrasings, the "No A, B or C." lists, the impression lines, and the real IU
sentences of the ``sentences`` style), checks the enumeration against thousands of generated reports,
then checks the bundled prompts against it: no prompt (or sentence of one) equals a generated sentence
after normalising case, spaces and punctuation, and none contains a generated sentence of three words
or more. The template-matched prompt set is checked the other way: every one of its prompts *is* a
generated sentence, so its name is true.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from cxrfm.data import report_templates as pr  # the template style's phrasings (pseudo_reports uses them)
from cxrfm.data.findings import FINDINGS
from cxrfm.data.reports import split_sentences
from cxrfm.inference.zero_shot import TEMPLATE_PROMPTS_FILE, load_prompts

# containment is checked for generated sentences this long or longer: a one- or two-word sentence
# ("Pneumonia.", "Pleural effusion.") is the finding's own name, which a prompt has to say
MIN_CONTAINED_WORDS = 3


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _alt(words) -> str:
    return "(?:" + "|".join(re.escape(normalise(w)) for w in sorted(set(words), key=len, reverse=True)) + ")"


def fixed_sentences() -> set[str]:
    """Every fixed sentence of the template generator, normalised."""
    out = set()
    for pos, neg, _ in pr.PHRASES.values():
        out.update(pos)
        out.update(neg)
    out.update(pr.NORMAL_PHRASES)
    for group in (pr._PNA_TYPES, pr._PNA_TYPE_NEG):
        for phrases in group.values():
            out.update(phrases)
    return {normalise(s) for s in out}


def pattern_families() -> list[re.Pattern]:
    """The combinatorial sentences, on normalised text: "No A, B, or C." lists and impression lines."""
    nouns = _alt(n for _, _, n in pr.PHRASES.values())
    names = _alt(pr.IMPRESSION_NAMES.values())
    negative_list = rf"(?:no|there is no|no evidence of) {nouns}(?:(?: {nouns})* or {nouns})?"
    impression = rf"{names}(?:(?: {names})* and {names})?"
    return [re.compile(negative_list), re.compile(impression)]


def iu_sentences(shared_data) -> set[str]:
    """The sentences the ``sentences`` style draws from (a superset of its bank), normalised."""
    import pandas as pd

    path = shared_data / "text" / "iu_xray_reports.csv"
    if not path.is_file():
        pytest.skip(f"{path}: not found (the IU reports the sentence bank is built from)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = set()
    for col in ("findings", "impression"):
        for text in df[col]:
            out.update(normalise(s) for s in split_sentences(text) if "XXXX" not in s and len(s.split()) >= 2)
    return out


def is_generated(sentence: str, fixed: set[str], patterns: list[re.Pattern]) -> bool:
    s = normalise(sentence)
    return s in fixed or any(p.fullmatch(s) for p in patterns)


def overlap(prompt: str, fixed: set[str], patterns: list[re.Pattern], iu: set[str]) -> str | None:
    """Why ``prompt`` is not held out (the generated sentence it equals or contains), or None."""
    p = normalise(prompt)
    for s in [prompt, *split_sentences(prompt)]:
        n = normalise(s)
        if n in fixed or n in iu or any(pat.fullmatch(n) for pat in patterns):
            return f"equals a generated sentence: {n!r}"
    for g in fixed:
        if len(g.split()) >= MIN_CONTAINED_WORDS and re.search(rf"\b{re.escape(g)}\b", p):
            return f"contains the generated sentence {g!r}"
    for pat in patterns:
        for m in re.finditer(rf"\b{pat.pattern}\b", p):
            if len(m.group(0).split()) >= MIN_CONTAINED_WORDS:
                return f"contains the generated sentence {m.group(0)!r}"
    return None


@pytest.fixture(scope="module")
def generator():
    return fixed_sentences(), pattern_families()


def _report_sentences(text: str) -> list[str]:
    text = text.replace("FINDINGS:", " ").replace("IMPRESSION:", " ")
    return split_sentences(text)


def test_the_enumeration_covers_what_the_generator_writes(generator):
    """Thousands of template reports of random label rows: every sentence is in the enumeration."""
    fixed, patterns = generator
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(3000):
        row = rng.choice([1.0, 0.0, np.nan], size=len(FINDINGS), p=[0.15, 0.45, 0.40]).astype(np.float32)
        if np.isnan(row).all():
            continue
        for s in _report_sentences(pr.template_report(row, rng)):
            assert is_generated(s, fixed, patterns), f"generated but not enumerated: {s!r}"
            seen += 1
    assert seen > 10000


def test_the_check_catches_template_prompts_and_passes_other_wording(generator):
    fixed, patterns = generator
    assert overlap("There is pneumonia.", fixed, patterns, set())
    assert overlap("no pleural effusion, pneumothorax, or focal consolidation", fixed, patterns, set())
    assert overlap("Cardiomegaly and pleural effusion.", fixed, patterns, set())
    assert overlap("Small effusion. There is no pneumothorax on this film.", fixed, patterns, set())
    assert overlap("The lungs are clear.", fixed, patterns, {"the lungs are clear"})
    assert overlap("Blunting of the costophrenic angles.", fixed, patterns, set()) is None


def test_bundled_prompts_are_held_out_from_the_generator(generator, shared_data):
    fixed, patterns = generator
    iu = iu_sentences(shared_data)
    prompts = load_prompts()
    assert set(prompts) == set(FINDINGS)
    bad = {}
    for finding, entry in prompts.items():
        assert len(entry["positive"]) >= 3 and len(entry["negative"]) >= 3, finding
        for text in entry["positive"] + entry["negative"]:
            why = overlap(text, fixed, patterns, iu)
            if why:
                bad[f"{finding}: {text}"] = why
    assert not bad, bad


def test_template_matched_prompts_are_generator_sentences(generator):
    fixed, patterns = generator
    prompts = load_prompts(TEMPLATE_PROMPTS_FILE)
    assert set(prompts) == set(FINDINGS)
    for finding, entry in prompts.items():
        for text in entry["positive"] + entry["negative"]:
            assert is_generated(text, fixed, patterns), f"{finding}: {text!r} is not a generator sentence"
