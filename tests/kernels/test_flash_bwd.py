"""GPU tests of the flash-attention backward kernel (``torch.ops.bridge_flash.bwd``) in isolation.

The forward output and log-sum-exp come from an fp32 PyTorch reference, so these tests do not depend on the
forward kernel. Gradients must be within 3x of PyTorch's own error when it runs the same attention in the
input's 16-bit dtype (both measured against fp32 autograd on the same rounded inputs).

``scripts/bench_flash_bwd.py`` times the backward alone against PyTorch SDPA's FlashAttention-2 backward;
``scripts/sanitize_flash.py`` is the memory check.
"""

from __future__ import annotations

import math

import pytest
import torch

from bridge.kernels.interface import kernel_family

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("flash_impl"),  # tests/kernels/conftest.py: both kernel families
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash backward kernel needs a CUDA GPU"),
]


# (s_q, s_k) pairs: ragged tiles, s_q != s_k both ways, single rows and columns
SEQLEN_PAIRS = [(1, 1), (113, 203), (128, 217), (239, 1), (799, 3), (1023, 1024), (1024, 1023), (4096, 4096),
                (4224, 4224)]


def _ops():
    from bridge.kernels.build import load_ops

    return load_ops()


# ---- reference -----------------------------------------------------------------------------------------


def attention_reference(q, k, v, causal: bool, scale: float):
    """softmax(scale * q k^T + mask) v in the inputs' dtype; q [b, s_q, h, d], k/v [b, s_k, h_k, d].

    Returns (out [b, s_q, h, d], lse [b, h, s_q]); rows that see no key give zeros and lse = -inf.
    Causal masking is bottom-right aligned: query row r sees key c iff c <= r + s_k - s_q.
    """
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    group = h // h_k
    k = k.repeat_interleave(group, dim=2)  # the reference may repeat K/V; the kernel must not
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (b, h, s_q, s_k)
    if causal:
        rows = torch.arange(s_q, device=q.device)[:, None]
        cols = torch.arange(s_k, device=q.device)[None, :]
        allowed = cols <= rows + (s_k - s_q)
    else:
        allowed = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device)
    row_has_key = allowed.any(dim=-1, keepdim=True)  # (s_q, 1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)  # (b, h, s_q); -inf for rows without keys
    # keep softmax finite on rows without keys, then zero them (their gradient is zero, never NaN)
    probs = torch.softmax(torch.where(row_has_key, scores, torch.zeros_like(scores)), dim=-1)
    probs = probs * row_has_key
    out = torch.einsum("bhqk,bkhd->bqhd", probs.to(v.dtype), v)
    return out, lse


def reference_grads(q, k, v, dout, causal, scale, dtype):
    """Gradients of attention_reference computed in `dtype` (fp32 for the reference, 16-bit for torch's own)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, _ = attention_reference(*leaves, causal=causal, scale=scale)
    return torch.autograd.grad(out, leaves, dout.to(dtype))


def poison_allocator(nbytes: int) -> None:
    """Leaves NaN-filled blocks in PyTorch's caching allocator, so unwritten kernel outputs show up as NaN."""
    junk = torch.full((max(nbytes // 4, 1),), float("nan"), device="cuda")
    del junk


def make_inputs(b, s_q, s_k, h, h_k, d, dtype, gen):
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, s_k, h_k, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, s_k, h_k, d, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn(b, s_q, h, d, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, dout


def forward_reference(q, k, v, causal, scale):
    """The forward's outputs as the kernel would get them: out rounded to the input dtype, lse in fp32."""
    out, lse = attention_reference(q.float(), k.float(), v.float(), causal, scale)
    return out.to(q.dtype), lse.contiguous()


def assert_grads_close(got, q, k, v, dout, causal, scale):
    ref = reference_grads(q, k, v, dout, causal, scale, torch.float32)
    low = reference_grads(q, k, v, dout, causal, scale, q.dtype)
    for name, g, r, lo in zip(("dq", "dk", "dv"), got, ref, low):
        assert g.shape == r.shape and g.dtype == q.dtype, f"{name}: {g.shape}/{g.dtype}"
        assert torch.isfinite(g).all(), f"{name} has non-finite values (unwritten or NaN)"
        err = (g.float() - r).abs().max().item()
        torch_err = (lo.float() - r).abs().max().item()
        assert err <= 3 * torch_err + 1e-4, f"{name}: max error {err:.3e} > 3 x torch's {torch_err:.3e}"


def run_bwd(q, k, v, out, lse, dout, causal, scale, deterministic=False, cu_q=None, cu_k=None, max_q=0, max_k=0):
    poison_allocator(4 * (q.numel() + k.numel() + v.numel()) * 2)
    return _ops().bwd(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, causal, deterministic,
                      kernel_family(q.device))


# ---- fixed length ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_q,s_k", SEQLEN_PAIRS)
def test_matches_reference(s_q, s_k, causal, d, dtype):
    gen = torch.Generator(device="cuda").manual_seed(s_q * 7919 + s_k + d + causal)
    b, h = (1, 2) if s_q * s_k > 2**22 else (2, 3)
    q, k, v, dout = make_inputs(b, s_q, s_k, h, h, d, dtype, gen)
    scale = 1.0 / math.sqrt(d)
    out, lse = forward_reference(q, k, v, causal, scale)
    got = run_bwd(q, k, v, out, lse, dout, causal, scale)
    assert_grads_close(got, q, k, v, dout, causal, scale)


@pytest.mark.parametrize("h,h_k", [(4, 2), (12, 2), (6, 1)])  # GQA r = 2, GQA r = 6, MQA
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("s_q,s_k", [(113, 203), (1024, 1023), (799, 3)])
def test_gqa_and_mqa(s_q, s_k, d, causal, h, h_k):
    gen = torch.Generator(device="cuda").manual_seed(h * 100 + h_k + s_q)
    q, k, v, dout = make_inputs(2, s_q, s_k, h, h_k, d, torch.bfloat16, gen)
    scale = 1.0 / math.sqrt(d)
    out, lse = forward_reference(q, k, v, causal, scale)
    got = run_bwd(q, k, v, out, lse, dout, causal, scale)
    assert_grads_close(got, q, k, v, dout, causal, scale)


def test_megatron_sbhd_strides_and_custom_scale():
    """[s, b, h, d] tensors go in as [b, s, h, d] views (no copies); the gradients keep that layout."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    s, b, h, h_k, d = 300, 2, 4, 2, 128
    q, k, v, dout = (torch.randn(s, b, n, d, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(0, 1)
                     for n in (h, h_k, h_k, h))
    scale = 0.3
    out, lse = forward_reference(q, k, v, True, scale)
    got = run_bwd(q, k, v, out, lse, dout, True, scale)
    assert got[0].stride() == q.stride() and got[1].stride() == k.stride()
    assert_grads_close(got, q, k, v, dout, True, scale)


# ---- variable length ------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_varlen_random_and_zero_lengths(causal, d):
    gen = torch.Generator(device="cuda").manual_seed(11 + d + causal)
    cpu_gen = torch.Generator().manual_seed(11 + d + causal)
    lens_q = torch.randint(0, 300, (6,), generator=cpu_gen).tolist()
    lens_k = torch.randint(0, 300, (6,), generator=cpu_gen).tolist()
    lens_q[1], lens_k[2], lens_q[4], lens_k[4] = 0, 0, 0, 0  # zero-length query / key / both
    h, h_k, dtype = 6, 2, torch.bfloat16
    scale = 1.0 / math.sqrt(d)
    q = torch.randn(sum(lens_q), h, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(sum(lens_k), h_k, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(sum(lens_k), h_k, d, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn(sum(lens_q), h, d, device="cuda", dtype=dtype, generator=gen)
    starts_q = [sum(lens_q[:i]) for i in range(len(lens_q) + 1)]
    starts_k = [sum(lens_k[:i]) for i in range(len(lens_k) + 1)]
    cu_q = torch.tensor(starts_q, device="cuda", dtype=torch.int32)
    cu_k = torch.tensor(starts_k, device="cuda", dtype=torch.int32)

    outs, lses = [], []
    for i in range(len(lens_q)):
        sq, sk = slice(starts_q[i], starts_q[i + 1]), slice(starts_k[i], starts_k[i + 1])
        o, l = forward_reference(q[None, sq], k[None, sk], v[None, sk], causal, scale)
        outs.append(o[0])
        lses.append(l[0])
    out, lse = torch.cat(outs), torch.cat(lses, dim=1).contiguous()  # lse [h, total_q]

    dq, dk, dv = run_bwd(q, k, v, out, lse, dout, causal, scale, cu_q=cu_q, cu_k=cu_k, max_q=max(lens_q),
                         max_k=max(lens_k))
    for i in range(len(lens_q)):
        sq, sk = slice(starts_q[i], starts_q[i + 1]), slice(starts_k[i], starts_k[i + 1])
        got = (dq[None, sq], dk[None, sk], dv[None, sk])
        if lens_q[i] == 0 and lens_k[i] > 0:  # keys nobody attends to get zero gradients
            assert got[1].eq(0).all() and got[2].eq(0).all()
        if lens_q[i] and lens_k[i]:
            assert_grads_close(got, q[None, sq], k[None, sk], v[None, sk], dout[None, sq], causal, scale)
        elif lens_q[i]:  # no keys at all: the output was zeros, so dq is zero
            assert got[0].eq(0).all()


# ---- determinism and masking ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_mode_is_bit_identical(causal):
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v, dout = make_inputs(2, 1500, 1500, 8, 2, 128, torch.bfloat16, gen)
    scale = 1.0 / math.sqrt(128)
    out, lse = forward_reference(q, k, v, causal, scale)
    first = run_bwd(q, k, v, out, lse, dout, causal, scale, deterministic=True)
    assert_grads_close(first, q, k, v, dout, causal, scale)
    for _ in range(5):
        again = run_bwd(q, k, v, out, lse, dout, causal, scale, deterministic=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_fully_masked_rows_give_zero_gradients():
    """Causal with s_q > s_k: the first s_q - s_k query rows see no key; their dq is exactly zero."""
    gen = torch.Generator(device="cuda").manual_seed(8)
    q, k, v, dout = make_inputs(1, 300, 40, 2, 2, 64, torch.float16, gen)
    out, lse = forward_reference(q, k, v, True, 0.125)
    assert torch.isinf(lse[:, :, :260]).all()
    dq, dk, dv = run_bwd(q, k, v, out, lse, dout, True, 0.125)
    assert dq[:, :260].eq(0).all() and torch.isfinite(dq).all()
    assert_grads_close((dq, dk, dv), q, k, v, dout, True, 0.125)


# ---- argument checks ------------------------------------------------------------------------------------


def test_bad_arguments_raise_readable_errors():
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v, dout = make_inputs(1, 64, 64, 4, 2, 64, torch.bfloat16, gen)
    out, lse = forward_reference(q, k, v, False, 0.125)
    bwd = _ops().bwd
    with pytest.raises(RuntimeError, match="head dim 96 is not supported; valid: 64, 128"):
        q96 = torch.randn(1, 64, 4, 96, device="cuda", dtype=torch.bfloat16)
        bwd(q96, q96, q96, q96, q96, lse, None, None, 0, 0, 0.1, False, False)
    with pytest.raises(RuntimeError, match="must share one dtype"):
        bwd(dout, q, k.half(), v, out, lse, None, None, 0, 0, 0.1, False, False)
    with pytest.raises(RuntimeError, match="multiple of the key/value heads"):
        bwd(dout, q, k[:, :, :1].expand(1, 64, 3, 64), v[:, :, :1].expand(1, 64, 3, 64), out, lse, None, None, 0, 0,
            0.1, False, False)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        bwd(dout, q, k, v, out, lse.half(), None, None, 0, 0, 0.1, False, False)
    with pytest.raises(RuntimeError, match="contiguous last"):
        bwd(dout, q, k, v, out.transpose(2, 3).contiguous().transpose(2, 3), lse, None, None, 0, 0, 0.1, False,
            False)
    with pytest.raises(RuntimeError, match="both cu_seqlens_q and cu_seqlens_k"):
        cu = torch.tensor([0, 64], device="cuda", dtype=torch.int32)
        bwd(dout[0], q[0], k[0], v[0], out[0], lse[0], cu, None, 64, 64, 0.1, False, False)
