"""Build small random-weight Llama-architecture models with a locally trained tokenizer.

Nothing here downloads anything: the tokenizer is trained with `tokenizers` on text
the task suite generates plus a short corpus shipped with the package.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rayalign.data.tasks import TASKS

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, "<|im_start|>", EOS, PAD]

# ChatML. The {% generation %} markers let TRL train on assistant tokens only.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a random Llama model. head_dim = hidden_size / num_heads must be one
    of vLLM's supported sizes on CPU (32, 64, 80, 96, 112, 128...)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512


PRESETS: dict[str, ModelPreset] = {
    # ~0.1M parameters: unit tests.
    "tiny": ModelPreset(64, 2, 2, 2, 128, 512),
    # ~3.5M parameters: the demo, big enough to learn the bundled tasks.
    "small": ModelPreset(256, 4, 4, 4, 688, 1024),
    # ~100M parameters: weight-sync and learner benchmarks.
    "medium": ModelPreset(768, 12, 12, 12, 2048, 4096, 1024),
}


def tokenizer_corpus(n_per_task: int = 3000, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: rendered task examples plus the shipped corpus."""
    rng = random.Random(seed)
    lines = (Path(__file__).parents[1] / "data" / "tasks" / "corpus.txt").read_text().splitlines()
    for cls in TASKS.values():
        task = cls()
        for _ in range(n_per_task):
            ex = task.sample(rng)
            lines.append(f"user\n{ex.question}\nassistant\n{ex.answer}")
    return lines


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with one token per digit and ChatML specials."""
    tok = Tokenizer(models.BPE())
    # Single digits keep numbers compositional, which makes arithmetic learnable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    preset: ModelPreset, tokenizer: PreTrainedTokenizerFast, seed: int
) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM sized by `preset`, fp32."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def init_model(preset: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a loadable HF model directory (config, safetensors, tokenizer, chat template).

    Returns:
        The output directory.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tokenizer_corpus(seed=seed), spec.vocab_size)
    model = build_model(spec, tokenizer, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "rayalign_preset.txt").write_text(f"{preset} {asdict(spec)} seed={seed}\n")
    return out
