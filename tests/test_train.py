"""Pretraining on real radiographs (64 shared images at 32 px): loss goes down, run dir contents,
curation hook, accounting, exact resume, SIGINT checkpoint, and every bad input."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxrfm.data.schema import Manifest
from cxrfm.errors import ConfigError, ManifestError, RunDirError
from cxrfm.models.dual import load_model
from cxrfm.train import curation
from cxrfm.train.accounting import Accounting, epoch_batch_sizes, none_run_accounting
from cxrfm.train.checkpoint import join_arrays, split_arrays
from cxrfm.train.curation import Curator
from cxrfm.run import RunDir
from cxrfm.train.interrupts import CheckpointSchedule
from cxrfm.train.loop import TrainingDivergedError, apply_affine, pretrain, random_affine, run_is_finished
from cxrfm.train.losses import clip_loss, siglip_loss

# 32 px, 16 pairs a step, 4 steps an epoch: a few seconds per run on 2 busy cores.
SMALL = {"image_size": 32, "batch_size": 16, "log_every": 1, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def manifest64(cxr_manifest_path):
    """64 real rows (seeded pick) that have a report or a label."""
    from cxrfm.data.pseudo_reports import training_texts

    full = Manifest.load(cxr_manifest_path)
    texts = training_texts(full, skip=True)
    usable = np.flatnonzero([t is not None for t in texts])
    rows = np.sort(np.random.default_rng(0).choice(usable, size=64, replace=False))
    return full.subset(rows)


@pytest.fixture(scope="module")
def none_run(manifest64, cache_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run without curation (the reference several tests compare with)."""
    out = tmp_path_factory.mktemp("runs") / "none"
    pretrain(manifest64, out, curate="none", epochs=3, overrides=SMALL, progress=False, cache_dir=cache_dir)
    return out


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run):
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), k


# ------------------------------------------------------------------ a plain run
def test_run_trains_and_writes_everything(none_run, manifest64):
    names = {p.name for p in none_run.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.jsonl", "curation.json", "state"} <= names
    epochs = [m for m in read_metrics(none_run) if m["type"] == "epoch"]
    steps = [m for m in read_metrics(none_run) if m["type"] == "step"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert len(steps) == 12 and all(np.isfinite(s["loss"]) for s in steps)
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.2  # it learns
    cur = json.loads((none_run / "curation.json").read_text())
    for key in ("data_fraction", "compute_fraction", "flops_fraction", "kept_ids", "summary", "passes", "units"):
        assert key in cur
    assert cur["data_fraction"] == 1.0 and cur["compute_fraction"] == pytest.approx(1.0)
    assert cur["kept_ids"] == manifest64.ids
    assert cur["passes"]["image_fwd"] == cur["passes"]["image_bwd"] == 3 * 64
    assert cur["passes"]["text_fwd"] == 0 and 0 < cur["passes"]["text_cache_fwd"] <= 64  # frozen MiniLM cached
    assert cur["forward_flops_per_sample"]["image"] > 0
    assert "forward" in cur["units"]
    assert run_is_finished(none_run)
    model = load_model(none_run)
    with torch.no_grad():
        z = model.encode_image(torch.rand(2, 1, 32, 32))
    assert z.shape == (2, model.embed_dim)
    cfg = json.loads((none_run / "config.json").read_text())
    assert cfg["model"]["image_size"] == 32 and cfg["run"]["data_hash"] == manifest64.content_hash()


def test_resume_after_stop_equals_uninterrupted(none_run, manifest64, cache_dir, tmp_path):
    out = tmp_path / "stopped"
    # Stop mid-epoch 1 (steps 1-4 are epoch 0), then resume.
    pretrain(manifest64, out, curate="none", epochs=3, overrides=SMALL, progress=False, cache_dir=cache_dir,
             max_steps=6)
    state = json.loads((out / "state" / "trainer.json").read_text())
    assert state["trainer"]["step"] == 6 and state["trainer"]["batch_in_epoch"] == 2
    assert not (out / "curation.json").exists() and not run_is_finished(out)
    # a run started before a TrainConfig field existed (here checkpoint_every_s) resumes with its default
    cfg = json.loads((out / "config.json").read_text())
    del cfg["run"]["train"]["checkpoint_every_s"]
    (out / "config.json").write_text(json.dumps(cfg))
    pretrain(manifest64, out, curate="none", epochs=3, overrides=SMALL, progress=False, cache_dir=cache_dir,
             resume=True)
    assert_same_weights(out, none_run)
    steps = [m["step"] for m in read_metrics(out) if m["type"] == "step"]
    assert steps == list(range(1, 13))  # no line lost or doubled across the restart
    # Resuming a finished run changes nothing.
    before = weights(out)
    pretrain(manifest64, out, curate="none", epochs=3, overrides=SMALL, progress=False, cache_dir=cache_dir,
             resume=True)
    assert all(torch.equal(before[k], v) for k, v in weights(out).items())


# ------------------------------------------------------------------ the curation hook
class HalfCurator(Curator):
    """Test curator: embeds every row at epoch start, keeps a random ~60 % of each batch (from its own
    generator, so resume must restore it), and can send itself SIGINT at a given select() call."""

    name = "test-half"
    kill_at: int | None = None
    kill_signal = signal.SIGINT
    log: list = []

    def __init__(self, context, **options):
        super().__init__(context, **options)
        self.calls = 0
        self.kept = np.zeros(self.n, dtype=bool)

    def begin_epoch(self, epoch, embed):
        img, txt = embed(np.arange(self.n))
        HalfCurator.log.append(("begin", epoch, img.shape, txt.shape,
                                float(np.abs(np.linalg.norm(img, axis=1) - 1).max())))

    def selects(self, epoch):
        return True

    def select(self, epoch, idx, img, txt):
        self.calls += 1
        HalfCurator.log.append(("select", epoch, len(idx), type(img).__name__, img.shape))
        keep = self.rng.random(len(idx)) < 0.6
        self.kept[idx[keep]] = True
        if HalfCurator.kill_at is not None and self.calls == HalfCurator.kill_at:
            os.kill(os.getpid(), HalfCurator.kill_signal)
        return keep

    def end_epoch(self, epoch):
        HalfCurator.log.append(("end", epoch))

    def kept_rows(self):
        return np.flatnonzero(self.kept)

    def state_dict(self):
        return {**super().state_dict(), "calls": self.calls, "kept": self.kept.copy()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.calls, self.kept = int(state["calls"]), np.asarray(state["kept"], dtype=bool)


@pytest.fixture
def half_curator(monkeypatch):
    monkeypatch.setitem(curation.CURATORS, HalfCurator.name, HalfCurator)
    HalfCurator.log, HalfCurator.kill_at, HalfCurator.kill_signal = [], None, signal.SIGINT
    return HalfCurator


def test_curation_hook_sigint_checkpoint_and_resume(half_curator, manifest64, cache_dir, tmp_path):
    ref = pretrain(manifest64, tmp_path / "ref", curate="test-half", epochs=2, overrides=SMALL, progress=False,
                   cache_dir=cache_dir)
    log = half_curator.log
    begins = [e for e in log if e[0] == "begin"]
    selects = [e for e in log if e[0] == "select"]
    assert [b[1] for b in begins] == [0, 1] and [e[1] for e in log if e[0] == "end"] == [0, 1]
    assert begins[0][2] == (64, 128) and begins[0][3] == (64, 128) and begins[0][4] < 1e-4  # normalised
    assert len(selects) == 8 and all(s[2] == 16 and s[3] == "ndarray" and s[4] == (16, 128) for s in selects)
    cur = json.loads((ref / "curation.json").read_text())
    kept = np.flatnonzero(np.isin(manifest64.ids, cur["kept_ids"]))
    assert cur["data_fraction"] == pytest.approx(len(kept) / 64) and cur["data_fraction"] < 1
    p = cur["passes"]
    assert p["select_image_fwd"] == 2 * 64 + 2 * 64  # begin_epoch embeddings + per-batch scoring
    assert p["image_bwd"] == p["image_fwd"] < 2 * 64  # backward only for kept pairs
    expected_units = p["image_fwd"] + 2 * p["image_bwd"] + p["select_image_fwd"] + p["text_cache_fwd"]
    assert cur["compute_units"] == expected_units
    assert cur["compute_fraction"] == pytest.approx(expected_units / (3 * 2 * 64 + p["text_cache_fwd"]))

    # The same run, interrupted by SIGINT during step 3: a checkpoint, then KeyboardInterrupt.
    half_curator.kill_at = 3
    out = tmp_path / "interrupted"
    # whatever the handlers were (default, or SIG_IGN under nohup / a background CI shell), they come back
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        pretrain(manifest64, out, curate="test-half", epochs=2, overrides=SMALL, progress=False, cache_dir=cache_dir)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # handlers restored
    state = json.loads((out / "state" / "trainer.json").read_text())
    assert state["trainer"]["step"] == 3 and (out / "model.safetensors").exists()
    half_curator.kill_at = None
    pretrain(manifest64, out, curate="test-half", epochs=2, overrides=SMALL, progress=False, cache_dir=cache_dir,
             resume=True)
    assert_same_weights(out, ref)
    assert json.loads((out / "curation.json").read_text())["kept_ids"] == cur["kept_ids"]


# ------------------------------------------------------------------ bad input
def test_bad_inputs(none_run, manifest64, cache_dir, tmp_path):
    kw = dict(overrides=SMALL, progress=False, cache_dir=cache_dir, epochs=3)
    for budget in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="budget"):
            pretrain(manifest64, tmp_path / "b", budget=budget, **kw)
    with pytest.raises(ConfigError, match="tiny-cpu"):
        pretrain(manifest64, tmp_path / "c", config="tiny-tpu", **kw)
    with pytest.raises(ConfigError, match="prototype"):
        pretrain(manifest64, tmp_path / "c", curate="cleverest", **kw)
    with pytest.raises(ConfigError, match="imag_size"):
        pretrain(manifest64, tmp_path / "c", curate="none", config="tiny-cpu", overrides={"imag_size": 3})
    # The dir holds another run (different seed) and --resume was not given.
    with pytest.raises(RunDirError, match="--resume"):
        pretrain(manifest64, none_run, curate="none", seed=1, **kw)
    # The same run without --resume is refused too (it would overwrite a finished run).
    with pytest.raises(RunDirError, match="already holds a run"):
        pretrain(manifest64, none_run, curate="none", **kw)
    # Resume with changed data.
    with pytest.raises(RunDirError, match="data changed"):
        pretrain(manifest64.subset(range(60)), none_run, curate="none", resume=True, **kw)
    with pytest.raises(RunDirError, match="different settings"):
        pretrain(manifest64, none_run, curate="none", resume=True, **{**kw, "epochs": 5})
    # No report and no label anywhere.
    bare = Manifest.from_table(manifest64.table.drop(columns=["labels", "report"]), manifest64.root)
    with pytest.raises(ManifestError, match="report"):
        pretrain(bare, tmp_path / "d", curate="none", **kw)
    # --resume on a folder that holds something else.
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="no config.json"):
        pretrain(manifest64, tmp_path / "junk", curate="none", resume=True, **kw)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


# ------------------------------------------------------------------ pieces
def test_losses_keep_mask_pair_ids_and_gradients():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.1 * torch.randn(8, 16, generator=g), dim=1)
    shuffled = txt[torch.randperm(8, generator=g)]
    scale = torch.tensor(10.0)
    assert clip_loss(img, txt, scale) < clip_loss(img, shuffled, scale)
    assert siglip_loss(img, txt, scale, torch.tensor(-5.0)) < siglip_loss(img, shuffled, scale, torch.tensor(-5.0))
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    assert torch.allclose(clip_loss(img, txt, scale, keep=keep), clip_loss(img[keep], txt[keep], scale))
    # Two pairs with the same text are both positives: SigLIP no longer pushes them apart; for CLIP
    # the duplicate softmax rows cancel, so the loss is the same either way.
    dup_txt = txt.clone()
    dup_txt[1] = dup_txt[0]
    ids = torch.tensor([0, 0, 2, 3, 4, 5, 6, 7])
    bias = torch.tensor(-5.0)
    assert siglip_loss(img, dup_txt, scale, bias, pair_ids=ids) < siglip_loss(img, dup_txt, scale, bias)
    assert torch.allclose(clip_loss(img, dup_txt, scale, pair_ids=ids), clip_loss(img, dup_txt, scale))
    # Gradients reach only kept samples.
    x = img.clone().requires_grad_(True)
    clip_loss(x, txt, scale, keep=keep).backward()
    assert torch.all(x.grad[~keep] == 0) and torch.all(x.grad[keep].abs().sum(1) > 0)


def test_augmentation_seeded_and_identity():
    from cxrfm.config import TrainConfig

    cfg = TrainConfig(crop_scale=0.8, max_rotation_deg=5)
    a = random_affine(4, cfg, torch.Generator().manual_seed(1))
    b = random_affine(4, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 2, 3)
    x = torch.rand(2, 1, 16, 16)
    ident = random_affine(2, TrainConfig(crop_scale=1.0, max_rotation_deg=0), torch.Generator().manual_seed(0))
    assert torch.allclose(apply_affine(x, ident), x, atol=1e-5)
    y = apply_affine(x, a[:2])
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_checkpoint_arrays_round_trip_and_accounting():
    state = {"rng": np.random.default_rng(3).bit_generator.state, "kept": np.array([True, False]),
             "proto": np.ones((2, 3), np.float32), "nested": {"t": torch.arange(3)}, "n": 5}
    skeleton, arrays = split_arrays(state)
    json.dumps(skeleton)  # JSON-able
    back = join_arrays(json.loads(json.dumps(skeleton)), arrays)
    assert back["rng"] == state["rng"] and back["n"] == 5
    assert np.array_equal(back["kept"], state["kept"]) and back["kept"].dtype == bool
    assert torch.equal(back["nested"]["t"], state["nested"]["t"])
    assert epoch_batch_sizes(35, 16) == [16, 16, 3] and epoch_batch_sizes(33, 16) == [16, 16]
    ref = none_run_accounting(64, 3, 16, 50, text_cached=True, text_trainable=False, image_flops=10.0,
                              text_flops=100.0)
    assert ref.units() == 3 * 64 * 3 + 50 and ref.flops() == 3 * 64 * 3 * 10.0 + 50 * 100.0
    acc = Accounting(image_fwd=10, image_bwd=5, select_image_fwd=4)
    assert acc.units() == 10 + 10 + 4


def test_balanced_curator_reuses_the_loops_counted_text_features(tmp_path, cxr_manifest_path, cache_dir):
    """`balanced` clusters the loop's cached frozen-MiniLM features: no second, uncounted text pass."""
    import json

    from cxrfm import Manifest
    from cxrfm.train.loop import pretrain

    m = Manifest.load(cxr_manifest_path)
    m = m.subset(list(range(0, len(m), 24)))  # ~86 rows across the sources
    run = pretrain(m, tmp_path / "run", config="tiny-cpu", curate="balanced", budget=0.25, epochs=1, seed=0,
                   overrides={"image_size": 32}, progress=False, cache_dir=cache_dir)
    cur = json.loads((run / "curation.json").read_text())
    summary = cur.get("curator_summary") or cur.get("summary")
    assert summary["minilm_texts_encoded"] == 0
    assert abs(cur["data_fraction"] - 0.25) <= 0.02
    assert cur["passes"]["text_cache_fwd"] > 0


# ------------------------------------------------------------------ runs say what they are (issue 9 item 7)
def test_status_records_step_finished_and_weights_hash(none_run, manifest64):
    status = RunDir(none_run).status(verify=True)
    assert status["step"] == status["total_steps"] == 12 and status["finished"] is True
    assert status["weights_sha256"] == RunDir(none_run).weights_sha256() and status["weights_match"] is True
    assert status["error"] is None
    # the training data identity: every patient of the training rows, and the manifest's content hash
    data = RunDir(none_run).training_data()
    patients = set(manifest64.table["patient_id"].astype(str))
    assert data["data_hash"] == manifest64.content_hash() and data["n_rows"] == 64
    assert RunDir(none_run).training_patients() == patients
    some = sorted(patients)[:3]
    assert RunDir(none_run).shared_patients(some + ["nobody-else"]) == some


def test_sigterm_run_is_unfinished_until_resumed(half_curator, manifest64, cache_dir, tmp_path):
    """A SIGTERM at step 6 of 8 leaves a checkpoint that says so; it is not a finished run."""
    half_curator.kill_at, half_curator.kill_signal = 6, signal.SIGTERM
    out = tmp_path / "term"
    with pytest.raises(KeyboardInterrupt):
        pretrain(manifest64, out, curate="test-half", epochs=2, overrides=SMALL, progress=False, cache_dir=cache_dir)
    status = RunDir(out).status(verify=True)
    assert status == {"step": 6, "total_steps": 8, "finished": False, "weights_sha256": status["weights_sha256"],
                      "error": None, "weights_match": True}
    assert not run_is_finished(out) and not RunDir(out).is_finished()
    half_curator.kill_at = None
    pretrain(manifest64, out, curate="test-half", epochs=2, overrides=SMALL, progress=False, cache_dir=cache_dir,
             resume=True)
    assert RunDir(out).status()["finished"] is True and RunDir(out).status()["step"] == 8


def test_resumed_runs_curation_json_equals_uninterrupted(manifest64, cache_dir, tmp_path):
    """Three interruptions (each a checkpoint then exit, as after a kill) and a resume give the same
    curation.json as one uninterrupted run: the frozen text-cache pass is counted once."""
    kw = dict(curate="balanced", budget=0.5, epochs=3, overrides=SMALL, progress=False, cache_dir=cache_dir)
    ref = pretrain(manifest64, tmp_path / "ref", **kw)
    out = tmp_path / "killed"
    for _ in range(3):
        pretrain(manifest64, out, resume=True, max_steps=2, **kw)
    assert RunDir(out).status()["finished"] is False
    pretrain(manifest64, out, resume=True, **kw)
    a, b = RunDir(ref).read_curation(), RunDir(out).read_curation()
    assert a["passes"]["text_cache_fwd"] > 0 and a["compute_fraction"] < 1
    assert b == a  # kept ids, compute accounting, curator summary: all of it
    assert_same_weights(out, ref)


def test_time_trigger_checkpoints_between_step_checkpoints(half_curator, manifest64, cache_dir, tmp_path):
    """checkpoint_every_s: with a tiny interval every step is saved although checkpoint_every is 1000."""
    seen = []
    half_curator.log = seen
    out = tmp_path / "timed"
    half_curator.kill_at, half_curator.kill_signal = 3, signal.SIGTERM  # the stop checkpoint comes after step 3
    original = HalfCurator.select

    def select_and_read_status(self, epoch, idx, img, txt):
        seen.append(("status", RunDir(out).status()["step"]))
        return original(self, epoch, idx, img, txt)

    HalfCurator.select = select_and_read_status
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(manifest64, out, curate="test-half", epochs=2, progress=False, cache_dir=cache_dir,
                     overrides={**SMALL, "checkpoint_every_s": 1e-9})
    finally:
        HalfCurator.select = original
    # before step k's select the weights on disk are those of step k - 1
    assert [e[1] for e in seen if e[0] == "status"] == [None, 1, 2]


def test_checkpoint_schedule_steps_or_seconds_whichever_first():
    now = [100.0]
    sched = CheckpointSchedule(every_steps=5, every_s=60.0, clock=lambda: now[0])
    assert not sched.due(1)
    now[0] += 59.0
    assert not sched.due(2)
    now[0] += 1.0
    assert sched.due(3)  # 60 s since the last checkpoint
    sched.saved()
    assert not sched.due(4) and sched.due(5)  # the step trigger still holds


def test_exploding_lr_stops_with_an_error_and_no_finished_weights(manifest64, cache_dir, tmp_path):
    out = tmp_path / "lr1e9"
    with pytest.raises(TrainingDivergedError, match=r"at step \d+.*train\.lr="):
        pretrain(manifest64, out, curate="none", epochs=3, progress=False, cache_dir=cache_dir,
                 overrides={**SMALL, "lr": 1e9})
    status = RunDir(out).status()
    assert status["finished"] is not True
    assert "lower the learning rate" in status["error"].lower()
    if RunDir(out).weights.exists():  # only a checkpoint of finite weights may exist
        assert all(torch.isfinite(v).all() for v in weights(out).values())


@pytest.mark.parametrize("value", ["nan", "NaN", "-0.1", "Infinity", "0"])
def test_cli_rejects_bad_lr_at_config_time(value, manifest64, tmp_path, capsys):
    from cxrfm.cli import main

    manifest = manifest64.save(tmp_path / "m.csv")
    rc = main(["pretrain", "--data", str(manifest), "--out", str(tmp_path / "run"), "--curate", "none",
               "--set", f"train.lr={value}", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_exits_2_when_training_diverges(manifest64, cache_dir, tmp_path, capsys):
    from cxrfm.cli import main

    manifest = manifest64.save(tmp_path / "m.csv")
    rc = main(["pretrain", "--data", str(manifest), "--out", str(tmp_path / "run"), "--curate", "none",
               "--epochs", "2", "--cache-dir", str(cache_dir), "--no-progress",
               "--set", "image_size=32", "--set", "batch_size=16", "--set", "train.lr=1e9"])
    assert rc == 2
    assert "lower the learning rate" in capsys.readouterr().err.lower()


@pytest.mark.parametrize("override,match", [
    ({"image_size": "abc"}, r"model\.image_size = 'abc': expected int"),
    ({"train.lr": "nan"}, r"train\.lr = 'nan': expected float"),
    ({"train.lr": float("nan")}, r"train\.lr = nan: must be a finite number"),
    ({"image_std": float("inf")}, r"model\.image_std = inf: must be a finite number"),
    ({"augment": 1}, r"train\.augment = 1: expected bool"),
    ({"grad_clip": -1.0}, r"grad_clip -1\.0: must be a finite number >= 0"),
    ({"checkpoint_every_s": 0}, "checkpoint_every_s > 0"),
])
def test_config_refuses_wrong_types_and_non_finite_numbers(override, match):
    from cxrfm.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config("tiny-cpu", override)
    assert load_config("tiny-cpu", {"lr": 1, "checkpoint_every_s": 30})[1].lr == 1  # an int is a float here


def test_balanced_thumbnail_dedup_reads_the_loops_image_cache(tmp_path, cxr_manifest_path, cache_dir):
    """dedup_space='thumbnail' in a real run: thumbnails from the loop's image cache, no image tower pass."""
    m = Manifest.load(cxr_manifest_path)
    m = m.subset(list(range(0, len(m), 24)))
    run = pretrain(m, tmp_path / "run", config="tiny-cpu", curate="balanced", budget=0.5, epochs=1, seed=0,
                   overrides={"image_size": 32}, progress=False, cache_dir=cache_dir,
                   curator_kwargs={"dedup_threshold": 0.5, "dedup_space": "thumbnail"})
    cur = json.loads((run / "curation.json").read_text())
    s = cur["summary"]
    assert s["dedup_space"] == "thumbnail" and s["embedded_rows"] == 0
    assert s["near_duplicates"] > 0  # a low threshold merges some of the 86 films
    assert cur["passes"]["select_image_fwd"] == 0
    assert abs(cur["data_fraction"] - 0.5) <= 0.02
