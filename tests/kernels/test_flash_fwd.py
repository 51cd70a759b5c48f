"""GPU tests of the flash-attention forward kernel through the public functions (``bridge.kernels``).

Each case draws fresh random inputs, poisons the allocator with NaN (so unwritten outputs show), and compares
the kernel's output and log-sum-exp with an fp32 reference from the same rounded inputs: the output must be
within 2x PyTorch's own error when it runs the same attention in the 16-bit dtype.
"""

from __future__ import annotations

import pytest
import torch

from bridge.kernels import flash_attn_func, flash_attn_varlen_func
from tests.kernels.attention_reference import (
    assert_within_torch_error,
    attention_reference,
    max_abs_err,
    poison_allocator,
    varlen_reference,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("flash_impl"),  # tests/kernels/conftest.py: both kernel families
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a CUDA GPU"),
]

SEQLEN_PAIRS = [(1, 1), (113, 203), (128, 217), (239, 1), (799, 3), (1023, 1024), (1024, 1023), (4096, 4096),
                (4224, 4224)]
LSE_TOL = 2e-3  # the lse is a logsumexp of fp32 scores of 16-bit inputs: absolute error well under 1e-3


def _randn(*shape, dtype):
    return torch.randn(*shape, device="cuda", dtype=dtype)


def _check_fwd(q, k, v, causal, scale=None):
    """Runs the kernel on poisoned memory and checks out and lse against the fp32 reference."""
    b, s_q, h, d = q.shape
    poison_allocator(q.numel() * q.element_size(), b * h * s_q * 4)
    out, lse = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (b, h, s_q) and lse.dtype == torch.float32
    ref, ref_lse = attention_reference(q, k, v, causal, scale)
    lowp, _ = attention_reference(q, k, v, causal, scale, compute_dtype=q.dtype)
    assert_within_torch_error("out", out, ref, lowp, factor=2.0)
    assert not torch.isnan(lse).any(), "NaN in lse"
    assert max_abs_err(lse, ref_lse) <= LSE_TOL, f"lse error {max_abs_err(lse, ref_lse):.3e}"
    return out


@pytest.mark.parametrize("s_q,s_k", SEQLEN_PAIRS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_forward_matches_reference_bf16(s_q, s_k, causal, d):
    b = 2 if s_q * s_k < 2_000_000 else 1
    q = _randn(b, s_q, 4, d, dtype=torch.bfloat16)
    k = _randn(b, s_k, 2, d, dtype=torch.bfloat16)  # GQA, 2 query heads per K/V head
    v = _randn(b, s_k, 2, d, dtype=torch.bfloat16)
    _check_fwd(q, k, v, causal)


@pytest.mark.parametrize("h,h_k", [(6, 6), (6, 3), (6, 1), (12, 2)])  # ratio 1 (MHA), 2, 6 (= h: MQA), 6 (GQA)
@pytest.mark.parametrize("s_q,s_k", [(113, 203), (239, 1), (1023, 1024)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_forward_gqa_mqa(h, h_k, s_q, s_k, causal, d):
    q = _randn(2, s_q, h, d, dtype=torch.bfloat16)
    k = _randn(2, s_k, h_k, d, dtype=torch.bfloat16)
    v = _randn(2, s_k, h_k, d, dtype=torch.bfloat16)
    _check_fwd(q, k, v, causal)


@pytest.mark.parametrize("s_q,s_k", [(1, 1), (113, 203), (799, 3), (1024, 1023), (4096, 4096)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_forward_fp16(s_q, s_k, causal, d):
    q = _randn(2, s_q, 4, d, dtype=torch.float16)
    k = _randn(2, s_k, 4, d, dtype=torch.float16)
    v = _randn(2, s_k, 4, d, dtype=torch.float16)
    _check_fwd(q, k, v, causal)


def test_forward_custom_scale_and_large_logits():
    # A big scale makes the softmax nearly one-hot: the online max/rescale must stay exact.
    q = _randn(2, 300, 4, 64, dtype=torch.bfloat16) * 3
    k = _randn(2, 300, 4, 64, dtype=torch.bfloat16) * 3
    v = _randn(2, 300, 4, 64, dtype=torch.bfloat16)
    _check_fwd(q, k, v, causal=True, scale=0.5)


@pytest.mark.parametrize("causal", [False, True])
def test_forward_rows_without_keys_are_zero(causal):
    # Causal with s_q > s_k: the first s_q - s_k rows see no key -> zeros, lse = -inf.
    q = _randn(1, 300, 2, 64, dtype=torch.bfloat16)
    k = _randn(1, 70, 2, 64, dtype=torch.bfloat16)
    v = _randn(1, 70, 2, 64, dtype=torch.bfloat16)
    out = _check_fwd(q, k, v, causal)
    if causal:
        _, lse = flash_attn_func(q, k, v, causal=True, return_lse=True)
        assert torch.all(out[:, :230] == 0) and torch.all(lse[:, :, :230] == float("-inf"))


def test_forward_megatron_sbhd_strides_without_copy():
    # megatron-core hands attention [s, b, h, d]; the kernel reads it through strides, no transpose copy.
    s, b, h, d = 517, 3, 4, 128
    q_sbhd = _randn(s, b, h, d, dtype=torch.bfloat16)
    k_sbhd = _randn(s, b, 2, d, dtype=torch.bfloat16)
    v_sbhd = _randn(s, b, 2, d, dtype=torch.bfloat16)
    q, k, v = (t.transpose(0, 1) for t in (q_sbhd, k_sbhd, v_sbhd))  # [b, s, h, d] views
    out = flash_attn_func(q, k, v, causal=True)
    expected = flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(out, expected), "strided and contiguous inputs must give bit-identical outputs"
    ref, _ = attention_reference(q, k, v, causal=True)
    lowp, _ = attention_reference(q, k, v, causal=True, compute_dtype=torch.bfloat16)
    assert_within_torch_error("sbhd out", out, ref, lowp, factor=2.0)


def test_forward_packed_qkv_head_strides():
    # Heads interleaved in one fused projection [b, s, h, 3, d]: q/k/v are strided slices of it.
    qkv = _randn(2, 257, 4, 3, 64, dtype=torch.bfloat16)
    q, k, v = qkv.unbind(dim=3)
    out = flash_attn_func(q, k, v)
    ref, _ = attention_reference(q, k, v)
    lowp, _ = attention_reference(q, k, v, compute_dtype=torch.bfloat16)
    assert_within_torch_error("packed qkv out", out, ref, lowp, factor=2.0)


def _random_cu_seqlens(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu.cuda()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("h,h_k", [(4, 4), (6, 2)])
def test_forward_varlen_random_and_zero_lengths(causal, d, h, h_k):
    gen = torch.Generator().manual_seed(torch.seed() % (2**31))
    lengths_q = torch.randint(1, 700, (7,), generator=gen).tolist()
    lengths_q[2] = 0  # zero-length sequences must be skipped cleanly
    lengths_q[5] = 0
    lengths_k = [max(0, n + int(torch.randint(-100, 100, (1,), generator=gen))) for n in lengths_q]
    lengths_k[3] = 0  # queries without keys -> zeros
    cu_q, cu_k = _random_cu_seqlens(lengths_q), _random_cu_seqlens(lengths_k)
    q = _randn(sum(lengths_q), h, d, dtype=torch.bfloat16)
    k = _randn(sum(lengths_k), h_k, d, dtype=torch.bfloat16)
    v = _randn(sum(lengths_k), h_k, d, dtype=torch.bfloat16)
    poison_allocator(q.numel() * 2, h * q.shape[0] * 4)
    out, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal,
                                      return_lse=True)
    assert lse.shape == (h, q.shape[0])
    ref, ref_lse = varlen_reference(q, k, v, cu_q, cu_k, causal)
    lowp, _ = varlen_reference(q, k, v, cu_q, cu_k, causal, compute_dtype=torch.bfloat16)
    assert_within_torch_error("varlen out", out, ref, lowp, factor=2.0)
    assert not torch.isnan(lse).any()
    assert max_abs_err(lse, ref_lse) <= LSE_TOL


def test_forward_varlen_equals_fixed_length():
    # A packed batch of equal lengths is the fixed-length case: results must agree bit for bit.
    b, s, h, d = 3, 333, 4, 64
    q, k, v = (_randn(b, s, h, d, dtype=torch.bfloat16) for _ in range(3))
    cu = _random_cu_seqlens([s] * b)
    fixed = flash_attn_func(q, k, v, causal=True)
    packed = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, s, s, causal=True)
    assert torch.equal(packed.view(b, s, h, d), fixed)


def test_forward_traces_under_torch_compile():
    q, k, v = (_randn(2, 256, 4, 64, dtype=torch.bfloat16) for _ in range(3))

    def attend(q, k, v):
        return flash_attn_func(q * 1.0, k, v, causal=True) + 1.0

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), attend(q, k, v))


def test_custom_op_passes_opcheck():
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch agree with the real kernel.
    from bridge.kernels.interface import _flash_fwd

    q = _randn(2, 200, 4, 64, dtype=torch.bfloat16).requires_grad_()
    k = _randn(2, 150, 2, 64, dtype=torch.bfloat16).requires_grad_()
    v = _randn(2, 150, 2, 64, dtype=torch.bfloat16).requires_grad_()
    torch.library.opcheck(_flash_fwd, (q, k, v, None, None, 200, 150, 0.125, True, False))


def test_forward_bad_inputs_raise_readable_errors():
    q = _randn(1, 16, 4, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dropout"):
        flash_attn_func(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attn_func(q, q[:, :, :3], q[:, :, :3])
    with pytest.raises(RuntimeError, match="head dim 96 is not supported"):
        x = _randn(1, 16, 4, 96, dtype=torch.bfloat16)
        flash_attn_func(x, x, x)
    with pytest.raises(RuntimeError, match="dtype torch.float32"):
        x = _randn(1, 16, 4, 64, dtype=torch.float32)
        flash_attn_func(x, x, x)
