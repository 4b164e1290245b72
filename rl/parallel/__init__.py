"""Parallel strategies (single process, DDP, FSDP2, DeepSpeed ZeRO) and their checkpoint state."""
