"""GPU tests of the flash kernel's score modifiers: logit soft-capping (``softcap``) and ALiBi (``alibi_slopes``).

Forward and gradients against the fp32 reference (within 2x / 3x PyTorch's own bf16 error, as the other kernel
tests), under both kernel families (the Hopper family hands these calls to the mma.sync kernels), combined
with causal, sliding windows, GQA and variable-length batches.
"""

from __future__ import annotations

import pytest
import torch

from bridge.kernels import flash_attn_func, flash_attn_varlen_func
from tests.kernels.attention_reference import (assert_fwd_bwd_within_torch_error, attention_reference, grads_of,
                                                varlen_reference)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a CUDA GPU"),
    pytest.mark.usefixtures("flash_impl"),
]

GRAD_TINY = 1e-4

_grads = grads_of


def _check(out, grads, ref, low):
    assert_fwd_bwd_within_torch_error(out, grads, ref, low, grad_tiny=GRAD_TINY)


def _slopes(shape):
    # ALiBi's geometric slopes (2^-8/h ... 2^-8), per head, or per (batch, head) perturbed
    h = shape[-1]
    base = 2.0 ** (-8.0 * torch.arange(1, h + 1, device="cuda") / h)
    return (base * (1 + 0.1 * torch.rand(shape, device="cuda"))).float() if len(shape) == 2 else base.float()


@pytest.mark.parametrize("softcap,alibi", [(30.0, None), (0.0, "h"), (5.0, "bh"), (0.0, "bh")])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (True, (64, 0)), (False, (50, 20))])
@pytest.mark.parametrize("s_q,s_k", [(257, 257), (130, 411)])
@pytest.mark.parametrize("d,h,h_k", [(64, 4, 4), (128, 6, 2)])
def test_score_mods_forward_and_gradients_match_reference(softcap, alibi, causal, window, s_q, s_k, d, h, h_k):
    dtype = torch.bfloat16
    b = 2
    # Larger logits than randn's (scale 3), so the soft-cap is actually in its non-linear range.
    q, dout = (torch.randn(b, s_q, h, d, device="cuda", dtype=dtype) * 3 for _ in range(2))
    k, v = (torch.randn(b, s_k, h_k, d, device="cuda", dtype=dtype) for _ in range(2))
    slopes = None if alibi is None else _slopes((h,) if alibi == "h" else (b, h))

    def kernel(q, k, v):
        return flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)

    def reference(compute_dtype):
        return _grads(lambda q, k, v: attention_reference(q, k, v, causal, compute_dtype=compute_dtype, window=window,
                                                          softcap=softcap, alibi_slopes=slopes)[0],
                      [t.to(compute_dtype) for t in (q, k, v)], dout.to(compute_dtype))

    out, grads = _grads(kernel, [q, k, v], dout)
    _check(out, grads, reference(torch.float32), reference(dtype))


@pytest.mark.parametrize("causal", [False, True])
def test_score_mods_varlen_gqa_and_lse(causal):
    dtype = torch.float16
    lengths_q, lengths_k = [1, 200, 0, 333], [17, 150, 5, 333]
    cu_q = torch.tensor([0] + lengths_q, device="cuda").cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k, device="cuda").cumsum(0).to(torch.int32)
    q, dout = (torch.randn(sum(lengths_q), 8, 64, device="cuda", dtype=dtype) * 2 for _ in range(2))
    k, v = (torch.randn(sum(lengths_k), 2, 64, device="cuda", dtype=dtype) for _ in range(2))
    slopes = _slopes((4, 8))

    def kernel(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal,
                                      softcap=10.0, alibi_slopes=slopes)

    def reference(compute_dtype):
        return _grads(lambda q, k, v: varlen_reference(q, k, v, cu_q, cu_k, causal, compute_dtype=compute_dtype,
                                                       softcap=10.0, alibi_slopes=slopes)[0],
                      [t.to(compute_dtype) for t in (q, k, v)], dout.to(compute_dtype))

    out, grads = _grads(kernel, [q, k, v], dout)
    _check(out, grads, reference(torch.float32), reference(dtype))
    _, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal,
                                    softcap=10.0, alibi_slopes=slopes, return_lse=True)
    _, ref_lse = varlen_reference(q, k, v, cu_q, cu_k, causal, softcap=10.0, alibi_slopes=slopes)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite] - ref_lse[finite]).abs().max().item() < 1e-2


def test_score_mods_deterministic_backward_is_bit_identical():
    q, dout = (torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    slopes = _slopes((4,))
    attn = lambda q, k, v: flash_attn_func(q, k, v, causal=True, softcap=20.0, alibi_slopes=slopes,  # noqa: E731
                                           deterministic=True)
    runs = [_grads(attn, [q, k, v], dout)[1] for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_alibi_slopes_shape_is_checked():
    q = torch.randn(2, 16, 4, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(4,\) or \(2, 4\)"):
        flash_attn_func(q, q, q, alibi_slopes=torch.ones(3, device="cuda"))
