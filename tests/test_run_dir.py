"""RunDir: what a run folder says about itself (status, training data), on hand-made folders; the
trainer's side of it is tested in tests/test_train.py."""
from __future__ import annotations

import json

import pytest

from cxrfm.errors import RunDirError
from cxrfm.run import RunDir, sha256_file


def test_status_of_a_folder_without_a_training_record(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    status = run.status(verify=True)
    # weights saved outside `cxrfm pretrain`: nothing known, nothing claimed
    assert status == {"step": None, "total_steps": None, "finished": None, "weights_sha256": None, "error": None,
                      "weights_match": None}
    assert not run.is_finished() and run.training_patients() is None and run.shared_patients(["p1"]) == []


def test_trainer_state_wins_over_status_json_and_verify_catches_swapped_weights(tmp_path):
    run = RunDir(tmp_path)
    run.weights.write_bytes(b"weights at step 4")
    digest = sha256_file(run.weights)
    run.write_status(step=2, total_steps=8, finished=False, weights_sha256="old", error=None)
    assert run.status()["step"] == 2 and run.status()["weights_sha256"] == "old"
    run.state_dir.mkdir()
    run.trainer_state.write_text(json.dumps({"trainer": {"step": 4, "done": False}, "weights_sha256": digest,
                                             "total_steps": 8}))
    status = run.status(verify=True)
    assert (status["step"], status["finished"], status["weights_match"]) == (4, False, True)
    run.weights.write_bytes(b"someone else's weights")
    assert run.status(verify=True)["weights_match"] is False
    run.write_status(error="the loss is nan at step 5")
    assert run.status()["error"] == "the loss is nan at step 5" and run.status()["step"] == 4


def test_training_patients_and_shared_patients(tmp_path):
    run = RunDir(tmp_path)
    run.write_training_data("data/train.csv", "abc123", ["a.png", "b.png", "c.png"], ["p2", "p1", "p2"])
    info = run.training_data()
    assert info["n_rows"] == 3 and info["n_patients"] == 2 and info["patient_ids"] == ["p1", "p2"]
    assert info["manifest"] == "data/train.csv" and len(info["patients_sha256"]) == 64
    assert run.training_patients() == {"p1", "p2"}
    assert run.shared_patients(["p9", "p2", 1]) == ["p2"]


def test_corrupt_status_is_an_error_naming_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.status_file.write_text("{not json")
    with pytest.raises(RunDirError, match="status.json"):
        run.status()


def test_state_file_names():
    run = RunDir("runs/x")
    assert run.state_file("model", 12).name == "model-12.safetensors"
    assert run.state_file("optimizer", 3).parent == run.state_dir
