"""The files of a concepts folder (``sae.safetensors`` + ``sae.json``) and the resumable training state of
:func:`cxrfm.inference.sae.train_sae` (split from :mod:`cxrfm.inference.sae`, which re-exports these names).

It does not import :mod:`cxrfm.inference.sae` (which imports it): the SAE is any ``torch.nn.Module`` here, and
``load_sae``, which builds one, stays in :mod:`cxrfm.inference.sae`.
"""
from __future__ import annotations

import json
from pathlib import Path
import torch

from ..atomic import atomic_path
from ..errors import CxrfmError

SAE_WEIGHTS = "sae.safetensors"
SAE_JSON = "sae.json"
STATE_DIR = "state"
FORMAT = "cxrfm-matryoshka-sae/1"


class ConceptsError(CxrfmError):
    """A concepts folder is missing, damaged, from another run, or does not fit the embeddings given."""


def _tensors(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in sae.state_dict().items()}


def _save_state(folder: Path, sae: torch.nn.Module, opt: torch.optim.Optimizer, config, data_hash: str,
                history: dict, silent: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tensors = {f"sae.{k}": v for k, v in _tensors(sae).items()}
    tensors["silent"] = silent.clone()
    for i, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(v).detach().clone().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "state.safetensors") as tmp:
        save_file(tensors, tmp)
    # the JSON is the commit point: it is written after the tensors it describes
    with atomic_path(folder / "state.json") as tmp:
        Path(tmp).write_text(json.dumps({"config": config.to_json(), "data_hash": data_hash,
                                         "epoch": len(history["epochs"]), "history": history}, indent=1))


def _load_state(folder: Path, sae: torch.nn.Module, opt: torch.optim.Optimizer, config, data_hash: str,
                history: dict, silent: torch.Tensor) -> int:
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        return 0
    try:
        info = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except Exception as e:  # noqa: BLE001 - any damage means the same thing to the user
        raise ConceptsError(f"{folder}: unreadable SAE training state ({e}); delete the folder to start again") from e
    mine = {k: v for k, v in config.to_json().items() if k not in ("epochs", "notes")}
    theirs = {k: v for k, v in info.get("config", {}).items() if k not in ("epochs", "notes")}
    if mine != theirs or info.get("data_hash") != data_hash:
        what = "settings" if mine != theirs else "embeddings"
        raise ConceptsError(f"{folder}: holds an SAE training state with other {what}; resume with the same "
                            f"settings and data, or delete {folder} to start again")
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    silent.copy_(tensors["silent"])
    state = opt.state_dict()
    for i in range(len(state["param_groups"][0]["params"])):
        keys = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if keys:
            state["state"][i] = keys
    opt.load_state_dict(state)
    history.update(info["history"])
    history["resumed_from"] = int(info["epoch"])
    return int(info["epoch"])


def save_sae(sae: torch.nn.Module, folder: str | Path, meta: dict) -> Path:
    """Write ``sae.safetensors`` + ``sae.json`` (settings, ``meta``: the run, embeddings and metrics)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / SAE_WEIGHTS) as tmp:
        save_file(_tensors(sae), tmp)
    with atomic_path(folder / SAE_JSON) as tmp:
        Path(tmp).write_text(json.dumps({"format": FORMAT, "d_in": sae.d_in, "config": sae.config.to_json(),
                                         **meta}, indent=1, default=float))
    return folder


def read_sae_json(folder: str | Path) -> dict:
    path = Path(folder) / SAE_JSON
    if not path.is_file():
        raise ConceptsError(f"{folder}: no {SAE_JSON}; not a concepts folder. Train one with "
                            f"`cxrfm concepts train --model RUN --data MANIFEST --out {folder}`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConceptsError(f"{path}: unreadable ({e}); re-run `cxrfm concepts train`") from e
    if info.get("format") != FORMAT:
        raise ConceptsError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}; re-run `cxrfm concepts train`")
    return info
