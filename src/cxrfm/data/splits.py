"""Patient-level train / val / test splits.

Images of one patient are correlated (same anatomy, same devices, often the same day), so a split by
image leaks: a model can match a test image to its training twin. Every public CXR benchmark splits by
patient (Wang et al. CVPR 2017 for ChestX-ray14; Irvin et al. AAAI 2019 for CheXpert), and so does
this module. Patients are also stratified by source, so that each part sees every source (a part that
lacks a source would silently measure a different population).

The assignment is greedy by row count: within each source the patients are shuffled with a
``numpy.random.Generator`` seeded by ``seed`` and each goes to the part furthest below its target
share of rows. The first patients of a source go one to each part, so a source with at least as many
patients as parts is represented in every part.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import SplitError
from .schema import Manifest

DEFAULT_NAMES: tuple[str, ...] = ("train", "val", "test")


def parse_fractions(fractions: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.7,0.1,0.2"`` or a sequence -> a tuple of non-negative floats summing to 1."""
    if isinstance(fractions, str):
        try:
            values = tuple(float(x) for x in fractions.split(",") if x.strip())
        except ValueError:
            raise SplitError(
                f"fractions {fractions!r} do not parse; give comma-separated numbers like 0.7,0.1,0.2") from None
    else:
        values = tuple(float(x) for x in fractions)
    if len(values) < 2:
        raise SplitError(f"fractions {fractions!r}: need at least two parts, e.g. 0.8,0.2 or 0.7,0.1,0.2")
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise SplitError(f"fractions {fractions!r}: every fraction must be a number >= 0")
    if abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(f"fractions {fractions!r} sum to {sum(values):g}, not 1; e.g. 0.7,0.1,0.2")
    return values


def _names_for(n: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is not None:
        if len(names) != n:
            raise SplitError(f"{n} fractions but {len(names)} part names ({', '.join(names)}); give one name per part")
        if len(set(names)) != n:
            raise SplitError(f"part names {tuple(names)} repeat a name; give distinct names")
        return tuple(names)
    if n == 3:
        return DEFAULT_NAMES
    if n == 2:
        return ("train", "test")
    return tuple(f"part{i}" for i in range(n))


def _table(obj: Manifest | pd.DataFrame) -> pd.DataFrame:
    return obj.table if isinstance(obj, Manifest) else obj


def split_patients(
    manifest: Manifest | pd.DataFrame,
    fractions: str | Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    names: Sequence[str] | None = DEFAULT_NAMES,
    stratify_by: str | None = "source",
) -> np.ndarray:
    """One part name per row (``(N,)`` array of str): no patient in two parts, deterministic by ``seed``.

    ``fractions`` are shares of *rows* (images), met as closely as whole patients allow.
    ``stratify_by`` names a column (default ``source``) whose groups are split separately; ``None``
    splits all patients together. A patient whose rows span several groups goes with its most
    frequent group.
    """
    fr = parse_fractions(fractions)
    if names is DEFAULT_NAMES and len(fr) != 3:
        names = None
    part_names = _names_for(len(fr), names)
    df = _table(manifest)
    if "patient_id" not in df.columns:
        raise SplitError("the manifest has no patient_id column; a patient-level split needs one "
                         "(use the image path as patient_id only if every image is its own patient)")
    if stratify_by is not None and stratify_by not in df.columns:
        raise SplitError(f"cannot stratify by {stratify_by!r}: no such column; pass stratify_by=None "
                         f"or one of {', '.join(map(str, df.columns))}")
    patients = df["patient_id"].astype(str).to_numpy()
    groups = (df[stratify_by].astype(str).to_numpy() if stratify_by is not None
              else np.full(len(df), "", dtype=object))
    # patient -> (stratum, number of rows); stratum = the patient's most frequent group
    counts = pd.DataFrame({"p": patients, "g": groups}).value_counts(["p", "g"]).reset_index(name="n")
    counts = counts.sort_values(["p", "n", "g"], ascending=[True, False, True], kind="stable")
    stratum_of = counts.drop_duplicates("p").set_index("p")["g"]
    rows_of = pd.Series(patients).value_counts()

    rng = np.random.default_rng(seed)
    frac = np.asarray(fr, dtype=np.float64)
    order_of_first = np.argsort(-frac, kind="stable")  # seed the biggest parts first
    order_of_first = order_of_first[frac[order_of_first] > 0]
    part_of: dict[str, int] = {}
    for g in sorted(stratum_of.unique()):
        pats = np.array(sorted(stratum_of.index[stratum_of.to_numpy() == g]), dtype=object)
        pats = pats[rng.permutation(len(pats))]
        filled = np.zeros(len(fr))
        total = 0
        for k, p in enumerate(pats):
            n = int(rows_of[p])
            total += n
            if k < len(order_of_first):
                j = int(order_of_first[k])
            else:
                j = int(np.argmax(frac * total - filled - n * (frac == 0)))
            filled[j] += n
            part_of[p] = j
    idx = np.array([part_of[p] for p in patients], dtype=np.int64)
    return np.asarray(part_names, dtype=object)[idx].astype(str)


def check_patient_disjoint(table: Manifest | pd.DataFrame, column: str = "split") -> None:
    """Raise :class:`SplitError` if one patient has rows in two parts of ``column``."""
    df = _table(table)
    if column not in df.columns:
        raise SplitError(f"no {column!r} column to check; run `cxrfm split` to add one")
    sub = df[["patient_id", column]].dropna()
    parts = sub.groupby("patient_id")[column].nunique()
    bad = parts[parts > 1]
    if len(bad):
        p = bad.index[0]
        found = sorted(set(sub.loc[sub["patient_id"] == p, column].astype(str)))
        raise SplitError(
            f"patient {p!r} is in {len(found)} parts ({', '.join(found)}) of column {column!r}"
            f"{f' (and {len(bad) - 1} more patients)' if len(bad) > 1 else ''}; images of one patient must share "
            f"a part or the evaluation leaks. Move all of that patient's rows to one part, or re-split with "
            f"`cxrfm split MANIFEST --out DIR` (cxrfm.data.splits.split_patients)")


def train_eval_split(manifest: Manifest, eval_fraction: float = 0.25, seed: int = 0) -> tuple[Manifest, Manifest]:
    """A patient-disjoint (train, eval) pair of manifests, stratified by source."""
    if not 0 < eval_fraction < 1:
        raise SplitError(f"eval_fraction {eval_fraction!r} must be strictly between 0 and 1, e.g. 0.25")
    parts = split_patients(manifest, (1 - eval_fraction, eval_fraction), seed=seed, names=("train", "eval"))
    train = np.flatnonzero(parts == "train")
    evals = np.flatnonzero(parts == "eval")
    if len(train) == 0 or len(evals) == 0:
        raise SplitError(f"{len(manifest)} rows of {manifest.table['patient_id'].nunique()} patient(s) cannot make a "
                         f"train/eval pair; at least two patients are needed")
    return manifest.subset(train), manifest.subset(evals)


def describe_split(table: pd.DataFrame, column: str = "split") -> str:
    """Per part: rows, patients and rows per source."""
    lines = [f"{'part':<8} {'rows':>6} {'patients':>9}  sources (rows)"]
    order = [p for p in (*DEFAULT_NAMES, "eval") if p in set(table[column])]
    order += sorted(set(table[column]) - set(order))
    for part in order:
        sub = table[table[column] == part]
        srcs = sub["source"].value_counts().sort_index()
        src_text = ", ".join(f"{s} {n}" for s, n in srcs.items())
        lines.append(f"{part:<8} {len(sub):>6} {sub['patient_id'].nunique():>9}  {src_text}")
    lines.append(f"{'total':<8} {len(table):>6} {table['patient_id'].nunique():>9}  "
                 f"{table['source'].nunique()} source(s); no patient is in two parts")
    return "\n".join(lines)


def split_manifest_file(path: str | Path, out: str | Path, fractions: str | Sequence[float] = "0.7,0.1,0.2",
                        seed: int = 0, replace: bool = False) -> str:
    """Write the manifest at ``path`` with a ``split`` column to ``out`` (a folder -> ``out/manifest.csv``,
    or a .csv/.parquet path) and return a per-part summary.

    An existing ``split`` column is checked first: one that puts a patient in two parts is an error
    (it would mean earlier results leaked). One that differs from the new assignment is an error
    unless ``replace``: results made with the old split would silently stop matching the data.
    """
    path = Path(path)
    manifest = Manifest.load(path)
    parts = split_patients(manifest, fractions, seed=seed)
    if "split" in manifest.table.columns:
        check_patient_disjoint(manifest.table, "split")
        old = manifest.table["split"].astype(str).str.strip().str.lower().to_numpy()
        moved = int((old != np.asarray(parts)).sum())
        if moved and not replace:
            raise SplitError(
                f"{path}: already has a `split` column and seed {seed} with fractions {fractions} would move "
                f"{moved} of {len(parts)} rows to another part; keep the existing split (results made with "
                f"it stay valid), or pass --replace-split to replace it")
    manifest.table["split"] = parts
    check_patient_disjoint(manifest.table)
    out = Path(out)
    target = out if out.suffix.lower() in {".csv", ".parquet", ".pq"} else out / "manifest.csv"
    manifest.save(target)
    return f"wrote {target} (seed {seed}, fractions {fractions})\n" + describe_split(manifest.table)
