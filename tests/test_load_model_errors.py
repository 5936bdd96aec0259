"""load_model on damaged run folders: every bad weights / config file is a RunDirError naming the file
and the fix, never a traceback from safetensors or load_state_dict (issue 9, item 8)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrfm.config import ModelConfig, TrainConfig, config_to_dict
from cxrfm.errors import RunDirError
from cxrfm.models import build_model, load_model
from cxrfm.models.dual import save_model
from cxrfm.models.tower import TINY_IMAGE_SIZE, image_tower_entry
from cxrfm.run import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig(image_tower="convnext", image_arch=image_tower_entry("convnext").tiny_arch,
                       image_size=TINY_IMAGE_SIZE, embed_dim=16, **kw)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("good"))
    model = build_model(tiny_config(), seed=0)
    run.config.write_text(json.dumps(config_to_dict(model.config, TrainConfig())))
    save_model(model, run.weights)
    return run


@pytest.fixture
def run(good_run, tmp_path) -> RunDir:
    """A private copy of the good run to damage."""
    shutil.copytree(good_run.path, tmp_path / "run")
    return RunDir(tmp_path / "run")


def edit_weights(run: RunDir, edit) -> None:
    state = load_file(str(run.weights))
    edit(state)
    save_file(state, str(run.weights))


def test_the_good_run_loads(good_run):
    assert load_model(good_run.path).embed_dim == 16


@pytest.mark.parametrize("keep", [0, 8, 100, 0.5, -1])
def test_truncated_weights(run, keep):
    data = run.weights.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    run.weights.write_bytes(data[:n])
    with pytest.raises(RunDirError, match=r"model\.safetensors: unreadable .*truncated.*--resume"):
        load_model(run.path)


def test_weights_that_are_not_safetensors(run):
    torch.save({"image_proj.weight": torch.zeros(2)}, run.weights)  # a pickle under the safetensors name
    with pytest.raises(RunDirError, match=r"model\.safetensors: unreadable"):
        load_model(run.path)
    run.weights.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(RunDirError, match=r"model\.safetensors: unreadable"):
        load_model(run.path)


def test_one_tensor_of_the_wrong_shape(run):
    edit_weights(run, lambda s: s.__setitem__("image_proj.weight", torch.zeros(16, 3)))
    with pytest.raises(RunDirError, match=r"model\.safetensors: does not match .*config\.json .*1 shape\(s\) differ: "
                                          r"image_proj\.weight \(16, 3\) in model\.safetensors vs \(16, 64\)"):
        load_model(run.path)


def test_a_deleted_and_an_extra_tensor(run):
    edit_weights(run, lambda s: s.pop("image_proj.weight"))
    with pytest.raises(RunDirError, match=r"1 tensor\(s\) missing: image_proj\.weight"):
        load_model(run.path)
    edit_weights(run, lambda s: s.__setitem__("image_proj.weight", torch.zeros(16, 64)) or
                 s.__setitem__("head.extra", torch.zeros(2)))
    with pytest.raises(RunDirError, match=r"1 unexpected: head\.extra"):
        load_model(run.path)


def test_a_config_that_does_not_match_the_weights(run):
    cfg = json.loads(run.config.read_text())
    cfg["model"]["embed_dim"] = 32
    run.config.write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match=r"shape\(s\) differ: .*from config\.json.*put back the config\.json"):
        load_model(run.path)
    cfg["model"].update(embed_dim=16, image_tower="resnet", image_arch=image_tower_entry("resnet").tiny_arch)
    run.config.write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match=r"missing: .*unexpected: "):
        load_model(run.path)


def test_non_finite_weights_are_refused(run):
    def poison(s):
        s["image_proj.weight"][0, 0] = float("nan")

    edit_weights(run, poison)
    with pytest.raises(RunDirError, match=r"1 tensor\(s\) hold NaN or inf \(image_proj\.weight\).*train\.lr"):
        load_model(run.path)


def test_half_precision_weights_load(run, good_run):
    edit_weights(run, lambda s: s.update({k: v.half() for k, v in s.items()}))
    x = torch.rand(1, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        a, b = load_model(run.path).encode_image(x), load_model(good_run.path).encode_image(x)
    assert torch.allclose(a, b, atol=1e-2)


@pytest.mark.parametrize("text, match", [("[1, 2]", "holds a JSON list, not an object"), ("{", "not valid JSON")])
def test_damaged_config_json(run, text, match):
    run.config.write_text(text)
    with pytest.raises(RunDirError, match=rf"config\.json: {match}"):
        load_model(run.path)


def test_binary_config_json(run):
    run.config.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunDirError, match=r"config\.json: not valid JSON"):
        load_model(run.path)


def test_weights_path_that_is_a_folder(run):
    run.weights.unlink()
    run.weights.mkdir()
    with pytest.raises(RunDirError, match=r"no model\.safetensors"):
        load_model(run.path)
