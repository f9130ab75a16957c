"""How a run spreads its model over the processes torchrun starts: DDP replicates it (the
default), FSDP shards it (PyTorch's ``fully_shard``, for ViT-L/H whose weights, gradients and
AdamW state do not fit one GPU), and both checkpoint the same full, unsharded tensors, so a run
can be resumed in either mode and on any number of processes.

FSDP shards every transformer block of the encoder, the predictor and the EMA target encoder
(one all-gather per block, freed after use), then each network and the whole IWM for what is
left (patch embedding, norms, mask token). The encoders are entered through ``tokens``, not
``forward``, so that method is registered with FSDP to gather their own parameters.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import check_fits, load_weights
from .models import IWM

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

# torch.distributed's submodules are imported where used: a plain single-process run (or a
# torch build without distributed support) never needs them


def _options(full: bool, cpu_offload: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=cpu_offload)


def shard(model: IWM, mesh: "DeviceMesh", param_dtype: torch.dtype | None = None) -> IWM:
    """Shard ``model`` in place over the processes of ``mesh`` with FSDP2. With ``param_dtype``
    (bf16) the all-gathered weights are cast to it; gradients are still reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kw: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for net in (model.encoder, model.predictor, model.target_encoder):
        for block in net.blocks:
            fully_shard(block, **kw)
        fully_shard(net, **kw)
    for enc in (model.encoder, model.target_encoder):
        register_fsdp_forward_method(enc, "tokens")
    fully_shard(model, **kw)
    return model


@functools.cache
def _dtensor_type() -> type | None:
    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _is_dtensor(t: torch.Tensor) -> bool:
    kind = _dtensor_type()
    return kind is not None and isinstance(t, kind)


def is_sharded(module: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in module.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded result such as the gradient norm) gathered; a tensor as it is."""
    return t.full_tensor() if _is_dtensor(t) else t


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's full state dict (a collective when sharded: every process must call it;
    rank 0 gets the tensors, the others an empty dict)."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_options(full=True, cpu_offload=True))
    return module.state_dict()


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a full state dict into a plain or a sharded module (each process keeps its shard)."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        check_fits(module.state_dict(), state, what)  # DTensors report their global shapes
        set_model_state_dict(module, state, options=_options(full=True))
    else:
        load_weights(module, state, what)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name (not position), full and unsharded: the same
    layout from DDP and FSDP, so either can resume the other's checkpoint."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sharded = is_sharded(model)  # gathered on rank 0's CPU; unsharded, as it is
    return get_optimizer_state_dict(model, optimizer, options=_options(full=sharded, cpu_offload=sharded))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what :func:`optimizer_state` wrote (each process keeps its shard when sharded)."""
    params = state["param_groups"][0]["params"] if state.get("param_groups") else []
    if params and isinstance(params[0], int):  # keyed by position: a checkpoint from before FSDP
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options(full=True))
