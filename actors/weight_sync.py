"""Moving policy weights from the learner into vLLM engines in place.

The learner exports its state dict (HF parameter names, CPU tensors); each
generation worker hands the tensors to its engine's workers through
`WeightSyncExtension`, a vLLM worker extension that calls vLLM's in-place
`reload_weights` (which also re-packs weights for the CPU kernels).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from rayalign.models.lora import adapter_weights, is_peft, merged_weights

EXTENSION_CLS = "actors.weight_sync.WeightSyncExtension"


def export_weights(model: torch.nn.Module, adapters_only: bool = False) -> dict[str, torch.Tensor]:
    """A model's parameters and buffers on the CPU, detached, keyed by HF names.

    CPU tensors are not copied: whoever receives them copies once (Ray when it stores an
    actor method's return value, vLLM's loader into its own parameters), and neither
    holds on to them past the next update.

    `lm_head.weight` is always included, tied or not: vLLM's CPU backend keeps a
    repacked copy of the LM head, which an in-place reload of the embeddings alone
    leaves stale (verified: greedy outputs diverge from transformers without it).
    A LoRA policy gives its adapters alone with `adapters_only` (for engines with LoRA
    support, `GenerationWorker(lora=...)`), else its merged weights
    (`rayalign.models.lora.merged_weights`), which engines reload in place.
    """
    if is_peft(model) and adapters_only:
        return adapter_weights(model)
    if is_peft(model):  # LoRA: the merged weights, under the base model's names
        out = merged_weights(model)
    else:
        out = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if "lm_head.weight" not in out and getattr(model.config, "tie_word_embeddings", False):
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); runs in the engine's workers."""

    def load_policy_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load weights in place; returns how many tensors were given."""
        items = list(named_tensors)
        self.reload_weights(weights_iterator=iter(items))
        return len(items)


# -- collective transport (split placement) -----------------------------------------------
# Learner rank 0 broadcasts its weights to the rollout workers over a torch.distributed
# process group of its own (gloo on CPU, NCCL on GPU), in buckets of one dtype, never
# through the driver or the object store. The group is built apart from the default group
# (a TCPStore hosted by rank 0, no `init_process_group`), so it can be rebuilt whenever the
# pool's membership changes, as OpenRLHF's and verl's weight-update groups are.

BUCKET_BYTES = 64 * 2**20
# Every member joins and each sync runs while all are idle, so a collective that waits this
# long has lost a peer; the pool then falls back to the object store.
GROUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class WeightGroup:
    """Where a weight-update group meets: rank 0's TCPStore, its size and a unique id."""

    host: str
    port: int
    world_size: int
    group_id: str
    backend: str = "gloo"


def bucket_plan(
    named: dict[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES
) -> list[list[TensorSpec]]:
    """Tensors grouped into buckets of one dtype and about `bucket_bytes` each, in order."""
    buckets: list[list[TensorSpec]] = []
    open_by_dtype: dict[torch.dtype, tuple[list[TensorSpec], int]] = {}
    for name, t in named.items():
        spec = TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
        bucket, size = open_by_dtype.get(t.dtype, (None, 0))
        nbytes = t.numel() * t.element_size()
        if bucket is None or (size and size + nbytes > bucket_bytes):
            bucket, size = [], 0
            buckets.append(bucket)
        bucket.append(spec)
        open_by_dtype[t.dtype] = (bucket, size + nbytes)
    return buckets


def open_store(world_size: int, backend: str = "gloo") -> tuple[WeightGroup, Any]:
    """Host a TCPStore for a new group on a free port of this node (rank 0 calls this)."""
    import ray
    from torch.distributed import TCPStore

    store = TCPStore(
        ray.util.get_node_ip_address(),
        0,
        world_size,
        True,
        timeout=timedelta(seconds=GROUP_TIMEOUT_S),
        wait_for_workers=False,
    )
    group = WeightGroup(
        ray.util.get_node_ip_address(), store.port, world_size, uuid.uuid4().hex, backend
    )
    return group, store


def join_group(group: WeightGroup, rank: int, store: Any = None) -> Any:
    """This process's member of `group` (every rank calls this at once; rank 0 passes the
    store it hosts)."""
    from torch.distributed import PrefixStore, TCPStore

    timeout = timedelta(seconds=GROUP_TIMEOUT_S)
    if store is None:
        store = TCPStore(group.host, group.port, group.world_size, False, timeout=timeout)
    prefixed = PrefixStore(group.group_id, store)
    if group.backend == "nccl":
        from torch.distributed import ProcessGroupNCCL

        return ProcessGroupNCCL(prefixed, rank, group.world_size)
    from torch.distributed.distributed_c10d import ProcessGroupGloo

    return ProcessGroupGloo(prefixed, rank, group.world_size, timeout)


def _broadcast(pg: Any, tensor: torch.Tensor) -> Any:
    """Start broadcasting `tensor` from rank 0; returns the work to wait on."""
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = 0
    return pg.broadcast([tensor], options)


class StagingBuffers:
    """Two reusable pack buffers per dtype for the sender, so bucket i+1 is packed while
    bucket i is on the wire, into memory already touched (a new buffer per bucket faults in
    its pages on first write: 0.37 s of a 1.2 s sync on `medium` before). Holds at most
    2 x the largest multi-tensor bucket per dtype."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device, int], torch.Tensor] = {}

    def get(self, dtype: torch.dtype, device: torch.device, numel: int, slot: int) -> torch.Tensor:
        key = (dtype, device, slot)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


def send_buckets(
    pg: Any,
    named: dict[str, torch.Tensor],
    plan: list[list[TensorSpec]],
    staging: StagingBuffers | None = None,
) -> tuple[int, float, float]:
    """Broadcast `named` bucket by bucket from rank 0, packing the next bucket while the
    previous one is sent. A one-tensor bucket goes as it is, without a copy. Returns
    (bytes, pack s, send s: time spent waiting for the transport)."""
    staging = staging or StagingBuffers()
    total, pack_s, send_s = 0, 0.0, 0.0
    in_flight: dict[int, Any] = {}  # staging slot -> its broadcast's work
    for i, bucket in enumerate(plan):
        slot = i % 2
        if slot in in_flight:  # this slot's buffer is still on the wire
            t = time.perf_counter()
            in_flight.pop(slot).wait()
            send_s += time.perf_counter() - t
        t0 = time.perf_counter()
        tensors = [named[s.name].detach().reshape(-1) for s in bucket]
        if len(tensors) == 1:
            flat = tensors[0].contiguous()
        else:
            numel = sum(t.numel() for t in tensors)
            flat = staging.get(tensors[0].dtype, tensors[0].device, numel, slot)
            torch.cat(tensors, out=flat)
        pack_s += time.perf_counter() - t0
        work = _broadcast(pg, flat)
        if len(tensors) == 1:  # nothing to reuse: wait here, holding no reference
            t = time.perf_counter()
            work.wait()
            send_s += time.perf_counter() - t
        else:
            in_flight[slot] = work
        total += flat.numel() * flat.element_size()
    t = time.perf_counter()
    for work in in_flight.values():
        work.wait()
    send_s += time.perf_counter() - t
    return total, pack_s, send_s


def receive_buckets(
    pg: Any,
    plan: list[list[TensorSpec]],
    device: str = "cpu",
    buffers: list[torch.Tensor] | None = None,
) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs rank 0 broadcasts with `send_buckets`: views into one
    buffer per bucket, no further copy. `buffers` (one per bucket, from an earlier call
    with the same plan) are reused when given; new ones are appended to it otherwise."""
    out: list[tuple[str, torch.Tensor]] = []
    works = []
    for i, bucket in enumerate(plan):
        if buffers is not None and i < len(buffers):
            flat = buffers[i]
        else:
            flat = torch.empty(
                sum(s.numel for s in bucket), dtype=getattr(torch, bucket[0].dtype), device=device
            )
            if buffers is not None:
                buffers.append(flat)
        works.append(_broadcast(pg, flat))  # queued in order; rank 0 sends them in order
        offset = 0
        for s in bucket:
            out.append((s.name, flat[offset : offset + s.numel].view(s.shape)))
            offset += s.numel
    for work in works:
        work.wait()
    return out


class WeightSender:
    """Mixed into the learner: rank 0 of weight-update groups (`weights()` gives the state
    dict to send)."""

    _weight_pg: Any = None
    _weight_store: Any = None
    _weight_staging: StagingBuffers | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weight_plan(self, bucket_bytes: int = BUCKET_BYTES) -> list[list[TensorSpec]]:
        return bucket_plan(self.weights(), bucket_bytes)

    def open_weight_group(self, world_size: int) -> WeightGroup:
        """Host a new group (this actor is rank 0); then every rank calls `join_weight_group`."""
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        group, self._weight_store = open_store(world_size, backend)
        self._weight_pg = None
        return group

    def join_weight_group(self, group: WeightGroup) -> None:
        self._weight_pg = join_group(group, 0, self._weight_store)

    def broadcast_weights(self, plan: list[list[TensorSpec]]) -> dict[str, float]:
        """Send the current weights to the group. Returns bytes and seconds per phase."""
        t0 = time.perf_counter()
        named = self.weights()
        if self._weight_staging is None:
            self._weight_staging = StagingBuffers()
        nbytes, pack_s, send_s = send_buckets(self._weight_pg, named, plan, self._weight_staging)
        return {
            "bytes": nbytes,
            "export_s": time.perf_counter() - t0 - pack_s - send_s,
            "pack_s": pack_s,
            "send_s": send_s,
        }

    def close_weight_group(self) -> None:
        self._weight_pg = self._weight_store = None


class WeightReceiver:
    """Mixed into generation workers: a non-zero rank of weight-update groups.
    `load_received(named, version)` loads what arrived."""

    _weight_pg: Any = None
    _weight_plan: list[list[TensorSpec]] | None = None
    # Receive buffers kept from sync to sync on CPU (pages already mapped); on GPUs the
    # caching allocator makes new ones cheap and the memory goes back to the engine.
    _weight_buffers: list[torch.Tensor] | None = None

    def load_received(self, named: list[tuple[str, torch.Tensor]], version: int) -> None:
        raise NotImplementedError

    def join_weight_group(self, group: WeightGroup, rank: int, plan) -> None:
        self._weight_pg, self._weight_plan = None, plan
        self._weight_buffers = None if torch.cuda.is_available() else []
        self._weight_pg = join_group(group, rank)

    def receive_weights(self, version: int) -> dict[str, float]:
        """Receive rank 0's broadcast and load it. Returns seconds per phase."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        named = receive_buckets(self._weight_pg, self._weight_plan, device, self._weight_buffers)
        t1 = time.perf_counter()
        self.load_received(named, version)
        return {"receive_s": t1 - t0, "load_s": time.perf_counter() - t1}
