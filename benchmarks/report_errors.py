"""Validate the clinical-error metric (cxrfm.data.report_errors) on injected errors in real IU reports.

From each real IU X-ray report (../shared/data/text/iu_xray_reports.csv, findings + impression) this
makes candidates with one significant error of a known kind (swap left/right, negate a finding, drop
a finding's sentences, add a finding, change a severity word, add a comparison to a prior, add a
device), and meaning-preserving paraphrases (sentence order, synonyms). Then it reports, per kind, the
share of injected errors the metric finds (of that kind, and of any kind), the false-alarm rate on
paraphrases, and the speed.

The rules were developed looking only at the **validation** part (reports whose IU number is even);
the table to quote is the **test** part (odd numbers), printed separately::

    CXRFM_DATA=../shared/data .venv/bin/python benchmarks/report_errors.py [--limit N] [--seed 0]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

NOUNS = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Edema": "pulmonary edema",
         "Consolidation": "focal consolidation", "Pneumonia": "pneumonia", "Lung Opacity": "airspace opacity",
         "Lung Lesion": "pulmonary nodule", "Pneumothorax": "pneumothorax", "Pleural Effusion": "pleural effusion",
         "Fracture": "acute rib fracture", "Enlarged Cardiomediastinum": "widened mediastinum",
         "Pleural Other": "pleural thickening"}
SEVERITY_SWAP = {"small": "large", "large": "small", "mild": "severe", "mildly": "severely", "moderately": "mildly", "severely": "mildly", "minimal": "extensive",
                 "moderate": "minimal", "severe": "mild", "tiny": "large", "trace": "large", "marked": "mild",
                 "extensive": "minimal", "slight": "marked"}
SYNONYMS = [(r"\bThere is no evidence of\b", "There is no"), (r"\bThere are no\b", "No"), (r"\bThere is no\b", "No"),
            (r"\bare within normal limits\b", "are normal"), (r"\bis within normal limits\b", "is normal"),
            (r"\bNo acute cardiopulmonary abnormality\b", "No acute cardiopulmonary disease"),
            (r"\bThe lungs are clear\.", "Clear lungs."), (r"\bnormal in size\b", "normal size"),
            (r"\bpleural effusion\b", "pleural fluid collection"), (r"\bunremarkable\b", "normal")]
# a few wordings each, drawn per report, so the benchmark is not one template the rules could learn
COMPARISONS = ("Compared to the prior study, these findings are unchanged.", "Stable since the previous examination.",
               "There has been interval improvement.", "The opacity has increased since the prior radiograph.")
DEVICES = ("A right internal jugular central venous catheter is in place.", "Endotracheal tube tip is 4 cm above the carina.",
           "Left chest wall pacemaker with leads in the right ventricle.", "A nasogastric tube courses below the diaphragm.")


def load_reports(data: Path) -> pd.DataFrame:
    df = pd.read_csv(data / "text" / "iu_xray_reports.csv")
    text = [f"FINDINGS: {f if isinstance(f, str) else ''}\nIMPRESSION: {i if isinstance(i, str) else ''}"
            for f, i in zip(df["findings"], df["impression"])]
    num = df["uid"].str.extract(r"(\d+)")[0].astype(int)
    out = pd.DataFrame({"uid": df["uid"], "report": text, "part": np.where(num % 2 == 0, "validation", "test")})
    return out[[isinstance(f, str) or isinstance(i, str) for f, i in zip(df["findings"], df["impression"])]]


def _sentences_with(report: str, finding: str) -> tuple[list[str], list[int]]:
    """The report's sentences and the indices of those stating ``finding`` as present."""
    from cxrfm import label_reports
    from cxrfm.data.findings import CHEXPERT_14
    from cxrfm.data.reports import split_sentences

    sents = split_sentences(report.replace("FINDINGS:", "").replace("IMPRESSION:", ""))
    lab = label_reports(sents) if sents else np.zeros((0, 14))
    j = CHEXPERT_14.index(finding)
    return sents, [k for k in range(len(sents)) if lab[k, j] in (1.0, -1.0)]


def _append(report: str, sentence: str) -> str:
    """``sentence`` after the report's last sentence, which is closed first (IU impressions often end
    without a period, and a run-on would put the new sentence under the last one's negation)."""
    body = report.rstrip()
    return body + ("" if body.endswith((".", "!", "?")) else ".") + " " + sentence


def inject(report: str, facts, rng: np.random.Generator) -> dict[str, str]:
    """kind -> candidate with one injected error of that kind (kinds that do not apply are left out)."""
    from cxrfm.data.report_errors import _PATHOLOGIES

    out: dict[str, str] = {}
    present = [f for f in _PATHOLOGIES if facts.present(f)]
    sided = [f for f in present if facts.sides(f) & {"left", "right"}]
    if sided:
        def swap(m: re.Match) -> str:
            w = {"left": "right", "right": "left"}[m.group(1).lower()]
            return w.capitalize() if m.group(1)[0].isupper() else w

        out["wrong_location"] = re.sub(r"\b(left|right)\b", swap, report, flags=re.I)
    if present:
        f = present[int(rng.integers(len(present)))]
        sents, idx = _sentences_with(report, f)
        if idx:
            kept = [s for k, s in enumerate(sents) if k not in idx]
            out["missed_finding"] = " ".join(kept + [f"There is no {NOUNS[f]}."])  # negated
            out["missed_finding/drop"] = " ".join(kept)
    absent = [f for f in _PATHOLOGIES if not facts.present(f) and f in NOUNS]
    if absent:
        f = absent[int(rng.integers(len(absent)))]
        out["false_finding"] = _append(report, f"There is {NOUNS[f]}.")
    graded = [f for f in present if facts.grades.get(f)]
    if graded:
        words = "|".join(SEVERITY_SWAP)
        swapped = re.sub(rf"\b({words})\b", lambda m: SEVERITY_SWAP[m.group(1).lower()], report, count=0, flags=re.I)
        if swapped != report:
            out["wrong_severity"] = swapped
    if not facts.comparison:
        out["false_comparison"] = _append(report, COMPARISONS[int(rng.integers(len(COMPARISONS)))])
    if not facts.present("Support Devices"):
        out["device_error"] = _append(report, DEVICES[int(rng.integers(len(DEVICES)))])
    return out


def paraphrase(report: str, rng: np.random.Generator) -> dict[str, str]:
    from cxrfm.data.reports import split_sentences

    out = {}
    sents = split_sentences(report.replace("FINDINGS:", "").replace("IMPRESSION:", ""))
    if len(sents) > 1:
        out["reorder"] = " ".join(sents[k] for k in rng.permutation(len(sents)))
    syn = report
    for pat, rep in SYNONYMS:
        syn = re.sub(pat, rep, syn)
    if syn != report:
        out["synonyms"] = syn
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="reports per part (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=0, help="print this many misses per kind (validation part only)")
    args = ap.parse_args(argv)
    from cxrfm.data.report_errors import report_facts, score_reports
    from cxrfm import shared_data_dir

    data = shared_data_dir()
    if data is None:
        print("error: ../shared/data not found; set CXRFM_DATA", file=sys.stderr)
        return 2
    reports = load_reports(data)
    for part in ("validation", "test"):
        sub = reports[reports["part"] == part]
        if args.limit:
            sub = sub.head(args.limit)
        rng = np.random.default_rng(args.seed)
        facts = report_facts(list(sub["report"]))
        cands, refs, kinds = [], [], []
        for rep, fa in zip(sub["report"], facts):
            for kind, cand in {**inject(rep, fa, rng), **{f"para/{k}": v for k, v in paraphrase(rep, rng).items()}}.items():
                cands.append(cand)
                refs.append(rep)
                kinds.append(kind)
        t0 = time.perf_counter()
        scores = score_reports(cands, refs)
        dt = time.perf_counter() - t0
        found, anyerr, n = defaultdict(int), defaultdict(int), defaultdict(int)
        misses = defaultdict(list)
        for kind, s, c, r in zip(kinds, scores, cands, refs):
            n[kind] += 1
            expected = kind.split("/")[0]
            if kind.startswith("para/"):
                found[kind] += int(s["errors"] == 0)
                if s["errors"]:
                    misses[kind].append((r, c, s))
            else:
                found[kind] += int(s[expected] > 0)
                anyerr[kind] += int(s["errors"] > 0)
                if not s[expected]:
                    misses[kind].append((r, c, s))
        print(f"\n== {part} part: {len(sub)} reports, {len(cands)} scored pairs in {dt:.1f} s "
              f"({2 * len(cands) / dt:.0f} reports/s)")
        print(f"  {'injected kind':24s} {'n':>5s}  {'found (that kind)':>18s}  {'any error':>10s}")
        tot_f = tot_n = 0
        for kind in sorted(k for k in n if not k.startswith("para/")):
            tot_f, tot_n = tot_f + found[kind], tot_n + n[kind]
            print(f"  {kind:24s} {n[kind]:5d}  {found[kind] / n[kind]:18.3f}  {anyerr[kind] / n[kind]:10.3f}")
        print(f"  {'all injected':24s} {tot_n:5d}  {tot_f / max(1, tot_n):18.3f}")
        for kind in sorted(k for k in n if k.startswith("para/")):
            print(f"  {kind:24s} {n[kind]:5d}  false alarms {1 - found[kind] / n[kind]:.3f}")
        if part == "validation" and args.show:
            for kind, rows in misses.items():
                for r, c, s in rows[:args.show]:
                    print(f"\n-- miss {kind}: {s}\nREF: {r}\nCAND: {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
