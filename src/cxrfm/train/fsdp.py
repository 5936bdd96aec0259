"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for towers that do not fit one device: ``pretrain(fsdp=True)``.

Parameters, gradients and optimiser state are sharded over the ranks (Zhao et al., "PyTorch FSDP",
VLDB 2023; FSDP2 shards each parameter on dim 0 as a DTensor). Each layer of the towers' layer lists
(transformer blocks, conv stages) is its own unit, so only one layer is gathered at a time, then the
rest of the model is the root unit. Scalar parameters (the logit scale and bias) cannot be sharded:
they stay replicated outside FSDP and their gradients are averaged here, as DDP would.

Checkpoints stay full tensors in the usual files (weights and optimiser state are gathered when a
checkpoint is written), so a run started under FSDP resumes under DDP or FSDP and ``load_model`` reads
its weights. The optimiser is built again over the sharded parameters, its state (restored from a
checkpoint before sharding) moved onto the shards.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..config import TrainConfig
from .distributed import DistContext
from .optim import make_optimizer

FORWARD_METHODS = ("encode_image", "encode_text", "text_features")  # entry points besides forward()


def layer_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost members of the model's ``ModuleList``s that hold trainable parameters."""
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            for i, layer in enumerate(module):
                if any(p.requires_grad for p in layer.parameters()):
                    found[f"{name}.{i}"] = layer
    names = sorted(found)
    return [found[n] for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def shard_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                ctx: DistContext) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Shard ``model`` in place; return it and a new optimiser holding ``optimizer``'s state, sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import DTensor, distribute_tensor

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    for layer in layer_units(model):  # children before the root, as fully_shard requires
        fully_shard(layer, mesh=mesh)
    scalars = {p for p in model.parameters() if p.dim() == 0}
    fully_shard(model, mesh=mesh, ignored_params=scalars or None)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    new = make_optimizer(model, cfg)
    old_params = [p for g in optimizer.param_groups for p in g["params"]]
    new_params = [p for g in new.param_groups for p in g["params"]]  # same order: named_parameters()
    for old_p, new_p in zip(old_params, new_params):
        state = optimizer.state.get(old_p)
        if not state:
            continue
        new.state[new_p] = {k: distribute_tensor(v.to(ctx.device), new_p.device_mesh, new_p.placements)
                            if isinstance(new_p, DTensor) and torch.is_tensor(v) and v.shape == new_p.shape else v
                            for k, v in state.items()}
    for old_g, new_g in zip(optimizer.param_groups, new.param_groups):
        new_g.update({k: v for k, v in old_g.items() if k != "params"})
    return model, new


def average_replicated_grads(model: torch.nn.Module, ctx: DistContext) -> None:
    """Average the gradients of the parameters FSDP leaves replicated (the scalars), over ranks."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if p.grad is not None and not isinstance(p, DTensor):
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


def full(t):
    """A DTensor gathered to its full value (a collective: every rank calls it); other values as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class FullState:
    """The full weights and optimiser state of a sharded run, gathered on every rank, in the shapes
    ``save_checkpoint`` and the debug fingerprint read (``weights_to_save()``, ``state_dict()``)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.weights = {k: full(v).detach().cpu() for k, v in model.weights_to_save().items()}
        sd = optimizer.state_dict()
        self.optimizer = {"state": {i: {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                                    for i, s in sd["state"].items()},
                          "param_groups": sd["param_groups"]}

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        return self.weights

    def state_dict(self) -> dict:
        return self.optimizer
