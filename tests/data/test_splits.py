"""Patient-level splits on the real manifest: disjoint, stratified, deterministic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrfm.data.schema import Manifest, write_table
from cxrfm.data.splits import (check_patient_disjoint, parse_fractions, split_manifest_file, split_patients,
                               train_eval_split)
from cxrfm.errors import SplitError


@pytest.fixture(scope="module")
def manifest(cxr_manifest_path):
    return Manifest.load(cxr_manifest_path)


def test_no_patient_in_two_parts_and_every_source_in_every_part(manifest):
    parts = split_patients(manifest, seed=0)
    df = manifest.table.assign(split=parts)
    assert set(parts) == {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    check_patient_disjoint(df)
    per = pd.crosstab(df["source"], df["split"])
    assert (per > 0).all().all(), per
    # row shares close to the fractions (whole patients only)
    share = df["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.03)
    assert share["val"] == pytest.approx(0.1, abs=0.03)
    assert share["test"] == pytest.approx(0.2, abs=0.03)


def test_deterministic_by_seed(manifest):
    a = split_patients(manifest, seed=3)
    b = split_patients(manifest, seed=3)
    c = split_patients(manifest, seed=4)
    assert (a == b).all()
    assert (a != c).any()
    # order of rows does not matter: a shuffled table gives each patient the same part
    perm = np.random.default_rng(0).permutation(len(manifest))
    shuffled = manifest.subset(perm)
    d = split_patients(shuffled, seed=3)
    assert (d == a[perm]).all()


def test_check_patient_disjoint_names_patient_and_fix():
    df = pd.DataFrame({"patient_id": ["p1", "p1", "p2"], "split": ["train", "test", "train"]})
    with pytest.raises(SplitError, match=r"'p1'.*test, train.*cxrfm split"):
        check_patient_disjoint(df)


@pytest.mark.parametrize("bad", ["0.7,0.2", "a,b,c", "0.5", "0.8,-0.1,0.3", "0.7;0.1;0.2"])
def test_bad_fractions_raise(bad):
    with pytest.raises(SplitError):
        parse_fractions(bad)


def test_two_fractions_name_train_test(manifest):
    parts = split_patients(manifest.subset(range(300)), fractions=(0.8, 0.2))
    assert set(parts) == {"train", "test"}


def test_train_eval_split_is_patient_disjoint(manifest):
    train, evals = train_eval_split(manifest, eval_fraction=0.25, seed=1)
    assert len(train) + len(evals) == len(manifest)
    assert not set(train.table["patient_id"]) & set(evals.table["patient_id"])
    assert len(evals) / len(manifest) == pytest.approx(0.25, abs=0.03)
    with pytest.raises(SplitError):
        train_eval_split(manifest, eval_fraction=1.0)


def test_split_manifest_file_writes_split_column(manifest, cxr_manifest_path, tmp_path):
    text = split_manifest_file(cxr_manifest_path, tmp_path, fractions="0.7,0.1,0.2", seed=0)
    out = Manifest.load(tmp_path / "manifest.csv")
    assert len(out) == len(manifest)
    assert (out.table["split"].to_numpy() == split_patients(manifest, seed=0)).all()
    # paths were re-based onto the new folder and still point at the images
    assert out.image_paths()[0].resolve() == manifest.image_paths()[0].resolve()
    for part in ("train", "val", "test"):
        assert part in text
    # a file path as --out
    split_manifest_file(cxr_manifest_path, tmp_path / "x.csv", seed=0)
    assert (tmp_path / "x.csv").exists()


def test_existing_leaky_split_column_is_an_error(manifest, tmp_path):
    df = manifest.table.iloc[:50].copy()
    df["split"] = "train"
    pid = df["patient_id"].value_counts().index[0]
    rows = np.flatnonzero(df["patient_id"] == pid)
    if len(rows) < 2:  # make a patient with two rows
        df.loc[1, "patient_id"] = df.loc[0, "patient_id"]
        pid, rows = df.loc[0, "patient_id"], [0, 1]
    df.loc[rows[-1], "split"] = "test"
    write_table(df, tmp_path / "in.csv")  # images need not exist for a split
    with pytest.raises(SplitError, match=str(pid)):
        split_manifest_file(tmp_path / "in.csv", tmp_path / "out")


def test_small_source_still_in_every_part():
    df = pd.DataFrame({"image": [f"i{i}.png" for i in range(13)],
                       "patient_id": [f"a{i}" for i in range(10)] + ["b0", "b1", "b2"],
                       "source": ["big"] * 10 + ["small"] * 3})
    parts = split_patients(Manifest.from_table(df, "."), seed=0)
    assert set(parts[10:]) == {"train", "val", "test"}


def test_a_differing_existing_split_is_not_replaced_silently(cxr_manifest_path, tmp_path, capsys):
    from cxrfm.cli import main

    assert main(["split", str(cxr_manifest_path), "--out", str(tmp_path), "--seed", "0"]) == 0
    first = pd.read_csv(tmp_path / "manifest.csv")["split"].tolist()
    assert main(["split", str(tmp_path / "manifest.csv"), "--out", str(tmp_path), "--seed", "0"]) == 0  # same: fine
    assert main(["split", str(tmp_path / "manifest.csv"), "--out", str(tmp_path), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "already has a `split` column" in err and "--replace-split" in err
    assert pd.read_csv(tmp_path / "manifest.csv")["split"].tolist() == first
    assert main(["split", str(tmp_path / "manifest.csv"), "--out", str(tmp_path), "--seed", "1",
                 "--replace-split"]) == 0
    assert pd.read_csv(tmp_path / "manifest.csv")["split"].tolist() != first
