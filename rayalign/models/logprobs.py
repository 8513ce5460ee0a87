"""Log-probabilities of completions under a causal LM (held-out margins, reference policy)."""

from __future__ import annotations

import torch


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


# Logit entries turned into float32 at a time by the log-softmax: 2M entries (8 MB, 16
# positions of a 128k vocabulary) instead of a [B, T, V] float32 copy of the logits.
BLOCK_ELEMENTS = 1 << 21


def _blocks(B: int, L: int, V: int, budget: int):
    """(batch slice, position slice) blocks of [B, L] with about `budget` // V positions each."""
    rows = max(1, min(L, budget // V))
    batch = max(1, budget // (rows * V)) if rows == L else 1
    for b in range(0, B, batch):
        for i in range(0, L, rows):
            yield slice(b, b + batch), slice(i, i + rows)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / t)[target], a block of positions at a time, in float32.

    Memory-bounded in both directions: the forward keeps only the [B, L] log-sum-exp,
    and the backward recomputes each block's softmax to write the logits' gradient
    (onehot - softmax) * grad / t, so neither pass holds a float32 [B, L, V] copy.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, budget):
        B, L, V = logits.shape
        out = torch.empty((B, L), dtype=torch.float32, device=logits.device)
        lse = torch.empty((B, L), dtype=torch.float32, device=logits.device)
        for bs, ls in _blocks(B, L, V, budget):
            x = logits[bs, ls].float() / temperature
            lse[bs, ls] = torch.logsumexp(x, dim=-1)
            out[bs, ls] = x.gather(-1, targets[bs, ls, None]).squeeze(-1) - lse[bs, ls]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.budget = temperature, budget
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        grad = torch.empty_like(logits)
        for bs, ls in _blocks(*logits.shape, ctx.budget):
            g = grad_out[bs, ls, None].float()
            x = logits[bs, ls].float() / t
            block = torch.exp(x - lse[bs, ls, None]).mul_(-g)
            block.scatter_add_(-1, targets[bs, ls, None], g)
            grad[bs, ls] = block.div_(t)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Log-prob of each next token under softmax(logits / temperature).

    Args:
        logits: [B, T, V] model outputs (any float dtype; the math runs in float32).
        input_ids: [B, T] the tokens.
        temperature: divides the logits, matching vLLM's processed log-probs.
        block_elements: logit entries per float32 block of the log-softmax.

    Returns:
        [B, T-1] float32: entry t is log p(input_ids[:, t+1] | input_ids[:, :t+1]).
        Differentiable with respect to `logits`.
    """
    return _TokenLogprobs.apply(
        logits[:, :-1], input_ids[:, 1:].contiguous(), float(temperature), block_elements
    )


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
    per_position = token_logprobs(logits, input_ids.to(model.device), temperature).cpu()
    return gather_completions(per_position, cmask, [len(c) for c in completion_ids])
