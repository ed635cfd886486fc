"""Sharding a model over the processes of a ``torchrun`` / ``accelerate launch`` job (FSDP2).

For teachers bigger than one device (the paper split T5-XXL over 2 to 4 GPUs): every
transformer block, and then the whole model, is wrapped with ``torch.distributed.fsdp.
fully_shard``, so each process holds 1/world of the weights, gradients and optimizer state.
The same code runs on GPUs (NCCL) and on CPU (gloo), which is how the tests exercise it.
Checkpoints are sharded (``torch.distributed.checkpoint``); the final model is gathered on
rank 0 and saved as a plain Hugging Face checkpoint.
"""

from __future__ import annotations

import json
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


def save_sharded(path: Path, model: Any, optimizer: Any, scheduler: Any, rank: int) -> None:
    """Each rank writes its shard of the model and optimizer state, plus its RNG state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, _inner(optimizer))
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / "sharded"))
    torch.save({"cpu": torch.get_rng_state()}, path / f"rng-{rank}.pt")
    if rank == 0:
        (path / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))


def load_sharded(path: Path, model: Any, optimizer: Any, scheduler: Any, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, _inner(optimizer))
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / "sharded"))
    set_state_dict(model, _inner(optimizer), model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = path / f"rng-{rank}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True)["cpu"])
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
