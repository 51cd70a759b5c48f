"""End-to-end gradient tests of the flash kernel through ``flash_attn_func`` / ``flash_attn_varlen_func`` autograd.

Gradients of the kernel (forward + backward) must be within 3x PyTorch's own error when it runs the same
attention in the 16-bit dtype, both measured against fp32 autograd on the same rounded inputs.
The deterministic backward must give bit-identical gradients over repeated runs.
"""

from __future__ import annotations

import pytest
import torch

from bridge.kernels import flash_attn_func, flash_attn_varlen_func
from tests.kernels.attention_reference import assert_within_torch_error as _assert_within
from tests.kernels.attention_reference import attention_reference, varlen_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a CUDA GPU"),
]


# Absolute slack for gradients that are exactly zero in exact arithmetic (e.g. dK with one key: the softmax is
# constant), where PyTorch's 16-bit error can be 0 while fp32 rounding of dP - D leaves ~1e-5 in the kernel.
GRAD_TINY = 1e-4


def assert_within_torch_error(name, got, ref, lowp, factor):
    _assert_within(name, got, ref, lowp, factor, tiny=GRAD_TINY)


def _grads(fn, leaves, dout):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dout)


def _reference_grads(q, k, v, dout, causal, compute_dtype):
    return _grads(lambda q, k, v: attention_reference(q, k, v, causal, compute_dtype=compute_dtype)[0],
                  [t.to(compute_dtype) for t in (q, k, v)], dout.to(compute_dtype))


@pytest.mark.parametrize("s_q,s_k", [(1, 1), (113, 203), (128, 217), (239, 1), (799, 3), (1023, 1024),
                                     (1024, 1023)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("h,h_k", [(4, 4), (6, 2), (6, 1)])
def test_gradients_match_reference(s_q, s_k, causal, d, h, h_k):
    dtype = torch.bfloat16
    q = torch.randn(2, s_q, h, d, device="cuda", dtype=dtype)
    k = torch.randn(2, s_k, h_k, d, device="cuda", dtype=dtype)
    v = torch.randn(2, s_k, h_k, d, device="cuda", dtype=dtype)
    dout = torch.randn(2, s_q, h, d, device="cuda", dtype=dtype)
    out, grads = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), [q, k, v], dout)
    ref_out, ref_grads = _reference_grads(q, k, v, dout, causal, torch.float32)
    low_out, low_grads = _reference_grads(q, k, v, dout, causal, dtype)
    assert_within_torch_error("out", out, ref_out, low_out, factor=2.0)
    for name, g, r, lo in zip(("dq", "dk", "dv"), grads, ref_grads, low_grads):
        assert g.shape == r.shape and g.dtype == dtype
        assert_within_torch_error(name, g, r, lo, factor=3.0)


def test_gradients_fp16_large_sequence():
    dtype = torch.float16
    q, k, v, dout = (torch.randn(1, 4224, 2, 128, device="cuda", dtype=dtype) for _ in range(4))
    out, grads = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), [q, k, v], dout)
    ref_out, ref_grads = _reference_grads(q, k, v, dout, True, torch.float32)
    low_out, low_grads = _reference_grads(q, k, v, dout, True, dtype)
    for name, g, r, lo in zip(("dq", "dk", "dv"), grads, ref_grads, low_grads):
        assert_within_torch_error(name, g, r, lo, factor=3.0)


def test_gradients_varlen_with_zero_lengths():
    lengths_q, lengths_k = [37, 0, 300, 129, 5], [50, 10, 280, 0, 5]
    cu_q = torch.tensor([0] + torch.tensor(lengths_q).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + torch.tensor(lengths_k).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    dtype = torch.bfloat16
    q = torch.randn(sum(lengths_q), 6, 64, device="cuda", dtype=dtype)
    k = torch.randn(sum(lengths_k), 2, 64, device="cuda", dtype=dtype)
    v = torch.randn(sum(lengths_k), 2, 64, device="cuda", dtype=dtype)
    dout = torch.randn_like(q)

    def flash(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True)

    def reference(dtype_):
        return _grads(lambda q, k, v: varlen_reference(q, k, v, cu_q, cu_k, True, compute_dtype=dtype_)[0],
                      [t.to(dtype_) for t in (q, k, v)], dout.to(dtype_))

    _, grads = _grads(flash, [q, k, v], dout)
    _, ref_grads = reference(torch.float32)
    _, low_grads = reference(dtype)
    for name, g, r, lo in zip(("dq", "dk", "dv"), grads, ref_grads, low_grads):
        assert_within_torch_error(name, g, r, lo, factor=3.0)


def test_deterministic_backward_is_bit_identical():
    q = torch.randn(2, 1500, 8, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 1500, 2, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 1500, 2, 128, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn_like(q)
    runs = [_grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True, deterministic=True), [q, k, v], dout)[1]
            for _ in range(4)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b), "deterministic backward changed between runs"


def _assert_same_grads(got, expected, deterministic):
    # Deterministic backward: bit-identical. Default: dQ is summed with atomics whose order varies between
    # runs, so equal up to a bf16 rounding step.
    for a, b in zip(got, expected):
        if deterministic:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-4)


@pytest.mark.parametrize("deterministic", [True, False])
def test_gradients_through_sbhd_strided_inputs(deterministic):
    # megatron's [s, b, h, d] activations, viewed as [b, s, h, d] without a copy, gradients included.
    s, b, h, d = 300, 2, 4, 64
    q, k, v = (torch.randn(s, b, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    attn = lambda q, k, v: flash_attn_func(q, k, v, causal=True, deterministic=deterministic)  # noqa: E731
    out = attn(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    contiguous = [t.detach().transpose(0, 1).contiguous() for t in (q, k, v)]
    _, expected = _grads(attn, contiguous, dout.contiguous())
    _assert_same_grads([g.transpose(0, 1) for g in grads], expected, deterministic)


@pytest.mark.parametrize("deterministic", [True, False])
def test_backward_traces_under_torch_compile(deterministic):
    q, k, v = (torch.randn(2, 256, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))

    def loss(q, k, v):
        return flash_attn_func(q, k, v, causal=True, deterministic=deterministic).float().square().sum()

    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(q, k, v), (q, k, v))
    _assert_same_grads(eager, compiled, deterministic)


@pytest.mark.parametrize("deterministic", [True, False])
def test_expanded_output_gradient_from_sum(deterministic):
    # out.sum() hands the backward a stride-0 (expanded) gradient: it must be read as ones, not misread.
    q, k, v = (torch.randn(1, 200, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    attn = lambda q, k, v: flash_attn_func(q, k, v, causal=True, deterministic=deterministic)  # noqa: E731
    grads_sum = torch.autograd.grad(attn(q, k, v).sum(), (q, k, v))
    out = attn(q, k, v)
    grads_ones = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    _assert_same_grads(grads_sum, grads_ones, deterministic)
