"""Tar shards (``cxrfm shard``): the WebDataset layout, the index, bad input, and the streaming order
(disjoint shards per rank and worker, seeded shuffle, exact-sample resume)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch

from cxrfm.cli import main
from cxrfm.data.schema import Manifest
from cxrfm.data.shards import ShardError, ShardSet, sample_key, write_shards
from cxrfm.train.shard_stream import (ShardStream, epoch_length, rank_shards, round_robin, shuffle_buffer,
                                      skip_counts, stream_loader)


@pytest.fixture(scope="module")
def small_manifest(shared_data, tmp_path_factory):
    """22 real rows that all have a training text (22 = 5 shards of 5 + a short one of ... see per_shard)."""
    from cxrfm.data.pseudo_reports import training_texts

    full = Manifest.load(shared_data / "cxr" / "manifest.csv")
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    rows = np.sort(np.random.default_rng(3).choice(usable, size=22, replace=False))
    path = tmp_path_factory.mktemp("m") / "manifest.csv"
    full.subset(rows).save(path)
    return path


@pytest.fixture(scope="module")
def shards(small_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "shards"
    assert main(["shard", str(small_manifest), "--out", str(out), "--size", "32", "--per-shard", "5",
                 "--no-progress"]) == 0
    return out


def _copy(shards, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(shards, dst)
    return dst


def test_shard_writes_webdataset_layout_and_index(shards, small_manifest):
    index = json.loads((shards / "index.json").read_text())
    assert index["n_samples"] == 22 and index["size"] == 32
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 5, 2]
    assert [s["first_row"] for s in index["shards"]] == [0, 5, 10, 15, 20]
    with tarfile.open(shards / index["shards"][1]["name"]) as tar:
        names = tar.getnames()
        assert names[:2] == [f"{sample_key(5)}.png", f"{sample_key(5)}.json"]  # a sample's files are adjacent
        rec = json.loads(tar.extractfile(names[1]).read())
        from PIL import Image

        im = Image.open(io.BytesIO(tar.extractfile(names[0]).read()))
        assert im.mode == "L" and im.size == (32, 32)
    src = Manifest.load(small_manifest)
    assert rec["row"] == 5 and rec["id"] == src.ids[5] and rec["patient_id"] == str(src.table["patient_id"][5])
    opened = ShardSet.open(shards)
    opened.verify()
    m = opened.manifest()
    assert len(m) == 22 and m.ids == src.ids  # rows in shard order, the source ids kept
    # random access (a curator's embed) returns the same bytes as the sequential read
    seq = {row: data for row, data, _ in opened.iter_raw(3)}
    assert opened.read_rows([17, 16]) == [(seq[17], ".png"), (seq[16], ".png")]
    assert [d for d, _ in opened.read_rows([21, 2, 16])] == [d for r in (21, 2, 16) for row, d, _ in
                                                              opened.iter_raw(int(opened.shard_of([r])[0])) if row == r]


def test_same_manifest_same_shard_bytes(small_manifest, shards, tmp_path):
    again = write_shards(small_manifest, tmp_path / "again", size=32, per_shard=5)
    a = json.loads((shards / "index.json").read_text())["shards"]
    b = json.loads((again / "index.json").read_text())["shards"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_refuses_to_overwrite(shards, small_manifest, capsys):
    assert main(["shard", str(small_manifest), "--out", str(shards), "--no-progress"]) == 2
    assert "already holds shards" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input
def test_shard_not_in_index_is_an_error(shards, tmp_path):
    d = _copy(shards, tmp_path)
    shutil.copy(d / "shard-000000.tar", d / "shard-000099.tar")
    with pytest.raises(ShardError, match=r"shard-000099\.tar: a shard not listed in index\.json"):
        ShardSet.open(d)


def test_indexed_shard_missing_is_an_error(shards, tmp_path):
    d = _copy(shards, tmp_path)
    (d / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000002\.tar: listed in index\.json but missing"):
        ShardSet.open(d)


def test_truncated_tar_is_an_error_at_open_and_when_read(shards, tmp_path):
    d = _copy(shards, tmp_path)
    path = d / "shard-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ShardError, match=r"shard-000001\.tar: \d+ bytes, but index\.json says"):
        ShardSet.open(d)
    # with the index edited to match (a copy tool that rewrote it), reading still names the shard
    index = json.loads((d / "index.json").read_text())
    index["shards"][1]["bytes"] = len(data) // 2
    (d / "index.json").write_text(json.dumps(index))
    opened = ShardSet.open(d)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: (cannot be read as a tar|holds \d+ samples)"):
        list(opened.iter_raw(1))
    with pytest.raises(ShardError, match="sha256"):
        opened.verify()


def test_sample_without_json_is_an_error(shards, tmp_path):
    d = _copy(shards, tmp_path)
    path = d / "shard-000000.tar"
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name != f"{sample_key(2)}.json":
                tar.addfile(m, io.BytesIO(data))
    index = json.loads((d / "index.json").read_text())
    index["shards"][0]["bytes"] = path.stat().st_size
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=rf"sample {sample_key(2)} has no \.json"):
        list(ShardSet.open(d).iter_raw(0))


def test_more_ranks_than_shards_is_an_error(shards):
    opened = ShardSet.open(shards)
    with pytest.raises(ShardError, match="5 shard\\(s\\) for 6 ranks"):
        epoch_length(opened, 0, 0, 6, 1, np.ones(22, dtype=bool))


# ------------------------------------------------------------------ the streaming order
def _rows(stream) -> list[int]:
    return [int(r) for r, _ in stream_loader(stream)]


def test_ranks_and_workers_read_disjoint_shards_covering_the_epoch(shards):
    opened = ShardSet.open(shards)
    wanted = np.ones(22, dtype=bool)
    wanted[[3, 11]] = False  # e.g. rows curation left out: read past, never returned
    seen = []
    for rank in range(2):
        s = ShardStream(opened, wanted, seed=7, epoch=1, rank=rank, world=2, workers=2, buffer=3, image_size=16)
        mine = [int(r) for r, _ in iter(s)]
        assert set(opened.shard_of(mine)) == set(rank_shards(5, 7, 1, rank, 2))  # its own shards only
        seen.append(mine)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [r for r in range(22) if wanted[r]]
    # 5 shards on 2 ranks: every rank streams the smaller rank's count (documented), and shapes are right
    assert epoch_length(opened, 7, 1, 2, 2, wanted) == min(len(seen[0]), len(seen[1]))
    row, x = next(iter(ShardStream(opened, wanted, seed=7, epoch=1, rank=0, world=2, workers=2, buffer=3,
                                   image_size=16)))
    assert x.shape == (1, 16, 16) and x.dtype == torch.uint8


def test_seeded_shuffle_differs_by_epoch_and_repeats_by_seed(shards):
    opened = ShardSet.open(shards)
    wanted = np.ones(22, dtype=bool)

    def order(seed, epoch):
        return [int(r) for r, _ in iter(ShardStream(opened, wanted, seed=seed, epoch=epoch, rank=0, world=1,
                                                    workers=1, buffer=4, image_size=8))]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and sorted(order(0, 0)) == sorted(order(0, 1)) == list(range(22))


def test_worker_processes_give_the_in_process_order(shards, one_torch_thread):
    opened = ShardSet.open(shards)
    wanted = np.ones(22, dtype=bool)
    kw = dict(seed=1, epoch=0, rank=0, world=1, workers=2, buffer=3, image_size=8)
    in_process = [int(r) for r, _ in iter(ShardStream(opened, wanted, **kw))]
    with_workers = _rows(ShardStream(opened, wanted, **kw))  # DataLoader, 2 worker processes
    assert with_workers == in_process


@pytest.mark.parametrize("workers", [1, 3])
def test_resume_continues_from_the_exact_sample(shards, workers, one_torch_thread):
    opened = ShardSet.open(shards)
    wanted = np.ones(22, dtype=bool)
    wanted[[0, 9]] = False
    kw = dict(seed=5, epoch=2, rank=0, world=1, workers=workers, buffer=4, image_size=8)
    full = [int(r) for r, _ in iter(ShardStream(opened, wanted, **kw))]
    for k in range(len(full) + 1):
        resumed = [int(r) for r, _ in iter(ShardStream(opened, wanted, start=k, **kw))]
        assert full[:k] + resumed == full, k
    if workers > 1:  # the same through DataLoader worker processes
        assert full[:7] + _rows(ShardStream(opened, wanted, start=7, **kw)) == full


def test_skip_counts_match_round_robin():
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = list(rng.integers(0, 6, size=int(rng.integers(1, 5))))
        tags = list(round_robin([iter([w] * c) for w, c in enumerate(counts)]))
        for k in range(len(tags) + 1):
            assert skip_counts(counts, k) == [tags[:k].count(w) for w in range(len(counts))]


def test_shuffle_buffer_is_a_permutation():
    out = list(shuffle_buffer(iter(range(30)), 4, np.random.default_rng(0)))
    assert sorted(out) == list(range(30)) and out != list(range(30))


def test_unreadable_source_image_names_the_row(small_manifest, tmp_path, capsys):
    m = Manifest.load(small_manifest)
    m.table.loc[3, "image"] = "images/no_such_file.png"
    m.save(tmp_path / "bad.csv")
    assert main(["shard", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no_such_file.png" in err and "row 5" in err and "cxrfm shard" in err
    assert not (tmp_path / "out" / "index.json").exists()  # no index: the folder is not a shard set
