"""ReferencePolicy: the frozen reference model that prices the KL term."""

from __future__ import annotations

import torch

from rayalign.models.logprobs import sequence_logprobs


class ReferencePolicy:
    """Frozen copy of the starting policy. Create with `ray.remote(ReferencePolicy)`.

    Args:
        model_path: checkpoint of the reference (normally the SFT checkpoint).
        dtype: `float32` on CPU, `bfloat16` on GPUs.
    """

    def __init__(self, model_path: str, dtype: str = "float32") -> None:
        from rayalign.models.loading import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(model_path, dtype=dtype)
        self.model.requires_grad_(False)
        if torch.cuda.is_available():
            self.model.cuda()
        self.pad_id = load_tokenizer(model_path).pad_token_id

    @torch.no_grad()
    def logprobs(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        temperature: float = 1.0,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Per-token reference log-probs of each completion, [B, T_max] zero-padded."""
        parts = [
            sequence_logprobs(
                self.model,
                prompt_ids[i : i + batch_size],
                completion_ids[i : i + batch_size],
                self.pad_id,
                temperature,
            )
            for i in range(0, len(prompt_ids), batch_size)
        ]
        width = max(p.shape[1] for p in parts)
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])

    # The name the RL driver calls (a colocated learner answers as the reference too).
    reference_logprobs = logprobs
