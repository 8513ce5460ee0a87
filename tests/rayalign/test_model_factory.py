import json
import subprocess
import sys

import pytest
import torch

from rayalign.models.factory import PRESETS, init_model
from rayalign.models.loading import load_causal_lm, load_tokenizer

VLLM_HEAD_DIMS = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256}


def test_presets_have_vllm_head_dims_and_sizes():
    for name, p in PRESETS.items():
        assert p.hidden_size % p.num_heads == 0
        assert p.hidden_size // p.num_heads in VLLM_HEAD_DIMS, name


def test_tiny_loads_in_transformers_and_is_tiny(tiny_model):
    model = load_causal_lm(str(tiny_model))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 1_000_000
    tok = load_tokenizer(str(tiny_model))
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id


def test_chat_template_round_trips(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    messages = [
        {"role": "user", "content": "What is 37 + 58?"},
        {"role": "assistant", "content": "95"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert (
        text
        == "<|im_start|>user\nWhat is 37 + 58?<|im_end|>\n<|im_start|>assistant\n95<|im_end|>\n"
    )
    ids = tok.apply_chat_template(messages, return_dict=True)["input_ids"]
    assert tok.decode(ids) == text
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
    # Assistant-only loss: the mask covers exactly the answer and its end token.
    enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "95<|im_end|>"


def test_digits_are_single_tokens(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    assert all(len(tok.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))
    assert len(tok.encode("12345", add_special_tokens=False)) == 5


def test_generates_with_transformers(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model))
    enc = tok.apply_chat_template(
        [[{"role": "user", "content": "What is 1 + 2?"}]],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_same_seed_same_weights(tmp_path):
    a = load_causal_lm(str(init_model("tiny", tmp_path / "a", seed=1)))
    b = load_causal_lm(str(init_model("tiny", tmp_path / "b", seed=1)))
    c = load_causal_lm(str(init_model("tiny", tmp_path / "c", seed=2)))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_preset_is_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        init_model("huge", tmp_path)


@pytest.mark.slow
def test_generates_with_vllm_like_transformers(tiny_model, arithmetic_data, tmp_path):
    """The directory loads in vLLM on CPU and vLLM's greedy answers equal transformers'."""
    script = (
        "import json, sys\n"
        "from pipelines.evaluate import read_prompts, generate_vllm\n"
        "if __name__ == '__main__':\n"
        "    convs, _ = read_prompts(sys.argv[2])\n"
        "    print('ANSWERS=' + json.dumps(generate_vllm(sys.argv[1], convs[:20], 8)))\n"
    )
    (tmp_path / "gen.py").write_text(script)
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "gen.py"),
            str(tiny_model),
            str(arithmetic_data / "prompts_test.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ANSWERS="))
    vllm_answers = json.loads(line.removeprefix("ANSWERS="))
    from pipelines.evaluate import generate_hf, read_prompts

    convs, _ = read_prompts(arithmetic_data / "prompts_test.jsonl")
    hf_answers = generate_hf(str(tiny_model), convs[:20], 8)
    assert len(vllm_answers) == 20
    agree = sum(a == b for a, b in zip(vllm_answers, hf_answers, strict=True))
    assert agree >= 18, list(zip(vllm_answers, hf_answers, strict=True))
