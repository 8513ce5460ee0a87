"""Data parallelism of the RL learner ranks: torch DDP over a process group of their own.

Every rank gets the whole batch and trains on its shard (rows `rank::world_size`). Each
optimizer step averages the loss over one minibatch of the whole batch, as a single
learner would: the ranks agree on the number of minibatches, each weighs its rows by the
minibatch's global sequence and token counts, and DDP averages the gradients (gloo on
CPU, NCCL on GPU), overlapping the all-reduce with the backward pass.
"""

from __future__ import annotations

import contextlib
import math
import socket

import torch


def rendezvous_address() -> str:
    """host:port, free on the calling process's node, for a process group's rank 0."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"


def join_group(master: str, rank: int, world_size: int) -> None:
    """Join the default process group at rank 0's `master` address (all ranks at once)."""
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size
    )


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """`model` under DDP (rank 0's weights broadcast to every rank), for the training
    forward; frozen parameters (LoRA's base) take no part in the all-reduce."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        forward_sync_buffers=False,  # rotary tables and the like are equal on every rank
    )


def grad_sync(model: torch.nn.Module, last: bool):
    """Context of one micro-batch's backward: gradients all-reduce on the minibatch's
    last micro-batch only (DDP's `no_sync` before it); nothing to do unwrapped."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def minibatch_count(batch_rows: int, minibatch_size: int) -> int:
    """Optimizer steps per epoch over a batch of `batch_rows`, the same on every rank."""
    return max(1, math.ceil(batch_rows / minibatch_size))


def minibatches(order: list[int], count: int) -> list[list[int]]:
    """A rank's shuffled rows `order` in `count` slices of equal size (the last ones
    shorter or empty when the shard is small): every rank steps `count` times."""
    size = max(1, math.ceil(len(order) / count))
    return [order[i * size : (i + 1) * size] for i in range(count)]


def global_counts(mask: torch.Tensor, world_size: int) -> tuple[float, float]:
    """(sequences, tokens) of one minibatch over every rank, from this rank's `mask`
    [B, T] of it (B may be 0)."""
    counts = torch.tensor([float(mask.shape[0]), float(mask.sum())], dtype=torch.float64)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return float(counts[0]), max(float(counts[1]), 1.0)
