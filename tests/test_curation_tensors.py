"""Curation select on the scoring pass's tensors (issue 16): a curator that ``accepts_tensors`` gets the
embeddings where the scoring pass left them, the others get host numpy; both paths give the same flags
and the same curator state, and the training loops (cached and streamed data) train the same run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrfm.errors import ConfigError
from cxrfm.run import RunDir
from cxrfm.train import curation
from cxrfm.train.curation import BalancedCurator, Curator, PrototypeCurator, build_curator, select_mask
from cxrfm.train.inputs import split_embeddings
from cxrfm.train.loop import pretrain
from tests.curator_helpers import DIM, batches, json_round_trip, make_pool
from tests.helpers import sampled_shards

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SMALL = {"image_size": 32, "batch_size": 16, "log_every": 1, "checkpoint_every": 1000}
TINY_STREAM = {"image_size": 32, "train.batch_size": 8, "train.log_every": 1}


def test_accepts_tensors_is_declared_per_class():
    assert Curator.accepts_tensors and PrototypeCurator.accepts_tensors
    # balanced / random keep the base select(), which never looks at the embeddings
    assert BalancedCurator.accepts_tensors and curation.RandomCurator.accepts_tensors

    class NumpySelect(Curator):  # overrides select(): the numpy contract unless it says otherwise
        def selects(self, epoch):
            return True

        def select(self, epoch, idx, img, txt):
            return np.ones(len(idx), dtype=bool)

    class SubPrototype(PrototypeCurator):  # an inherited True was about the parent's select()
        def select(self, epoch, idx, img, txt):
            return super().select(epoch, idx, img, txt)

    class TensorSelect(NumpySelect):
        accepts_tensors = True

        def select(self, epoch, idx, img, txt):
            return torch.ones(len(idx), dtype=torch.bool)

    assert not NumpySelect.accepts_tensors and not SubPrototype.accepts_tensors and TensorSelect.accepts_tensors
    with pytest.raises(TypeError, match="accepts_tensors"):
        class Vague(Curator):  # noqa: F841
            accepts_tensors = "yes"


def _scoring_output(img, txt, idx, device):
    """What the scoring pass leaves: the (B, 2D) float32 tensor of the batch on the run's device."""
    return torch.from_numpy(np.concatenate([img[idx], txt[idx]], axis=1)).to(device)


def _pair(name, img, txt, **options):
    """Two copies of one curator after its epoch-0 warm-up (the same state, as two runs or two ranks have)."""
    a = build_curator(name, n=len(img), budget=0.25, seed=3, **options)
    a.begin_epoch(0, lambda rows: (img[rows], txt[rows]))
    b = build_curator(name, n=len(img), budget=0.25, seed=3, **options)
    b.load_state_dict(json_round_trip(a.state_dict()))
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,options", [("prototype", {"num_prototypes": 4}), ("balanced", {"n_clusters": 4})])
def test_numpy_and_tensor_paths_give_the_same_flags_and_state(name, options, device):
    """The same batches through the loop's numpy path (one host copy of the scoring output, split) and its
    tensor path (views of it on the device): the same flags every step and the same curator state."""
    img, txt, _ = make_pool([120, 80, 40, 20], seed=5, outliers=6)
    via_numpy, via_tensor = _pair(name, img, txt, **options)
    plan = batches(via_numpy, 0, np.random.default_rng(4), batch_size=64)
    kept_any, visited = 0, 0
    for idx in plan:
        z = _scoring_output(img, txt, idx, device)
        host = split_embeddings(z, DIM, tensors=False)
        dev = split_embeddings(z, DIM, tensors=True)
        assert isinstance(host[0], np.ndarray) and isinstance(dev[0], torch.Tensor) and dev[0].device == z.device
        k_np = select_mask(via_numpy, 0, idx.copy(), *host)
        k_t = select_mask(via_tensor, 0, idx.copy(), *dev)
        assert k_np.dtype == bool and k_np.shape == idx.shape and np.array_equal(k_np, k_t)
        kept_any, visited = kept_any + int(k_np.sum()), visited + len(idx)
    if name == "prototype":
        assert 0 < kept_any < visited  # it selected, and not everything
    else:
        assert kept_any == visited  # balanced chose its subset at epoch 0 and trains all of it
    sa, sb = via_numpy.state_dict(), via_tensor.state_dict()
    assert sa.keys() == sb.keys() and sa["rng"] == sb["rng"]
    for key, value in sa.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == sb[key].dtype and np.array_equal(value, sb[key]), key
        else:
            assert value == sb[key], key
    assert np.array_equal(via_numpy.epoch_rows(1), via_tensor.epoch_rows(1))


class _Probe(Curator):
    """Keeps every other sample of each batch; logs what ``select`` was handed."""

    name = "test-probe-numpy"
    seen: list = []

    def selects(self, epoch):
        return True

    def select(self, epoch, idx, img, txt):
        where = str(img.device) if isinstance(img, torch.Tensor) else "host"
        type(self).seen.append((type(img).__name__, type(txt).__name__, tuple(img.shape), where))
        keep = np.zeros(len(idx), dtype=bool)
        keep[::2] = True
        return keep


class _TensorProbe(_Probe):
    """The same selection, declared on tensors, returned as a bool tensor on the embeddings' device."""

    name = "test-probe-tensor"
    accepts_tensors = True

    def select(self, epoch, idx, img, txt):
        return torch.from_numpy(super().select(epoch, idx, img, txt)).to(img.device)


@pytest.fixture
def probes(monkeypatch):
    for cls in (_Probe, _TensorProbe):
        monkeypatch.setitem(curation.CURATORS, cls.name, cls)
        monkeypatch.setattr(cls, "seen", [])
    return _Probe, _TensorProbe


def test_select_mask_converts_for_numpy_curators_and_checks_the_flags(probes):
    numpy_probe, tensor_probe = (cls(curation.CurationContext(n=10)) for cls in probes)
    img, txt = torch.rand(6, 4), torch.rand(6, 4)
    idx = np.arange(6)
    assert select_mask(numpy_probe, 0, idx, img, txt).tolist() == [True, False] * 3
    assert numpy_probe.seen == [("ndarray", "ndarray", (6, 4), "host")]  # copied to the host for it
    keep = select_mask(tensor_probe, 0, idx, img, txt)
    assert isinstance(keep, np.ndarray) and keep.tolist() == [True, False] * 3  # a bool tensor comes back
    assert tensor_probe.seen == [("Tensor", "Tensor", (6, 4), "cpu")]

    class Short(_TensorProbe):
        accepts_tensors = True

        def select(self, epoch, idx, img, txt):
            return torch.ones(len(idx) - 1, dtype=torch.bool)

    with pytest.raises(ConfigError, match="5 flags for a batch of 6"):
        select_mask(Short(curation.CurationContext(n=10)), 0, idx, img, txt)


@pytest.fixture(scope="module")
def manifest64(cxr_manifest_path):
    from cxrfm.data.pseudo_reports import training_texts
    from cxrfm.data.schema import Manifest

    full = Manifest.load(cxr_manifest_path)
    usable = np.flatnonzero([t is not None for t in training_texts(full, skip=True)])
    return full.subset(np.sort(np.random.default_rng(0).choice(usable, size=64, replace=False)))


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return sampled_shards(shared_data, tmp_path_factory.mktemp("ct"), n=36, seed=2, size=40)


def _run(data, out, curate, stream, cache_dir, **kw):
    if stream:
        return pretrain(data, out, curate=curate, epochs=2, overrides=TINY_STREAM, progress=False,
                        stream={"shuffle_buffer": 5}, **kw)
    return pretrain(data, out, curate=curate, epochs=2, overrides=SMALL, progress=False, cache_dir=cache_dir, **kw)


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
def test_loops_hand_tensors_only_to_curators_that_accept_them(stream, probes, manifest64, shards, cache_dir,
                                                              tmp_path, one_torch_thread):
    data = shards if stream else manifest64
    numpy_probe, tensor_probe = probes
    _run(data, tmp_path / "np", numpy_probe.name, stream, cache_dir)
    _run(data, tmp_path / "t", tensor_probe.name, stream, cache_dir)
    assert numpy_probe.seen and {s[:2] for s in numpy_probe.seen} == {("ndarray", "ndarray")}
    assert {s[:2] for s in tensor_probe.seen} == {("Tensor", "Tensor")}
    assert {s[3] for s in tensor_probe.seen} == {"cpu"}  # the run's device here
    assert [s[2] for s in numpy_probe.seen] == [s[2] for s in tensor_probe.seen]
    a, b = RunDir(tmp_path / "np").status(), RunDir(tmp_path / "t").status()
    assert a["finished"] and a["weights_sha256"] == b["weights_sha256"]  # a bool tensor back trains the same


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
def test_prototype_run_is_the_same_on_the_tensor_and_numpy_loop_paths(stream, manifest64, shards, cache_dir,
                                                                      tmp_path, monkeypatch, one_torch_thread):
    data = shards if stream else manifest64
    _run(data, tmp_path / "tensor", "prototype", stream, cache_dir, budget=0.5)
    monkeypatch.setattr(PrototypeCurator, "accepts_tensors", False)  # the loop copies to numpy first
    _run(data, tmp_path / "numpy", "prototype", stream, cache_dir, budget=0.5)
    a, b = RunDir(tmp_path / "tensor"), RunDir(tmp_path / "numpy")
    assert a.status()["weights_sha256"] == b.status()["weights_sha256"]
    ca, cb = json.loads(a.curation.read_text()), json.loads(b.curation.read_text())
    assert ca["kept_ids"] == cb["kept_ids"] and 0 < ca["data_fraction"] < 1
    assert ca["passes"] == cb["passes"] and ca["passes"]["select_image_fwd"] > 0


def test_bench_scale_measures_both_select_paths_with_the_same_flags(one_torch_thread):
    """benchmarks/bench_scale.py --parts curation: the loop's numpy and tensor paths on the CPU (and the GPU's
    when CUDA is available), every step selecting the same flags on the CPU."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_scale

    res = bench_scale.bench_curation(3000, 256, seed=0, repeats=3, device="auto")
    want = ["cpu/numpy", "cpu/tensor"] + (["cuda/numpy", "cuda/tensor"] if torch.cuda.is_available() else [])
    assert list(res["paths"]) == want and res["device"] == want[-1].split("/")[0]
    for name in ("cpu/numpy", "cpu/tensor"):
        r = res["paths"][name]
        assert r["steps_with_the_same_flags_as_cpu/numpy"] == 3 and 0 < r["kept_per_step_median"] < 256
        assert r["select_ms_median"] > 0 and r["fps_picks_median"] > 0
    assert bench_scale.curation_paths("cpu") == [("cpu", "numpy"), ("cpu", "tensor")]
