"""Resumable checkpoints of a run folder, without pickle (the folder's layout is :class:`cxrfm.run.RunDir`'s).

What a checkpoint holds: the weights (``model.safetensors`` and ``state/model-<step>``), the optimiser
and curator tensors (``state/optimizer-<step>``, ``state/curator-<step>``) and ``state/trainer.json``
(step, epoch, position in the epoch, curator state, accounting, the weights' sha256: the commit point).

Every file is written to a temp name and ``os.replace``-d (atomic on POSIX and Windows). A checkpoint is
committed when ``trainer.json`` (which names its ``-<step>`` files) is replaced, so a crash mid-write
leaves the previous checkpoint intact; files of older steps are deleted after the commit.
``torch.load`` is never used: it unpickles, and unpickling a downloaded file runs arbitrary code.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..config import ModelConfig, TrainConfig, config_to_dict
from ..errors import RunDirError
from ..run import RunDir, sha256_file


# ------------------------------------------------------------------ atomic files
def _atomic(path: Path, write) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
    return _atomic(path, write)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a safetensors file atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(clean, tmp, metadata={"format": "pt"}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link of ``src`` (a copy where links are not possible), atomically."""
    def write(tmp):
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    _atomic(dst, write)


# ------------------------------------------------------------------ arrays inside JSON-able state
def split_arrays(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace numpy arrays / tensors inside nested dicts/lists by ``{"__array__": key}`` references.

    Returns the JSON-able skeleton and the arrays (as tensors, for safetensors).
    """
    arrays: dict[str, torch.Tensor] = {}

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            arrays[path] = o.detach().cpu()
            return {"__array__": path, "kind": "torch"}
        if isinstance(o, np.ndarray):
            arrays[path] = torch.from_numpy(np.ascontiguousarray(o))
            return {"__array__": path, "kind": "numpy"}
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(o)]
        return o

    return walk(obj, prefix), arrays


def join_arrays(obj: Any, arrays: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_arrays`."""
    if isinstance(obj, dict):
        if "__array__" in obj:
            t = arrays[obj["__array__"]]
            return t.numpy().copy() if obj.get("kind") == "numpy" else t
        return {k: join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_arrays(v, arrays) for v in obj]
    return obj


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    sd = optimizer.state_dict()
    skeleton, arrays = split_arrays({"state": {str(k): v for k, v in sd["state"].items()},
                                     "param_groups": sd["param_groups"]})
    return skeleton, arrays


def load_optimizer_state(optimizer: torch.optim.Optimizer, skeleton: dict, arrays: dict) -> None:
    sd = join_arrays(skeleton, arrays)
    sd["state"] = {int(k): v for k, v in sd["state"].items()}  # JSON keys are strings; torch wants ints
    optimizer.load_state_dict(sd)


# ------------------------------------------------------------------ the run dir
def normalise(obj: Any) -> Any:
    """A JSON round trip (tuples -> lists, keys -> str) so identities compare equal after reloading."""
    return json.loads(json.dumps(obj, default=str))


def check_run_dir(run: RunDir, identity: dict, resume: bool) -> bool:
    """Refuse to mix two runs in one dir. Returns True when there is a checkpoint to resume from."""
    run_dir, cfg_path = run.path, run.config
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is not a folder; give a folder for --out")
    if not cfg_path.is_file():
        if resume and run_dir.is_dir() and any(run_dir.iterdir()):
            raise RunDirError(f"{run_dir}: --resume, but the folder holds no run (no config.json); "
                              f"give the --out of an earlier `cxrfm pretrain`")
        return False
    try:
        old = json.loads(cfg_path.read_text(encoding="utf-8")).get("run", {})
    except json.JSONDecodeError:
        old = {}
    if isinstance(old.get("train"), dict):
        # a TrainConfig field added after the run started (e.g. checkpoint_every_s) took its default then
        defaults = normalise(dataclasses.asdict(TrainConfig()))
        old = {**old, "train": {**{k: v for k, v in defaults.items() if k in identity.get("train", {})},
                                **old["train"]}}
    if not resume:
        differs = _differences(old, identity)
        what = f" (another run: {'; '.join(differs)})" if differs else ""
        raise RunDirError(f"{run_dir}: already holds a run{what}; pass --resume to continue it, or choose "
                          f"another --out (or delete the folder) to start a new one")
    if old.get("data_hash") != identity["data_hash"]:
        raise RunDirError(f"{run_dir}: the training data changed since this run started (manifest content hash "
                          f"{old.get('data_hash')} -> {identity['data_hash']}); resume with the original manifest, "
                          f"or start a new run in another --out")
    differs = _differences(old, identity)
    if differs:
        raise RunDirError(f"{run_dir}: --resume with different settings ({'; '.join(differs)}); resume with the "
                          f"original settings, or start a new run in another --out")
    return run.trainer_state.is_file()


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key == "cxrfm_version":
            continue
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def write_run_config(run: RunDir, model_cfg: ModelConfig, train_cfg: TrainConfig, identity: dict) -> Path:
    d = config_to_dict(model_cfg, train_cfg)
    d["run"] = identity
    return write_json(run.config, normalise(d))


def save_checkpoint(run: RunDir, model, optimizer: torch.optim.Optimizer, trainer: dict,
                    curator_state: dict, total_steps: int | None = None) -> str:
    """Write model + optimizer + curator + trainer state for ``trainer["step"]``; commit; prune.

    Returns the sha256 of the weights written, which ``trainer.json`` and ``status.json`` record.
    """
    step = int(trainer["step"])
    paths = {kind: run.state_file(kind, step) for kind in ("model", "optimizer", "curator")}
    write_tensors(paths["model"], model.weights_to_save())
    opt_skeleton, opt_arrays = optimizer_state(optimizer)
    write_tensors(paths["optimizer"], opt_arrays)
    cur_skeleton, cur_arrays = split_arrays(curator_state)
    trainer_extra, trainer_arrays = split_arrays(trainer)
    write_tensors(paths["curator"], {**{f"curator.{k}": v for k, v in cur_arrays.items()},
                                     **{f"trainer.{k}": v for k, v in trainer_arrays.items()}})
    digest = sha256_file(paths["model"])
    done = bool(trainer.get("done", False))
    write_json(run.trainer_state, normalise({"files": {k: p.name for k, p in paths.items()}, "trainer": trainer_extra,
                                             "optimizer": opt_skeleton, "curator": cur_skeleton,
                                             "weights_sha256": digest, "total_steps": total_steps}))
    link_or_copy(paths["model"], run.weights)
    run.write_status(step=step, total_steps=total_steps, finished=done, weights_sha256=digest, error=None)
    keep = {p.name for p in paths.values()} | {run.trainer_state.name}
    for p in run.state_dir.iterdir():
        if p.name not in keep and not p.name.startswith("."):
            p.unlink(missing_ok=True)
    return digest


def load_checkpoint(run: RunDir, model, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore model and optimizer in place; return (trainer state, curator state)."""
    state = run.state_dir
    try:
        meta = json.loads(run.trainer_state.read_text(encoding="utf-8"))
        files = meta["files"]
        weights = read_tensors(state / files["model"])
        opt_arrays = read_tensors(state / files["optimizer"])
        extra = read_tensors(state / files["curator"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise RunDirError(f"{state}: checkpoint incomplete or damaged ({e}); delete {state} to restart "
                          f"from scratch") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    expected = set(model.weights_to_save())
    bad = [k for k in missing if k in expected]
    if bad or unexpected:
        raise RunDirError(f"{state}: checkpoint does not match the model (missing {bad[:3]}, unexpected "
                          f"{list(unexpected)[:3]}); delete {state} to restart from scratch")
    load_optimizer_state(optimizer, meta["optimizer"], opt_arrays)
    cur = {k[len("curator."):]: v for k, v in extra.items() if k.startswith("curator.")}
    trn = {k[len("trainer."):]: v for k, v in extra.items() if k.startswith("trainer.")}
    return join_arrays(meta["trainer"], trn), join_arrays(meta["curator"], cur)
