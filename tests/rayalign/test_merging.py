"""WiSE-FT interpolation of a trained model with its start (`training.merge_with_start`)."""

from __future__ import annotations

import pytest
import torch

from rayalign.models.factory import PRESETS, build_model, train_tokenizer
from rayalign.models.merging import interpolate_with_start_


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["What is 12 + 7? 19", "Reverse abc: cba"] * 20, vocab_size=128)


def _pair(tokenizer, seed_a: int = 0, seed_b: int = 1):
    return build_model(PRESETS["tiny"], tokenizer, seed_a), build_model(
        PRESETS["tiny"], tokenizer, seed_b
    )


def test_interpolation_is_the_weighted_mean_tied_weights_once(tokenizer):
    trained, start = _pair(tokenizer)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    interpolate_with_start_(trained, start, 0.25)
    start_sd = start.state_dict()
    for name, value in trained.state_dict().items():
        if value.is_floating_point():
            expected = 0.25 * before[name] + 0.75 * start_sd[name]
            torch.testing.assert_close(value, expected, msg=name)
    # The tied output head is the embedding (updated once, not twice).
    assert trained.lm_head.weight.data_ptr() == trained.model.embed_tokens.weight.data_ptr()


def test_weight_one_keeps_the_trained_model(tokenizer):
    trained, start = _pair(tokenizer)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    interpolate_with_start_(trained, start, 1.0)
    for name, value in trained.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_different_model_or_weight_is_refused(tokenizer):
    trained, _ = _pair(tokenizer)
    other = build_model(PRESETS["small"], tokenizer, 0)
    with pytest.raises(ValueError, match="shape"):
        interpolate_with_start_(trained, other, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        interpolate_with_start_(trained, trained, 0.0)
    with pytest.raises(ValueError, match="no parameter"):
        interpolate_with_start_(trained, torch.nn.Linear(2, 2), 0.5)
