"""GenerationWorker: a vLLM engine in a Ray actor that samples completions.

It returns token ids with the sampling log-probs, loads new policy weights in place
(carrying a weight version) and resets its prefix cache after each load.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions
from actors.weight_sync import EXTENSION_CLS, WeightReceiver


class GenerationWorker(WeightReceiver):
    """Wraps one `vllm.LLM`. Create with `ray.remote(GenerationWorker).options(...)`.

    Args:
        model_path: HF directory or id of the initial policy.
        name: label put on every sample (which worker produced it).
        max_model_len: longest prompt + completion, in tokens.
        seed: engine seed (sampling is reproducible per seed and weights).
        weight_version: the version of the weights at `model_path` (a resumed run's step).
        engine_kwargs: passed on to `vllm.LLM` (e.g. `gpu_memory_utilization`, `dtype`).
    """

    def __init__(
        self,
        model_path: str,
        name: str = "gen-0",
        max_model_len: int = 256,
        seed: int = 0,
        weight_version: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        # The engine runs in this actor's process: weight loads need no extra IPC hop,
        # and a 2-core machine runs one process fewer per worker.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from rayalign.models.loading import load_tokenizer
        from rayalign.models.vllm_engine import build_llm

        self.name = name
        self.tokenizer = load_tokenizer(model_path)
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = build_llm(
            model_path,
            seed=seed,
            max_model_len=max_model_len,
            worker_extension_cls=EXTENSION_CLS,
            **engine_kwargs,
        )
        self.weight_version = weight_version

    def encode(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True
        )["input_ids"]

    def generate(self, requests: list[PromptRequest], sampling: SamplingOptions) -> list[Sample]:
        """Sample `sampling.n` completions per request; results grouped by request, in order."""
        from vllm import SamplingParams

        if not requests:
            return []
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed if r.seed is None else r.seed,
                logprobs=0,
                # The text is decoded here once the tokens are in; vLLM's incremental
                # detokenizer and its decoding of every log-prob token would be wasted work.
                detokenize=False,
            )
            for r in requests
        ]
        prompt_ids = [self.encode(r.messages) for r in requests]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False
        )
        samples = []
        for req, ids, out in zip(requests, prompt_ids, outputs, strict=True):
            for comp in out.outputs:
                token_ids = list(comp.token_ids)
                logprobs = [
                    step[tok].logprob for step, tok in zip(comp.logprobs, token_ids, strict=True)
                ]
                samples.append(
                    Sample(
                        index=req.index,
                        prompt_ids=ids,
                        completion_ids=token_ids,
                        logprobs=logprobs,
                        text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                        finish_reason=comp.finish_reason or "length",
                        weight_version=self.weight_version,
                        worker=self.name,
                    )
                )
        return samples

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        """Load policy weights in place and drop cached prefixes computed with the old ones.

        `weights` may arrive as an ObjectRef resolved by Ray (one copy in the object store
        for all workers). Returns the new weight version.
        """
        self.load_received(list(weights.items()), version)
        return version

    def load_received(self, named: list[tuple[str, torch.Tensor]], version: int) -> None:
        """Load (name, tensor) pairs in place (from `load_weights` or a weight-group
        broadcast, `receive_weights`)."""
        self.llm.collective_rpc("load_policy_weights", args=(named,))
        self.llm.reset_prefix_cache()
        self.weight_version = version

    def ping(self) -> str:
        return self.name


def remote_generation_worker(
    num_cpus: float = 1, num_gpus: float = 0, resources: dict[str, float] | None = None
):
    """The actor class with its resources (one GPU per worker on GPU clusters; custom
    resources such as {"rollout": 1} pin workers to a node type)."""
    return ray.remote(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=0
    )(GenerationWorker)
