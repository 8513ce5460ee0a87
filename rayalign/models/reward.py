"""Reward-model checkpoints (the reward_model stage's output): loading and scoring.

The PPO scorer actor, the Serve reward deployment and the stage's own held-out measure
all score with these two functions.
"""

from __future__ import annotations

import torch


def load_reward_model(path: str, dtype: torch.dtype = torch.float32):
    """A sequence-classification model with one output (the reward) and its pad token set."""
    from transformers import AutoModelForSequenceClassification

    from rayalign.models.loading import load_tokenizer
    from rayalign.storage import local_copy

    path = local_copy(path)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@torch.no_grad()
def score(
    model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int = 32
) -> torch.Tensor:
    """Reward of each (prompt, completion) conversation. Returns [N] float32."""
    model.eval()
    texts = [
        tokenizer.apply_chat_template(p + c, tokenize=False)
        for p, c in zip(prompts, completions, strict=True)
    ]
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        out.append(model(**enc.to(model.device)).logits[:, 0].float().cpu())
    return torch.cat(out)
