"""Held-out measurements every chat stage reports, so stages can be compared."""

from __future__ import annotations

from rayalign.config import EVAL_SPLIT, DataConfig, Source


def preference_margin(checkpoint: str, preference_data: Source) -> dict[str, float]:
    """Mean held-out log-prob margin log p(chosen) - log p(rejected), and how often it is > 0."""
    from rayalign.data.datasets import load_preference_rows
    from rayalign.models.loading import load_causal_lm, load_tokenizer
    from rayalign.models.logprobs import completion_logprobs

    rows = load_preference_rows(preference_data, EVAL_SPLIT)
    model, tok = load_causal_lm(checkpoint), load_tokenizer(checkpoint)
    prompts = [r["prompt"] for r in rows]
    chosen = completion_logprobs(model, tok, prompts, [r["chosen"] for r in rows])
    rejected = completion_logprobs(model, tok, prompts, [r["rejected"] for r in rows])
    margin = chosen - rejected
    return {
        "heldout_margin": margin.mean().item(),
        "heldout_pref_accuracy": (margin > 0).float().mean().item(),
        "heldout_logp_chosen": chosen.mean().item(),
        "heldout_logp_rejected": rejected.mean().item(),
    }


def text_loss(
    checkpoint: str, data: Source, text_field: str = "text", max_length: int = 512
) -> float:
    """Mean per-token negative log-likelihood of the raw text rows in `path` (held-out loss
    of continued pretraining), each row truncated to `max_length` tokens."""
    import torch

    from rayalign.data.datasets import load_rows
    from rayalign.models.loading import load_causal_lm, load_tokenizer

    texts = [r[text_field] for r in load_rows(data, EVAL_SPLIT)]
    model, tok = load_causal_lm(checkpoint), load_tokenizer(checkpoint)
    tok.padding_side = "right"  # positions count from each row's first token
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            batch = tok(
                texts[i : i + 32],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits = model(**batch).logits[:, :-1].float()
            target = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, reduction="none"
            )
            total += nll[mask].sum().item()
            tokens += int(mask.sum())
    return total / max(tokens, 1)


def measure_chat(data: DataConfig, checkpoint: str) -> dict[str, float]:
    """Exact-match accuracy on `data.prompts_eval` and margins on `data.preference_eval`."""
    metrics: dict[str, float] = {}
    if data.prompts_eval:
        from pipelines.evaluate import evaluate

        result = evaluate(checkpoint, data.prompts_eval)
        metrics["heldout_accuracy"] = result.accuracy
        metrics["heldout_contains_answer"] = result.contains_answer
    if data.preference_eval:
        metrics.update(preference_margin(checkpoint, data.preference_eval))
    return metrics
