"""Held-out exact-match accuracy: greedy decoding through the chat template.

Every stage reports this number (`rayalign eval`), so stages can be compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rayalign.config import EVAL_SPLIT, TRAIN_SPLIT, Source
from rayalign.data.datasets import check_messages
from rayalign.data.io import DataError
from rayalign.data.sources import describe, open_rows
from rayalign.models.loading import load_causal_lm, load_tokenizer
from rayalign.rewards import exact_match_reward


@dataclass
class EvalResult:
    """Outcome of one evaluation; `samples` holds the first few (prompt, answer, truth)."""

    model: str
    data: str
    engine: str
    n: int
    correct: int
    accuracy: float
    contains_answer: float = 0.0
    samples: list[dict] = field(default_factory=list)


@dataclass
class PromptRows:
    """A prompts split as the RL stage reads it.

    Attributes:
        conversations: each row's prompt as chat messages.
        truths: each row's `ground_truth` as a string, None where it has none.
        columns: each row's fields other than `prompt` (what reward functions receive).
        conversational: whether the file gave prompts as messages (not plain strings).
    """

    conversations: list[list[dict]]
    truths: list[str | None]
    columns: list[dict[str, Any]]
    conversational: bool


def read_prompt_rows(
    source: Source,
    require_truth: bool = False,
    split: str = TRAIN_SPLIT,
    limit: int | None = None,
) -> PromptRows:
    """The prompt rows of a prompts dataset: a `prompt` column (a string becomes one user
    message) and an optional `ground_truth` (any dataset, `rayalign.data.sources`);
    `split` is the default split, `limit` keeps the first rows only."""
    rows = PromptRows([], [], [], conversational=True)
    path = describe(source, split)
    data = open_rows(source, split)
    for i, row in enumerate(data, start=1):
        if limit is not None and i > limit:
            break
        if "prompt" not in row:
            raise DataError(
                f"{path}, row {i}: missing field 'prompt' (columns: {sorted(row)}); name the "
                "prompt column in the source's `columns`, e.g. {question: prompt}"
            )
        prompt, truth = row["prompt"], row.get("ground_truth")
        check_messages(prompt, f"{path}, row {i}, field 'prompt'")
        if isinstance(prompt, str):
            rows.conversational = False
            prompt = [{"role": "user", "content": prompt}]
        if (truth is not None or require_truth) and (
            not isinstance(truth, str | int | float) or isinstance(truth, bool)
        ):
            raise DataError(
                f"{path}, row {i}, field 'ground_truth': expected a string, got {truth!r}"
            )
        rows.conversations.append(prompt)
        rows.truths.append(None if truth is None else str(truth))
        rows.columns.append({k: v for k, v in row.items() if k != "prompt"})
    return rows


def read_prompts(source: Source, split: str = EVAL_SPLIT) -> tuple[list[list[dict]], list[str]]:
    """Prompts (as chat messages) and ground truths from a held-out prompts dataset; every
    row needs a ground truth."""
    rows = read_prompt_rows(source, require_truth=True, split=split)
    return rows.conversations, [str(t) for t in rows.truths]


@torch.no_grad()
def generate_hf(
    model_path: str, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy completions with transformers, batched with left padding."""
    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    texts = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        enc = tok.apply_chat_template(
            batch, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
        )
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        texts.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
    return texts


def generate_vllm(
    model_path: str, conversations: list[list[dict]], max_new_tokens: int
) -> list[str]:
    """Greedy completions with vLLM (call under a __main__ guard or inside an actor)."""
    from vllm import SamplingParams

    from rayalign.models.vllm_engine import build_llm

    llm = build_llm(model_path)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    outputs = llm.chat(conversations, params, use_tqdm=False)
    return [o.outputs[0].text for o in outputs]


def evaluate(
    model_path: str,
    data_path: Source,
    *,
    engine: str = "hf",
    max_new_tokens: int = 16,
    n_samples: int = 5,
) -> EvalResult:
    """Exact-match accuracy of `model_path` on the `prompts` split at `data_path`."""
    conversations, truths = read_prompts(data_path)
    if engine == "hf":
        answers = generate_hf(model_path, conversations, max_new_tokens)
    elif engine == "vllm":
        answers = generate_vllm(model_path, conversations, max_new_tokens)
    else:
        raise ValueError(f"engine must be 'hf' or 'vllm', got {engine!r}")
    scores = [exact_match_reward(a, t) for a, t in zip(answers, truths, strict=True)]
    correct = int(sum(s == 1.0 for s in scores))
    # The right answer anywhere in the text, e.g. "The answer is 95.": knowledge apart from format.
    contains = sum(
        exact_match_reward(a, t, partial_credit=0.5) > 0
        for a, t in zip(answers, truths, strict=True)
    )
    samples = [
        {"prompt": c[-1]["content"], "answer": a, "ground_truth": t}
        for c, a, t in list(zip(conversations, answers, truths, strict=True))[:n_samples]
    ]
    return EvalResult(
        model=str(model_path),
        data=describe(data_path, EVAL_SPLIT),
        engine=engine,
        n=len(truths),
        correct=correct,
        accuracy=correct / len(truths),
        contains_answer=contains / len(truths),
        samples=samples,
    )


def write_result(result: EvalResult, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(asdict(result), indent=2) + "\n")
