"""An anatomy model folder: the supervised U-Net and the in-context segmenter, and what trained them.

```
DIR/anatomy.json          {"unet": UNetConfig, "incontext": InContextConfig, "training": {...}}
DIR/unet.safetensors      the supervised U-Net (lungs left / right, heart)
DIR/incontext.safetensors the in-context segmenter
```

``training`` records, for each network, the data it saw: the manifests, the rows' image paths and
which mask columns were read (the in-context model's pretext masks never include a heart mask).

Where a folder is not named, :func:`default_anatomy_dir` is used: ``$CXRFM_ANATOMY`` if set, else the
folder shipped inside the package (made by ``benchmarks/anatomy_shipped.py`` from MIT / CC BY /
public-domain images only; see docs/anatomy.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CxrfmError
from .anatomy_nets import InContextConfig, InContextSegmenter, UNet, UNetConfig

META = "anatomy.json"
UNET = "unet.safetensors"
INCONTEXT = "incontext.safetensors"
SHIPPED = Path(__file__).resolve().parent / "anatomy_weights"


class AnatomyModelError(CxrfmError):
    """An anatomy folder that is missing, incomplete or corrupted."""


def default_anatomy_dir() -> Path:
    env = os.environ.get("CXRFM_ANATOMY")
    return Path(env) if env else SHIPPED


def save_anatomy(path: str | Path, unet: UNet | None = None, incontext: InContextSegmenter | None = None,
                 training: dict | None = None) -> Path:
    """Write (or update) an anatomy folder; networks not given are kept from an existing folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = read_meta(path) if (path / META).is_file() else {"training": {}}
    for name, net, file in (("unet", unet, UNET), ("incontext", incontext, INCONTEXT)):
        if net is None:
            continue
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
        with atomic_path(path / file) as tmp:
            save_file(state, tmp)
        meta[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(net.config).items()}
    meta.setdefault("training", {}).update(training or {})
    with atomic_path(path / META) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    return path


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    f = path / META
    if not f.is_file():
        if path.resolve() == SHIPPED:
            raise AnatomyModelError(f"the shipped anatomy model is not in this install ({path}); set CXRFM_ANATOMY "
                                    f"or pass --model DIR (train one with `cxrfm anatomy train`)")
        raise AnatomyModelError(f"{path}: not an anatomy model folder (no {META}); train one with "
                                f"`cxrfm anatomy train --data MANIFEST --out DIR`, or leave --model out for "
                                f"the shipped one")
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise AnatomyModelError(f"{f}: unreadable ({e}); retrain the folder or delete it") from None
    if not isinstance(meta, dict):
        raise AnatomyModelError(f"{f}: expected a JSON object")
    return meta


def _load(path: Path, file: str, net: torch.nn.Module) -> torch.nn.Module:
    from safetensors.torch import load_file

    f = path / file
    if not f.is_file():
        raise AnatomyModelError(f"{f}: missing; the folder holds no such network (retrain it with "
                                f"`cxrfm anatomy train`)")
    try:
        state = load_file(str(f))
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # noqa: BLE001 - safetensors / torch raise several kinds on a damaged file
        raise AnatomyModelError(f"{f}: cannot be loaded ({type(e).__name__}: {str(e)[:200]}); the file is damaged "
                                f"or from another version: retrain the folder") from None
    return net.eval()


def _load_net(path: str | Path | None, key: str, what: str, config_cls, net_cls, file: str):
    path = Path(path) if path is not None else default_anatomy_dir()
    cfg = read_meta(path).get(key)
    if not isinstance(cfg, dict):
        raise AnatomyModelError(f"{path}: no {what} in {META}")
    cfg = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return _load(path, file, net_cls(cfg))


def load_unet(path: str | Path | None = None) -> UNet:
    """The supervised U-Net of an anatomy folder (None: :func:`default_anatomy_dir`)."""
    return _load_net(path, "unet", "supervised U-Net", UNetConfig, UNet, UNET)


def load_incontext(path: str | Path | None = None) -> InContextSegmenter:
    """The in-context segmenter of an anatomy folder (None: :func:`default_anatomy_dir`)."""
    return _load_net(path, "incontext", "in-context segmenter", InContextConfig, InContextSegmenter, INCONTEXT)
