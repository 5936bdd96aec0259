"""``cxrfm pretrain --data SHARDS``: streamed pretraining with online curation, and an interrupted +
resumed run that trains on the same samples in the same order as an uninterrupted one."""
from __future__ import annotations

import json

import pytest

from cxrfm.cli import main
from cxrfm.data.schema import Manifest
from cxrfm.errors import ConfigError, RunDirError
from cxrfm.run import RunDir
from cxrfm.train.loop import pretrain
from tests.helpers import sampled_shards

TINY = {"image_size": 32, "train.batch_size": 8, "train.log_every": 1}


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return sampled_shards(shared_data, tmp_path_factory.mktemp("sp"), n=36, seed=2, size=40)


def test_cli_pretrain_streams_shards_with_online_curation(shards, tmp_path, one_torch_thread, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(shards), "--out", str(out), "--curate", "prototype", "--budget", "0.5",
            "--epochs", "2", "--shuffle-buffer", "5", "--no-progress"]
    args += [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    assert main(args) == 0
    run = RunDir(out)
    assert run.status()["finished"] is True
    cur = json.loads(run.curation.read_text())
    assert 0 < cur["data_fraction"] < 1 and cur["passes"]["select_image_fwd"] > 0  # selected per batch
    lines = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    epochs = [m for m in lines if m["type"] == "epoch"]
    assert len(epochs) == 2 and epochs[0]["kept"] < epochs[0]["seen"]
    assert json.loads(run.config.read_text())["run"]["shards"]  # the shard index is part of the identity
    # kept ids are the source manifest's row ids (its image paths), as a run on that manifest reports them
    assert set(cur["kept_ids"]) <= set(Manifest.load(shards.parent / "manifest.csv").ids)


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_equals_uninterrupted(shards, tmp_path, workers, one_torch_thread):
    kw = dict(curate="prototype", budget=0.5, epochs=2, overrides=TINY, progress=False,
              stream={"workers": workers, "shuffle_buffer": 5})
    pretrain(shards, tmp_path / "whole", **kw)
    pretrain(shards, tmp_path / "parts", max_steps=3, **kw)  # mid-epoch, mid-round for 2 workers
    assert RunDir(tmp_path / "parts").status()["finished"] is False
    pretrain(shards, tmp_path / "parts", resume=True, **kw)
    whole, parts = RunDir(tmp_path / "whole").status(), RunDir(tmp_path / "parts").status()
    assert parts["finished"] and parts["step"] == whole["step"]
    assert parts["weights_sha256"] == whole["weights_sha256"]
    a = json.loads(RunDir(tmp_path / "whole").curation.read_text())
    b = json.loads(RunDir(tmp_path / "parts").curation.read_text())
    assert a["kept_ids"] == b["kept_ids"] and a["passes"] == b["passes"]


def test_resume_with_other_stream_settings_is_refused(shards, tmp_path, one_torch_thread):
    kw = dict(curate="none", epochs=1, overrides=TINY, progress=False)
    pretrain(shards, tmp_path / "r", max_steps=1, stream={"shuffle_buffer": 5}, **kw)
    with pytest.raises(RunDirError, match="shuffle_buffer"):
        pretrain(shards, tmp_path / "r", resume=True, stream={"shuffle_buffer": 7}, **kw)


def test_stream_options_on_a_manifest_are_refused(shards, tmp_path):
    with pytest.raises(ConfigError, match="stream options"):
        pretrain(shards / "manifest.parquet", tmp_path / "x", stream={"workers": 2}, progress=False)
