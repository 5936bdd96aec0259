"""DDP on CPU with gloo: a real 2-process ``torchrun -m cxrfm pretrain`` on 48 shared images, and the
gradient of the gathered contrastive loss against a single process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import spawn_and_join
import torch

from cxrfm.data.schema import Manifest
from cxrfm.run import RunDir
from cxrfm.train.curation import list_curators


def test_torchrun_two_ranks_train_and_curate_identically(cxr_manifest_path, tmp_path):
    from cxrfm.data.pseudo_reports import training_texts

    full = Manifest.load(cxr_manifest_path)
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    rows = np.sort(np.random.default_rng(1).choice(usable, size=48, replace=False))
    manifest = tmp_path / "data" / "manifest.csv"
    full.subset(rows).save(manifest)
    curate = "prototype" if "prototype" in list_curators() else "random"
    env = {**os.environ, "CXRFM_DEBUG_DIR": str(tmp_path / "debug"), "CXRFM_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "cxrfm", "pretrain",
           "--data", str(manifest), "--out", str(tmp_path / "run"), "--curate", curate, "--budget", "0.5",
           "--epochs", "3", "--set", "image_size=32", "--set", "batch_size=16", "--set", "log_every=1",
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # One run dir, written once (rank 0 only): every step logged exactly once.
    run = tmp_path / "run"
    assert {"config.json", "model.safetensors", "curation.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines if m["type"] == "step"]
    assert steps == sorted(set(steps)) and steps[0] == 1
    epochs = [m for m in lines if m["type"] == "epoch"]
    assert len(epochs) == 3 and all(np.isfinite(e["loss"]) for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    cur = json.loads((run / "curation.json").read_text())
    assert 0 < cur["data_fraction"] < 1 and len(cur["kept_ids"]) == cur["n_kept"]
    assert cur["passes"]["image_bwd"] < 3 * 48  # curated: fewer backward passes than all pairs x epochs

    # Both ranks hold the same curator state, kept rows, weights and counts.
    ranks = [json.loads((tmp_path / "debug" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    for key in ("kept_rows", "curator_state", "weights", "accounting", "step"):
        assert ranks[0][key] == ranks[1][key], key
    # The run says what it is once, from rank 0: finished, at the last step, with the weights' hash.
    status = RunDir(run).status(verify=True)
    assert status["finished"] is True and status["step"] == ranks[0]["step"] == status["total_steps"]
    assert status["weights_match"] is True


# ------------------------------------------------------------------ gathered loss == one process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from cxrfm.train.distributed import DistContext, gather_with_grad, shard, wrap_ddp
    from cxrfm.train.losses import clip_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world=world)
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    head = wrap_ddp(net, ctx)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)
    local = shard(np.arange(8), ctx)
    img = torch.nn.functional.normalize(head(x[local]), dim=1)
    txt = torch.nn.functional.normalize(y[local], dim=1)
    loss = clip_loss(gather_with_grad(img, ctx), gather_with_grad(txt, ctx), torch.tensor(5.0))
    loss.backward()
    from safetensors.torch import save_file

    save_file({"loss": loss.detach().reshape(1), "grad": net.weight.grad.clone()},
              str(Path(out_dir) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def test_gathered_loss_gradient_matches_single_process(tmp_path):
    from safetensors.torch import load_file

    from cxrfm.train.losses import clip_loss

    spawn_and_join(_worker, 2, (2, _free_port(), str(tmp_path)))
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)
    # The ranks see rows [0, 2, 4, 6] and [1, 3, 5, 7]; the loss is permutation-invariant.
    order = np.r_[0:8:2, 1:8:2]
    loss = clip_loss(torch.nn.functional.normalize(net(x[order]), dim=1),
                     torch.nn.functional.normalize(y[order], dim=1), torch.tensor(5.0))
    loss.backward()
    for r in (0, 1):
        got = load_file(str(tmp_path / f"rank{r}.safetensors"))
        assert torch.allclose(got["loss"], loss.detach().reshape(1), atol=1e-6)
        assert torch.allclose(got["grad"], net.weight.grad, atol=1e-6)


@pytest.fixture(autouse=True)
def _no_inherited_dist_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
