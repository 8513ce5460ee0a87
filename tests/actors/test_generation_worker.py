"""GenerationWorker: vLLM in a Ray actor; weights synced in place match transformers."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.batches import PromptRequest, SamplingOptions
from actors.generation_worker import remote_generation_worker
from actors.weight_sync import export_weights
from pipelines.evaluate import read_prompts
from rayalign.models.loading import load_causal_lm, load_tokenizer
from rayalign.models.logprobs import token_logprobs

pytestmark = pytest.mark.slow


def _hf_greedy(model, tok, prompt_ids: list[list[int]], max_new: int) -> list[list[int]]:
    out = []
    for ids in prompt_ids:
        gen = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        out.append(gen[0, len(ids) :].tolist())
    return out


def _hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        lp = token_logprobs(model(ids).logits, ids)[0]
    return lp[len(prompt_ids) - 1 :]


def _worst_logprob_gap(model, samples) -> float:
    """Largest |vLLM sampling log-prob - transformers log-prob| over the sampled tokens."""
    return max(
        (torch.tensor(s.logprobs) - _hf_logprobs(model, s.prompt_ids, s.completion_ids))
        .abs()
        .max()
        .item()
        for s in samples
    )


def _sharpen(model, seed: int) -> None:
    """Random but decisive weights: distinct prompts get distinct greedy answers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def test_weight_sync_makes_vllm_match_transformers(ray_local, tiny_model, arithmetic_data):
    convs, _ = read_prompts(arithmetic_data / "prompts_test.jsonl")
    requests = [PromptRequest(i, c) for i, c in enumerate(convs[:12])]
    tok = load_tokenizer(str(tiny_model))
    worker = remote_generation_worker(num_cpus=1).remote(str(tiny_model), name="gen-a")

    learner = load_causal_lm(str(tiny_model))
    before = ray.get(
        worker.generate.remote(requests, SamplingOptions(n=1, temperature=0.0, max_tokens=8))
    )
    _sharpen(learner, seed=1)
    version = ray.get(worker.load_weights.remote(ray.put(export_weights(learner)), 1))
    assert version == 1

    after = ray.get(
        worker.generate.remote(requests, SamplingOptions(n=1, temperature=0.0, max_tokens=8))
    )
    assert [s.weight_version for s in after] == [1] * len(requests)
    expected = _hf_greedy(learner, tok, [s.prompt_ids for s in after], 8)
    got = [s.completion_ids for s in after]
    assert got == expected
    assert got != [s.completion_ids for s in before]
    assert len({tuple(x) for x in got}) > 1, "weights too weak to tell prompts apart"

    # Sampling log-probs equal the learner's recomputed log-probs on the same tokens.
    sampled = ray.get(
        worker.generate.remote(
            requests, SamplingOptions(n=2, temperature=1.0, max_tokens=8, seed=0)
        )
    )
    assert len(sampled) == 2 * len(requests) and [s.index for s in sampled[:4]] == [0, 0, 1, 1]
    worst = _worst_logprob_gap(learner, sampled)
    assert worst < 1e-3, worst
    ray.kill(worker)


def test_lora_engine_takes_adapters_and_samples_as_the_peft_policy(
    ray_local, tiny_model, arithmetic_data, tmp_path
):
    """An engine with LoRA support starts from a rayalign LoRA checkpoint (the base it names,
    its adapters as the first version) and takes each update as adapters alone; greedy
    answers and sampling log-probs are the peft policy's."""
    from actors.policy_learner import PolicyLearner
    from rayalign.config import LoraConfig
    from rayalign.rl_config import RLConfig

    base = load_causal_lm(str(tiny_model))
    _sharpen(base, seed=1)
    base.save_pretrained(tmp_path / "base")
    load_tokenizer(str(tiny_model)).save_pretrained(tmp_path / "base")
    rl = RLConfig(lora=LoraConfig(r=8, alpha=16), lora_sync="adapters")
    learner = PolicyLearner(str(tmp_path / "base"), rl)
    policy = learner.policy.eval()

    def move_adapters(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)

    move_adapters(2)
    learner.save(str(tmp_path / "ckpt"))  # merged weights, adapters in adapter/
    convs, _ = read_prompts(arithmetic_data / "prompts_test.jsonl")
    requests = [PromptRequest(i, c) for i, c in enumerate(convs[:12])]
    tok = load_tokenizer(str(tiny_model))
    worker = remote_generation_worker(num_cpus=1).remote(
        str(tmp_path / "ckpt"), name="gen-lora", weight_version=3, lora={"r": 8, "alpha": 16}
    )
    greedy = SamplingOptions(n=1, temperature=0.0, max_tokens=8)

    first = ray.get(worker.generate.remote(requests, greedy))
    assert [s.weight_version for s in first] == [3] * len(requests)
    assert [s.completion_ids for s in first] == _hf_greedy(
        policy, tok, [s.prompt_ids for s in first], 8
    )

    move_adapters(3)
    adapters = learner.weights()
    assert all("lora_" in name for name in adapters)
    assert ray.get(worker.load_weights.remote(adapters, 4)) == 4
    after = ray.get(worker.generate.remote(requests, greedy))
    got = [s.completion_ids for s in after]
    assert got == _hf_greedy(policy, tok, [s.prompt_ids for s in after], 8)
    assert got != [s.completion_ids for s in first]
    assert len({tuple(x) for x in got}) > 1, "weights too weak to tell prompts apart"

    sampled = ray.get(
        worker.generate.remote(
            requests, SamplingOptions(n=2, temperature=1.0, max_tokens=8, seed=0)
        )
    )
    worst = _worst_logprob_gap(policy, sampled)
    assert worst < 1e-3, worst

    # Whole-model weights are refused by name: this engine keeps its base frozen.
    with pytest.raises(ray.exceptions.RayTaskError, match="takes adapter weights only"):
        ray.get(worker.load_weights.remote(export_weights(base), 5))
    ray.kill(worker)
