"""GPU tests of the sliding window (flash-attn's ``window_size``) in the flash kernel, forward and backward.

Every case runs under both kernel families (``flash_impl``); the Hopper family hands windowed calls to the
mma.sync kernels, so both must agree with the fp32 reference. Tolerances follow the other kernel tests: the
output within 2x and the gradients within 3x PyTorch's own error when it computes the same attention in bf16.
"""

from __future__ import annotations

import pytest
import torch

from bridge.kernels import flash_attn_func, flash_attn_varlen_func
from tests.kernels.attention_reference import (assert_fwd_bwd_within_torch_error, assert_within_torch_error,
                                                attention_reference, grads_of, varlen_reference)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a CUDA GPU"),
    pytest.mark.usefixtures("flash_impl"),
]

GRAD_TINY = 1e-4  # as in test_flash_autograd: gradients that are exactly zero in exact arithmetic

# (left, right): narrow band, left only, right only, wider than the sequence, empty-for-some-rows (0, 0)
WINDOWS = [(16, 16), (100, -1), (-1, 40), (0, 0), (300, 0), (5000, 5000)]

_grads = grads_of


def _check(out, grads, ref, low):
    assert_fwd_bwd_within_torch_error(out, grads, ref, low, grad_tiny=GRAD_TINY)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_q,s_k", [(300, 300), (129, 517), (400, 77)])
@pytest.mark.parametrize("d,h,h_k", [(64, 4, 4), (128, 6, 2)])
def test_window_forward_and_gradients_match_reference(window, causal, s_q, s_k, d, h, h_k):
    dtype = torch.bfloat16
    q, dout = (torch.randn(2, s_q, h, d, device="cuda", dtype=dtype) for _ in range(2))
    k, v = (torch.randn(2, s_k, h_k, d, device="cuda", dtype=dtype) for _ in range(2))
    out, grads = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal, window_size=window), [q, k, v], dout)

    def reference(compute_dtype):
        return _grads(lambda q, k, v: attention_reference(q, k, v, causal, compute_dtype=compute_dtype,
                                                          window=window)[0],
                      [t.to(compute_dtype) for t in (q, k, v)], dout.to(compute_dtype))

    _check(out, grads, reference(torch.float32), reference(dtype))


@pytest.mark.parametrize("window", [(32, 8), (0, 0), (-1, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_window_varlen_gqa_matches_reference(window, causal):
    dtype = torch.float16
    lengths_q, lengths_k = [1, 200, 0, 333, 64], [17, 150, 5, 333, 300]
    cu_q = torch.tensor([0] + lengths_q, device="cuda").cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k, device="cuda").cumsum(0).to(torch.int32)
    q, dout = (torch.randn(sum(lengths_q), 8, 64, device="cuda", dtype=dtype) for _ in range(2))
    k, v = (torch.randn(sum(lengths_k), 2, 64, device="cuda", dtype=dtype) for _ in range(2))

    def kernel(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal,
                                      window_size=window)

    def reference(compute_dtype):
        return _grads(lambda q, k, v: varlen_reference(q, k, v, cu_q, cu_k, causal, compute_dtype=compute_dtype,
                                                       window=window)[0],
                      [t.to(compute_dtype) for t in (q, k, v)], dout.to(compute_dtype))

    out, grads = _grads(kernel, [q, k, v], dout)
    _check(out, grads, reference(torch.float32), reference(dtype))


def test_window_lse_and_empty_rows():
    # Window (0, 0) with s_k < s_q: the first s_q - s_k rows see no key (zeros, lse = -inf).
    q = torch.randn(1, 200, 2, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 150, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out, lse = flash_attn_func(q, k, v, window_size=(0, 0), return_lse=True)
    ref_out, ref_lse = attention_reference(q, k, v, window=(0, 0))
    assert torch.all(out[:, :50] == 0) and torch.all(lse[:, :, :50] == float("-inf"))
    assert (lse[:, :, 50:] - ref_lse[:, :, 50:]).abs().max().item() < 1e-2
    assert (out.float() - ref_out).abs().max().item() < 2e-2


def test_window_deterministic_backward_is_bit_identical():
    q, dout = (torch.randn(2, 700, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(2, 700, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    attn = lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=(200, 0), deterministic=True)  # noqa: E731
    runs = [_grads(attn, [q, k, v], dout)[1] for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    ref = _grads(lambda q, k, v: attention_reference(q, k, v, True, window=(200, 0))[0],
                 [t.float() for t in (q, k, v)], dout.float())[1]
    low = _grads(lambda q, k, v: attention_reference(q, k, v, True, compute_dtype=torch.bfloat16,
                                                     window=(200, 0))[0], [q, k, v], dout)[1]
    for name, g, r, lo in zip(("dq", "dk", "dv"), runs[0], ref, low):
        assert_within_torch_error(name, g, r, lo, factor=3.0, tiny=GRAD_TINY)


def test_window_cost_is_linear_in_sequence_length():
    # A fixed window skips every key tile outside the band: 4x the sequence is about 4x the time, where
    # full causal attention would take about 16x. Generous bound (6x) against timing noise.
    def time_ms(s):
        q, k, v = (torch.randn(1, s, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fn = lambda: flash_attn_func(q, k, v, causal=True, window_size=(512, 0))  # noqa: E731
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 10

    short, long = time_ms(8192), time_ms(32768)
    assert long < 6 * short, f"window 512: s=8k {short:.3f} ms, s=32k {long:.3f} ms (not linear)"


def test_window_size_rejected_when_invalid():
    q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="window_size"):
        flash_attn_func(q, q, q, window_size=(-2, 3))
