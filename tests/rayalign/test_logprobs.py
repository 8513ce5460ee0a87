"""The blocked log-softmax against PyTorch's own, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rayalign.models.logprobs import token_logprobs


def _reference(logits: torch.Tensor, ids: torch.Tensor, t: float) -> torch.Tensor:
    logp = F.log_softmax(logits[:, :-1].double() / t, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("block", [1, 7, 40, 1 << 21])  # one position .. everything at once
@pytest.mark.parametrize("t", [1.0, 0.7])
def test_values_and_gradients_match_log_softmax(block, t):
    torch.manual_seed(0)
    B, T, V = 3, 6, 11
    logits = (4 * torch.randn(B, T, V)).requires_grad_()
    ids = torch.randint(0, V, (B, T))
    weights = torch.randn(B, T - 1)

    ours = token_logprobs(logits, ids, t, block_elements=block)
    (ours * weights).sum().backward()
    grad_ours, logits.grad = logits.grad.clone(), None

    ref = _reference(logits, ids, t)
    (ref * weights.double()).sum().backward()

    assert ours.dtype == torch.float32 and ours.shape == (B, T - 1)
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_ours.double(), logits.grad.double(), atol=1e-5, rtol=0)
    # The last position predicts nothing: it gets no gradient.
    assert grad_ours[:, -1].abs().max() == 0


def test_gradcheck_in_double():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 4))

    def f(x):
        # float32 inside; compare in a tolerance that float32 meets.
        return token_logprobs(x, ids, 0.9, block_elements=10).double()

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_bfloat16_logits_get_bfloat16_gradients_and_float32_logprobs():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 9).bfloat16().requires_grad_()
    ids = torch.randint(0, 9, (2, 5))
    out = token_logprobs(logits, ids)
    out.sum().backward()
    assert out.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.double(), _reference(logits.detach().float(), ids, 1.0), atol=1e-5, rtol=0
    )
