"""The training loop and what it stands on: batches, pickle-free checkpoints, FSDP, process ranks, curves."""
