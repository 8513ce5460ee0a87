"""Log-probabilities of completions under a causal LM (held-out margins, reference policy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tokenize_pair(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """Token ids of prompt+completion through the chat template, and where the completion starts."""
    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + completion, return_dict=True)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "the chat template renders the prompt differently inside the full conversation"
        )
    return full_ids, len(prompt_ids)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token.

    Args:
        logits: [B, T, V] model outputs.
        input_ids: [B, T] the tokens.

    Returns:
        [B, T-1]: entry t is log p(input_ids[:, t+1] | input_ids[:, :t+1]).
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def completion_logprobs(
    model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int = 32
) -> torch.Tensor:
    """Summed log-prob of each completion given its prompt. Returns [N] float32."""
    pad = tokenizer.pad_token_id
    totals = []
    for start in range(0, len(prompts), batch_size):
        pairs = [
            tokenize_pair(tokenizer, p, c)
            for p, c in zip(
                prompts[start : start + batch_size],
                completions[start : start + batch_size],
                strict=True,
            )
        ]
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        mask = torch.zeros((len(pairs), width - 1))
        for i, (ids, prompt_len) in enumerate(pairs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            mask[i, prompt_len - 1 : len(ids) - 1] = 1.0  # predictions of completion tokens
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)
        ).logits
        totals.append((token_logprobs(logits, input_ids.to(model.device)).cpu() * mask).sum(-1))
    return torch.cat(totals)
