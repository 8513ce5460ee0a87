"""The weight-update group's transport: buckets, broadcast from rank 0, and failure."""

from __future__ import annotations

import gc
import threading
import time
from datetime import timedelta

import pytest
import torch
from torch.distributed import TCPStore

from actors.weight_sync import (
    StagingBuffers,
    WeightGroup,
    bucket_plan,
    join_group,
    receive_buckets,
    send_buckets,
)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(50, 8, generator=g)
    return {
        "model.embed_tokens.weight": embed,
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=g),
        "model.norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.randn(8, generator=g),
        "lm_head.weight": embed,  # tied: sent under both names, as vLLM's CPU path needs
    }


def test_buckets_hold_one_dtype_and_stay_under_the_size():
    named = _weights()
    plan = bucket_plan(named, bucket_bytes=600 * 4)
    assert sorted(s.name for b in plan for s in b) == sorted(named)
    for bucket in plan:
        assert len({s.dtype for s in bucket}) == 1
        size = sum(s.numel * named[s.name].element_size() for s in bucket)
        assert size <= 600 * 4 or len(bucket) == 1
    assert len(plan) == 3  # embed + up_proj + layernorm | lm_head | the bf16 norm
    # Without a size limit, one bucket per dtype.
    assert sorted(len(b) for b in bucket_plan(named)) == [1, 4]


def _group(world: int) -> tuple[WeightGroup, TCPStore]:
    store = TCPStore(
        "127.0.0.1", 0, world, True, timeout=timedelta(seconds=30), wait_for_workers=False
    )
    return WeightGroup("127.0.0.1", store.port, world, "test-group"), store


def test_every_rank_receives_rank_0s_tensors_exactly():
    named = _weights()
    plan = bucket_plan(named, bucket_bytes=1024)
    group, store = _group(3)
    got: dict[int, list] = {}

    def receiver(rank: int) -> None:
        got[rank] = receive_buckets(join_group(group, rank), plan)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    nbytes, _, _ = send_buckets(join_group(group, 0, store), named, plan)
    for t in threads:
        t.join(timeout=30)
    assert nbytes == sum(t.numel() * t.element_size() for t in named.values())
    for rank in (1, 2):
        received = dict(got[rank])
        assert list(received) == [s.name for b in plan for s in b]
        for name, tensor in named.items():
            assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor)


def test_a_receiver_fails_at_once_when_rank_0_drops_the_group():
    """The pool's fallback relies on this: closing rank 0's end ends the peers' waits
    (rather than the group's timeout)."""
    named = _weights()
    plan = bucket_plan(named)
    group, store = _group(2)
    outcome: dict[str, object] = {}

    def receiver() -> None:
        pg = join_group(group, 1)
        start = time.monotonic()
        try:
            receive_buckets(pg, plan)
        except RuntimeError as err:
            outcome["error"] = str(err)
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=receiver)
    thread.start()
    sender = join_group(group, 0, store)
    time.sleep(1.0)  # the receiver is waiting for the first bucket
    del sender
    gc.collect()
    thread.join(timeout=30)
    assert "error" in outcome, outcome
    assert outcome["seconds"] < 20  # the group's timeout is 60 s


@pytest.mark.parametrize("bucket_bytes", [1, 10**9])
def test_bucket_size_does_not_change_what_arrives(bucket_bytes):
    named = _weights()
    plan = bucket_plan(named, bucket_bytes)
    group, store = _group(2)
    got: list = []
    thread = threading.Thread(
        target=lambda: got.extend(receive_buckets(join_group(group, 1), plan))
    )
    thread.start()
    send_buckets(join_group(group, 0, store), named, plan)
    thread.join(timeout=30)
    assert all(torch.equal(t, named[n]) for n, t in got) and len(got) == len(named)


def test_reused_pack_and_receive_buffers_carry_each_syncs_new_values():
    """The sender packs bucket i+1 into one of two reused buffers while bucket i is sent;
    the receiver keeps its buffers from sync to sync. Neither may leak one bucket's or one
    sync's values into another."""
    g = torch.Generator().manual_seed(1)
    named = {f"layer.{i}.weight": torch.randn(64, generator=g) for i in range(10)}
    named["big.weight"] = torch.randn(400, generator=g)  # a bucket of its own, sent as is
    plan = bucket_plan(named, bucket_bytes=2 * 64 * 4)  # two tensors per bucket
    assert sum(len(b) == 2 for b in plan) == 5
    group, store = _group(2)
    members: dict[int, object] = {}
    joining = threading.Thread(target=lambda: members.update({1: join_group(group, 1)}))
    joining.start()
    sender = join_group(group, 0, store)
    joining.join(timeout=30)
    staging, buffers = StagingBuffers(), []
    pointers: list[list[int]] = []
    for sync in range(3):
        versioned = {n: t + sync for n, t in named.items()}
        got: list = []
        thread = threading.Thread(
            target=lambda out=got: out.extend(receive_buckets(members[1], plan, buffers=buffers))
        )
        thread.start()
        send_buckets(sender, versioned, plan, staging)
        thread.join(timeout=30)
        assert len(got) == len(named)
        assert all(torch.equal(t, versioned[n]) for n, t in got), f"sync {sync}"
        pointers.append([b.data_ptr() for b in buffers])
    assert pointers[0] == pointers[1] == pointers[2]  # the receive buffers were reused
