"""RolloutPool: order, exactly-once answers, scaling while sampling, a killed worker."""

from __future__ import annotations

import pytest
import ray

from actors.batches import PromptRequest, SamplingOptions
from actors.generation_worker import remote_generation_worker
from actors.rollout_pool import RolloutPool
from pipelines.evaluate import read_prompts

pytestmark = pytest.mark.slow
SAMPLING = SamplingOptions(n=2, temperature=1.0, max_tokens=4, seed=0)


@pytest.fixture()
def make_worker(ray_local, tiny_model):
    cls = remote_generation_worker(num_cpus=0.5)
    return lambda name: cls.options(name=None).remote(str(tiny_model), name=name)


def _requests(data, n):
    convs, _ = read_prompts(data / "prompts_train.jsonl")
    return [PromptRequest(i, c) for i, c in enumerate(convs[:n])]


def _check_exactly_once(requests, results):
    assert len(results) == len(requests)
    for req, samples in zip(requests, results, strict=True):
        assert len(samples) == SAMPLING.n and {s.index for s in samples} == {req.index}


def test_scale_1_to_2_to_1_while_generating(make_worker, arithmetic_data):
    plan = iter([None, 2, None, None, None, 1])
    pool = RolloutPool(make_worker, num_workers=1, chunk_size=2, target=lambda: next(plan, None))
    requests = _requests(arithmetic_data, 24)
    results = pool.generate(requests, SAMPLING)
    _check_exactly_once(requests, results)
    workers_used = {s.worker for samples in results for s in samples}
    assert workers_used == {"gen-0", "gen-1"}
    assert pool.size == 1
    pool.shutdown()


def test_killed_worker_mid_batch_is_replaced(make_worker, arithmetic_data):
    polls = {"n": 0}

    def kill_gen1_on_third_poll():
        polls["n"] += 1
        if polls["n"] == 3:
            ray.kill(pool.workers["gen-1"], no_restart=True)
        return None

    pool = RolloutPool(make_worker, num_workers=2, chunk_size=2, target=kill_gen1_on_third_poll)
    requests = _requests(arithmetic_data, 20)
    results = pool.generate(requests, SAMPLING)
    _check_exactly_once(requests, results)
    assert pool.stats.replaced_workers == 1 and pool.stats.retried_chunks == 1
    assert set(pool.workers) == {"gen-0", "gen-2"}
    pool.shutdown()
