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


def pad_sequences(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompt+completion token lists.

    Returns:
        input_ids [B, L], attention_mask [B, L], and completion_mask [B, L-1] that is 1
        where position t predicts a completion token (t+1 inside the completion).
    """
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width - 1))
    for i, (p, s) in enumerate(zip(prompt_ids, seqs, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        completion_mask[i, len(p) - 1 : len(s) - 1] = 1.0
    return input_ids, attention, completion_mask


def gather_completions(
    per_position: torch.Tensor, completion_mask: torch.Tensor, lengths: list[int]
) -> torch.Tensor:
    """Pack per-position values [B, L-1] into right-aligned-at-0 completion rows [B, T_max]."""
    out = torch.zeros(
        (per_position.shape[0], max(lengths) if lengths else 0), dtype=per_position.dtype
    )
    for i, n in enumerate(lengths):
        out[i, :n] = per_position[i][completion_mask[i].bool()][:n]
    return out


def sequence_logprobs(
    model,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs of each completion, [B, T_max] right-padded with zeros.

    Logits are divided by `temperature`, matching vLLM's processed log-probs. Runs
    with the grad mode of the caller (the learner needs gradients, the reference not).
    """
    input_ids, attention, cmask = pad_sequences(prompt_ids, completion_ids, pad_id)
    logits = model(
        input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)
    ).logits
    if temperature != 1.0:
        logits = logits / temperature
    per_position = token_logprobs(logits, input_ids.to(model.device)).cpu()
    return gather_completions(per_position, cmask, [len(c) for c in completion_ids])
