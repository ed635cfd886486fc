"""Sharding a model over the processes of a ``torchrun`` / ``accelerate launch`` job (FSDP2).

For teachers bigger than one device (the paper split T5-XXL over 2 to 4 GPUs): every
transformer block, and then the whole model, is wrapped with ``torch.distributed.fsdp.
fully_shard``, so each process holds 1/world of the weights, gradients and optimizer state.
The same code runs on GPUs (NCCL) and on CPU (gloo), which is how the tests exercise it.
Checkpoints are sharded: each rank saves its local shards (safetensors, with the structure and
scalars in JSON: no pickle, see ``dora.pipeline.train.checkpoint``); the final model is gathered on
rank 0 and saved as a plain Hugging Face checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def shard_model(model: Any, device: torch.device, *, bf16: bool) -> Any:
    """Shard ``model`` in place over the default process group (blocks first, then the root)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty elsewhere); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def clip_gradients(model: Any, accelerator: Any, max_norm: float, fsdp: bool) -> None:
    if fsdp:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    else:
        accelerator.clip_grad_norm_(model.parameters(), max_norm)


def save_sharded(path: Path, model: Any, optimizer: Any, rank: int, world: int) -> None:
    """Each rank writes its local shards of the model and optimizer state (``sharded/rank-N``:
    safetensors and JSON, no pickle)."""
    from dora.pipeline.train.checkpoint import SHARDED, model_and_optimizer, write_state

    state = model_and_optimizer(model, unwrap_optimizer(optimizer))
    (path / SHARDED).mkdir(exist_ok=True)
    write_state(path / SHARDED / f"rank-{rank}", state, rank=rank, world=world)


def load_sharded(path: Path, model: Any, optimizer: Any, rank: int, world: int) -> None:
    """Copy this rank's saved shards into the freshly sharded model and optimizer; a checkpoint
    saved by another number of processes is refused (its shards are cut differently)."""
    from dora.pipeline.train.checkpoint import SHARDED, load_model_and_optimizer

    load_model_and_optimizer(path / SHARDED / f"rank-{rank}", model, unwrap_optimizer(optimizer), path, world=world,
                             rank=rank)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
