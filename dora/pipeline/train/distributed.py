"""Where this process stands in a ``torchrun`` / ``accelerate launch`` job (from the launcher's env)."""

from __future__ import annotations

import os


def process_rank() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not launched as several processes."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def end_distributed() -> None:
    """Wait for every rank, then leave the process group (after a multi-process fine-tune)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
