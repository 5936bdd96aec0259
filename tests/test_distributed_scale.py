"""Distributed training at scale, on CPU with gloo: the per-rank (local) contrastive loss with gradients
through the all-gather equals the single-process loss's gradient; ranks that read different shard
indexes stop; ``torchrun`` pretraining on streamed shards, on one node and on two simulated nodes
(two torchrun groups over loopback with the c10d rendezvous); FSDP2 against DDP, with a resume."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import sampled_shards, spawn_and_join
import torch

from cxrfm.run import RunDir

COUNTS = [3, 5]  # uneven: curation keeps different numbers of pairs on each rank
PAIR_IDS = torch.tensor([0, 1, 2, 0, 3, 4, 2, 5])  # rows 0/3 and 2/6 share a text (multi-positive)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)


def _global(kind: str):
    """Loss and gradient of one process over all 8 pairs."""
    from cxrfm.train.losses import contrastive_loss

    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    x, y = _data()
    img = torch.nn.functional.normalize(net(x), dim=1)
    txt = torch.nn.functional.normalize(y, dim=1)
    loss = contrastive_loss(kind, img, txt, torch.tensor(5.0), torch.tensor(-2.0), pair_ids=PAIR_IDS)
    loss.backward()
    return loss.detach(), net.weight.grad.clone()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from cxrfm.errors import ConfigError
    from cxrfm.train.distributed import DistContext, agree, gather_with_grad, mean_over_ranks, wrap_ddp
    from cxrfm.train.losses import local_contrastive_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world=world)
    x, y = _data()
    start = sum(COUNTS[:rank])
    mine = slice(start, start + COUNTS[rank])
    out = {}
    for kind in ("clip", "siglip"):
        torch.manual_seed(0)
        net = torch.nn.Linear(6, 4)
        head = wrap_ddp(net, ctx)
        img = torch.nn.functional.normalize(head(x[mine]), dim=1)
        txt = torch.nn.functional.normalize(y[mine], dim=1)
        m = max(COUNTS)  # pad to m rows, gather, drop the padding (as the loop does)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, m - t.shape[0]))  # noqa: E731
        valid = torch.cat([r * m + torch.arange(c) for r, c in enumerate(COUNTS)])
        img_all, txt_all = gather_with_grad(pad(img), ctx)[valid], gather_with_grad(pad(txt), ctx)[valid]
        loss = local_contrastive_loss(kind, img, txt, img_all, txt_all, start, torch.tensor(5.0),
                                      torch.tensor(-2.0), pair_ids=PAIR_IDS, world=world)
        loss.backward()
        out[f"{kind}_loss"] = torch.tensor([mean_over_ranks(float(loss.detach()), ctx)])
        out[f"{kind}_grad"] = net.weight.grad.clone()
    try:  # ranks that read different shard indexes must stop, all of them
        agree(f"digest-{rank}", ctx, "the shard index")
        out["disagreement_raised"] = torch.tensor([0])
    except ConfigError as e:
        out["disagreement_raised"] = torch.tensor([1 if "ranks disagree" in str(e) else 0])
    save_file(out, str(Path(out_dir) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def test_local_loss_with_gather_with_grad_matches_single_process(tmp_path):
    from safetensors.torch import load_file

    spawn_and_join(_worker, 2, (2, _free_port(), str(tmp_path)))
    for kind in ("clip", "siglip"):
        loss, grad = _global(kind)
        for r in (0, 1):
            got = load_file(str(tmp_path / f"rank{r}.safetensors"))
            assert torch.allclose(got[f"{kind}_loss"], loss.reshape(1), atol=1e-5), kind
            # DDP averages the ranks' gradients: each equals the single-process gradient
            assert torch.allclose(got[f"{kind}_grad"], grad, atol=1e-5), kind
            assert int(got["disagreement_raised"]) == 1


# ------------------------------------------------------------------ torchrun on streamed shards
@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    # 7 shards on 2 ranks: the world size does not divide the shard count (documented: equal steps)
    return sampled_shards(shared_data, tmp_path_factory.mktemp("ds"), n=40, seed=4, size=32)


def _pretrain_args(shards: Path, out: Path) -> list[str]:
    return ["-m", "cxrfm", "pretrain", "--data", str(shards), "--out", str(out), "--curate", "prototype",
            "--budget", "0.5", "--epochs", "2", "--shuffle-buffer", "4", "--set", "image_size=32",
            "--set", "batch_size=8", "--set", "log_every=1", "--no-progress"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "CXRFM_DEBUG_DIR": str(tmp_path / "debug"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _check_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    status = run.status(verify=True)
    assert status["finished"] is True and status["weights_match"] is True
    ranks = [json.loads((tmp_path / "debug" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    for key in ("kept_rows", "curator_state", "weights", "accounting", "step"):
        assert ranks[0][key] == ranks[1][key], key  # one curator decision, one model, on both ranks
    cur = json.loads(run.curation.read_text())
    assert 0 < cur["data_fraction"] < 1 and cur["passes"]["select_image_fwd"] > 0


@pytest.mark.slow
def test_torchrun_two_ranks_stream_shards(shards, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += _pretrain_args(shards, tmp_path / "run")
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_run(tmp_path)


@pytest.mark.slow
def test_two_simulated_nodes_over_loopback(shards, tmp_path):
    """Two torchrun groups (one process each) meet through the c10d rendezvous on 127.0.0.1, as two
    nodes would (docs/scale.md has the real-cluster and Slurm commands)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    port = _free_port()
    common = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "cxrfm-test", "--max-restarts", "0"]
    env = {**_env(tmp_path), "GLOO_SOCKET_IFNAME": "lo"}
    nodes = [subprocess.Popen(common + _pretrain_args(shards, tmp_path / "run"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    for n, (_, err) in zip(nodes, results):
        assert n.returncode == 0, err[-3000:]
    _check_run(tmp_path)


FSDP_SCRIPT = """
import sys
from cxrfm.train.loop import pretrain
shards, out, fsdp, max_steps, resume = sys.argv[1:6]
pretrain(shards, out, curate="none", epochs=2, progress=False, fsdp=fsdp == "1", resume=resume == "1",
         max_steps=int(max_steps) or None, stream={"shuffle_buffer": 4},
         overrides={"image_size": 32, "train.batch_size": 8, "train.log_every": 1})
"""


@pytest.mark.slow
def test_fsdp2_matches_ddp_and_resumes(shards, tmp_path):
    """FSDP2 (parameters and Adam state sharded over 2 gloo ranks), interrupted after 3 steps and resumed
    (its state gathered into the usual full checkpoint and sharded again), ends at the weights of the
    uninterrupted DDP run."""
    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(FSDP_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in _env(tmp_path).items() if k != "CXRFM_DEBUG_DIR"}
    for out, fsdp, max_steps, resume in (("ddp", "0", "0", "0"), ("fsdp", "1", "3", "0"), ("fsdp", "1", "0", "1")):
        cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), str(script), str(shards),
               str(tmp_path / out), fsdp, max_steps, resume]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, fsdp = RunDir(tmp_path / "ddp"), RunDir(tmp_path / "fsdp")
    assert fsdp.status()["finished"] is True and fsdp.status()["step"] == ddp.status()["step"]
    a, b = load_file(str(ddp.weights)), load_file(str(fsdp.weights))  # full tensors, not shards
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.fixture(autouse=True)
def _no_inherited_dist_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
