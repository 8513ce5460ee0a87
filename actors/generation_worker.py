"""GenerationWorker: a vLLM engine in a Ray actor that samples completions.

It returns token ids with the sampling log-probs, loads new policy weights in place
(carrying a weight version) and resets its prefix cache after each load. With `lora`
set, the engine keeps the frozen base and each update arrives as adapters only (vLLM's
LoRA support): every version is a new adapter, written to a folder of this worker's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions
from actors.weight_sync import EXTENSION_CLS, WeightReceiver
from rayalign.models.lora import ADAPTER_DIR, adapter_base, is_adapter_weights, write_adapter


class GenerationWorker(WeightReceiver):
    """Wraps one `vllm.LLM`. Create with `ray.remote(GenerationWorker).options(...)`.

    Args:
        model_path: HF directory or id of the initial policy.
        name: label put on every sample (which worker produced it).
        max_model_len: longest prompt + completion, in tokens.
        seed: engine seed (sampling is reproducible per seed and weights).
        weight_version: the version of the weights at `model_path` (a resumed run's step).
        lora: `{"r": ..., "alpha": ...}` of the policy's adapters to take updates as
            adapters only: the engine loads the frozen base (a rayalign LoRA checkpoint's
            own base, with its adapters as the first version) and enables LoRA.
        engine_kwargs: passed on to `vllm.LLM` (e.g. `gpu_memory_utilization`, `dtype`).
    """

    def __init__(
        self,
        model_path: str,
        name: str = "gen-0",
        max_model_len: int = 256,
        seed: int = 0,
        weight_version: int = 0,
        lora: dict[str, float] | None = None,
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
        self.lora, self.lora_request = lora, None
        self._adapters_loaded = 0  # each adapter gets a new engine id, even for one version
        engine_path, first_adapter = model_path, None
        if lora is not None:
            engine_path = adapter_base(model_path) or model_path
            if engine_path != model_path:  # a LoRA checkpoint: its base and its adapters
                first_adapter = str(Path(model_path) / ADAPTER_DIR)
            self._adapter_root = tempfile.mkdtemp(prefix=f"rayalign-adapters-{name}-")
            from typing import get_args

            from vllm.config.lora import MaxLoRARanks  # the ranks `max_lora_rank` accepts

            ranks = sorted(r for r in get_args(MaxLoRARanks) if r >= lora["r"])
            if not ranks:
                raise ValueError(
                    f"LoRA rank {lora['r']} is above vLLM's largest ({max(get_args(MaxLoRARanks))}): "
                    "sync merged weights instead (rl.lora_sync: merged)"
                )
            engine_kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=ranks[0])
        self.llm = build_llm(
            engine_path,
            seed=seed,
            max_model_len=max_model_len,
            worker_extension_cls=EXTENSION_CLS,
            **engine_kwargs,
        )
        self.weight_version = weight_version
        if first_adapter is not None:
            self._use_adapter(first_adapter, weight_version)

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
            [{"prompt_token_ids": ids} for ids in prompt_ids],
            params,
            use_tqdm=False,
            lora_request=self.lora_request,
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
        broadcast, `receive_weights`); with `lora`, the pairs are the adapters."""
        if self.lora is not None:
            if not is_adapter_weights(name for name, _ in named):
                raise ValueError(
                    f"{self.name} samples with LoRA adapters and takes adapter weights only; "
                    f"got {len(named)} tensors such as {named[0][0] if named else None!r}"
                )
            folder = write_adapter(
                Path(self._adapter_root) / f"{self._adapters_loaded + 1}-v{version}",
                dict(named),
                self.lora["alpha"],
                self.llm.llm_engine.model_config.model,
            )
            self._use_adapter(str(folder), version)
        else:
            self.llm.collective_rpc("load_policy_weights", args=(named,))
            self.llm.reset_prefix_cache()
        self.weight_version = version

    def _use_adapter(self, folder: str, version: int) -> None:
        """Sample with the adapter in `folder` from now on, as weight `version`: loaded into
        the engine here (errors surface now, not at the next generate); the folder of the
        adapter it replaces is removed."""
        from vllm.lora.request import LoRARequest

        previous = self.lora_request
        self._adapters_loaded += 1
        request = LoRARequest(f"policy-v{version}", self._adapters_loaded, folder)
        self.llm.llm_engine.add_lora(request)
        self.lora_request = request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            if previous.lora_path.startswith(self._adapter_root):
                shutil.rmtree(previous.lora_path, ignore_errors=True)

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
