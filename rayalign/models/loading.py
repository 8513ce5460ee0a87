"""Load any HF causal LM and its tokenizer: a hub id, a local directory, or a storage URI
(`s3://...`, copied into this node's cache first: `rayalign.storage.local_copy`)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rayalign.storage import local_copy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and a chat template, padding on the left for generation."""
    tok = AutoTokenizer.from_pretrained(
        local_copy(name_or_path), revision=revision, trust_remote_code=trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(
            f"tokenizer of {name_or_path!r} has no chat template; rayalign's stages format "
            "conversations with it. Use an instruct/chat tokenizer or set tokenizer.chat_template."
        )
    tok.padding_side = "left"
    return tok


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM in eval mode with the given dtype (`float32`, `bfloat16`, `float16`)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(
        local_copy(name_or_path),
        dtype=DTYPES[dtype],
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    return model.eval()


def load_value_model(name_or_path: str, *, pad_token_id: int, dtype: str = "float32"):
    """A token-level value head on `name_or_path`'s trunk (PPO's critic): one scalar per
    position. A reward-model or policy checkpoint starts it; its own head is new."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        local_copy(name_or_path), num_labels=1, dtype=DTYPES[dtype]
    )
    model.config.pad_token_id = pad_token_id
    return model


def checkpoint_activations(model) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the rest in
    the backward pass (non-reentrant: the gradients are the same)."""
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
