"""The chunked LM-head log-probs against the plain full-logits computation: values and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from hhalign.losses.logps import linear_token_logps, scattered_logps, sum_by_sequence


def _plain(hidden, weight, bias, labels):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_logps_and_gradients_equal_the_full_computation(chunk: int, with_bias: bool):
    """Float64, so the comparison is exact up to summation order; chunks smaller than, not dividing, and larger
    than the 10 tokens."""
    torch.manual_seed(0)
    n, h, v = 10, 6, 23
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,))
    upstream = torch.randn(n, dtype=torch.float64)
    ours = linear_token_logps(hidden, weight, bias, labels, chunk=chunk)
    grads = torch.autograd.grad((ours * upstream).sum(), [t for t in (hidden, weight, bias) if t is not None])
    plain = _plain(hidden, weight, bias, labels)
    expected = torch.autograd.grad((plain * upstream).sum(), [t for t in (hidden, weight, bias) if t is not None])
    assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_logps_in_float32_match_cross_entropy_of_full_logits():
    torch.manual_seed(1)
    hidden, weight = torch.randn(50, 16), torch.randn(300, 16)
    labels = torch.randint(0, 300, (50,))
    sequences = torch.arange(50) % 4
    full = scattered_logps(hidden @ weight.T, labels, sequences, 4)
    chunked = sum_by_sequence(linear_token_logps(hidden, weight, None, labels, chunk=8), sequences, 4)
    assert_close(chunked[0], full[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked[1], full[1])  # the token counts, exactly


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    """LoRA freezes the LM head: its gradient is neither computed nor returned."""
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    linear_token_logps(hidden, weight, None, torch.tensor([0, 1, 2, 3, 8]), chunk=2).sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_uniform_logits_give_minus_log_v_per_token():
    """A zero head: every logit equal, so each token's log-prob is exactly −log V."""
    out = linear_token_logps(torch.randn(4, 3), torch.zeros(128, 3), None, torch.tensor([0, 5, 127, 64]), chunk=3)
    assert_close(out, torch.full((4,), -torch.log(torch.tensor(128.0)).item()))


def test_under_bf16_autocast_the_chunked_gradient_is_the_autograd_gradient_of_the_same_forward():
    """Under ``bf16-mixed`` the forward's logits come from a bf16 matmul; a backward recomputing them outside that
    autocast normalizes fp32 logits with a bf16 log-sum-exp, and its softmax no longer sums to one. With logits of
    a real LM's scale (σ≈10) that put the hidden-state gradient 3–7% off; re-entering the forward's autocast makes
    the two computations the same arithmetic."""
    torch.manual_seed(2)
    n, h, v = 64, 32, 512
    hidden = (torch.randn(n, h) * 2).requires_grad_()
    weight = (torch.randn(v, h) * 0.9).requires_grad_()
    labels = torch.randint(0, v, (n,))
    upstream = torch.randn(n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_token_logps(hidden, weight, None, labels, chunk=16)
        plain = _plain(hidden, weight, None, labels)
    assert ours.dtype == torch.float32 and plain.dtype == torch.float32
    grads = torch.autograd.grad((ours * upstream).sum(), [hidden, weight])
    expected = torch.autograd.grad((plain * upstream).sum(), [hidden, weight])
    assert_close(ours, plain, rtol=1e-3, atol=1e-3)
    for got, want in zip(grads, expected, strict=True):
        assert (got - want).norm() / want.norm() < 1e-2
