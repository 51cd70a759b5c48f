"""Plain-PyTorch attention references and tolerance helpers shared by the flash-kernel tests and benchmark.

The practice of the best kernel test suites: compare the kernel against an fp32 reference computed from the *same* rounded
16-bit inputs, and accept an error up to a multiple of PyTorch's own error when it runs the same attention in
the 16-bit dtype. Nothing here needs a GPU.
"""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def window_allowed(s_q: int, s_k: int, left: int, right: int, causal: bool, device) -> Tensor:
    """[s_q, s_k] bool for flash-attn's window_size: row r sees key c iff r + s_k - s_q - left <= c <=
    r + s_k - s_q + right, -1 = unbounded; causal sets right to 0."""
    rows = torch.arange(s_q, device=device)[:, None] + (s_k - s_q)
    cols = torch.arange(s_k, device=device)[None, :]
    allowed = torch.ones(s_q, s_k, dtype=torch.bool, device=device)
    if causal:
        right = 0
    if left >= 0:
        allowed &= cols >= rows - left
    if right >= 0:
        allowed &= cols <= rows + right
    return allowed


def attention_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                        softmax_scale: Optional[float] = None, compute_dtype: torch.dtype = torch.float32,
                        window: tuple = (-1, -1), softcap: float = 0.0, alibi_slopes: Optional[Tensor] = None):
    """``softmax(scale * q k^T + mask) v`` computed in ``compute_dtype``; ``window`` is flash-attn's window_size,
    ``softcap`` caps the scaled logits with ``softcap * tanh(x / softcap)``, ``alibi_slopes`` ([h] or [b, h])
    then adds ``-slope * |i + s_k - s_q - j|``.

    q ``[b, s_q, h, d]``, k/v ``[b, s_k, h_k, d]`` (GQA by repeating K/V here; the kernel must not).
    With ``compute_dtype`` fp32 this is the reference; with the inputs' 16-bit dtype it is PyTorch's own
    low-precision computation, whose error sets the tolerance. Returns ``(out [b, s_q, h, d], lse [b, h, s_q])``
    in ``compute_dtype`` / fp32; rows that see no key give zeros and ``lse = -inf``.
    """
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    k = k.repeat_interleave(h // h_k, dim=2)
    v = v.repeat_interleave(h // h_k, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (b, h, s_q, s_k)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        rows = torch.arange(s_q, device=q.device)[:, None] + (s_k - s_q)
        dist = (rows - torch.arange(s_k, device=q.device)[None, :]).abs().to(scores.dtype)
        slopes = alibi_slopes.to(scores.dtype).expand(b, h) if alibi_slopes.dim() == 1 else alibi_slopes
        scores = scores - slopes.to(scores.dtype)[:, :, None, None] * dist
    allowed = window_allowed(s_q, s_k, window[0], window[1], causal, q.device)
    row_has_key = allowed.any(dim=-1, keepdim=True)  # (s_q, 1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)  # (b, h, s_q)
    # Rows without keys: softmax over zeros stays finite, then the row is zeroed (never NaN).
    probs = torch.softmax(torch.where(row_has_key, scores, torch.zeros_like(scores)), dim=-1) * row_has_key
    out = torch.einsum("bhqk,bkhd->bqhd", probs.to(compute_dtype), v)
    return out, lse


def varlen_reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     causal: bool = False, softmax_scale: Optional[float] = None,
                     compute_dtype: torch.dtype = torch.float32, window: tuple = (-1, -1), softcap: float = 0.0,
                     alibi_slopes: Optional[Tensor] = None):
    """Packed-batch version: q ``[total_q, h, d]``, k/v ``[total_k, h_k, d]``; returns out, lse ``[h, total_q]``."""
    total_q, h, d = q.shape
    out = torch.zeros(total_q, h, d, dtype=compute_dtype, device=q.device)
    lse = torch.full((h, total_q), float("-inf"), dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if q1 == q0:
            continue
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[i:i + 1]
        o_i, lse_i = attention_reference(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale,
                                         compute_dtype, window, softcap, slopes)
        out[q0:q1] = o_i[0]
        lse[:, q0:q1] = lse_i[0]
    return out, lse


def max_abs_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| in fp32, treating equal infinities (e.g. lse = -inf on both) as zero error."""
    a, b = a.float(), b.float()
    same_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    diff = torch.where(same_inf, torch.zeros_like(a), (a - b).abs())
    return diff.max().item() if diff.numel() else 0.0


def assert_within_torch_error(name: str, got: Tensor, ref: Tensor, torch_lowp: Tensor, factor: float,
                              tiny: float = 1e-5) -> None:
    """Passes when ``max|got - ref| <= factor * max|torch_lowp - ref| + tiny`` and ``got`` has no NaN."""
    assert not torch.isnan(got).any(), f"{name}: NaN in the kernel's result (unwritten or invalid elements)"
    err = max_abs_err(got, ref)
    bound = factor * max_abs_err(torch_lowp, ref) + tiny
    assert err <= bound, f"{name}: max error {err:.3e} exceeds {factor}x PyTorch's own error ({bound:.3e})"


def grads_of(fn, leaves, dout):
    """``(fn(*leaves), grads of <fn(...), dout> w.r.t. fresh copies of leaves)``."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dout)


def assert_fwd_bwd_within_torch_error(out, grads, ref, low, grad_tiny: float = 1e-4) -> None:
    """The kernel's ``out`` within 2x and ``(dq, dk, dv)`` within 3x PyTorch's 16-bit error; ``ref`` and ``low``
    are ``grads_of`` results of the fp32 and the 16-bit reference."""
    (ref_out, ref_grads), (low_out, low_grads) = ref, low
    assert_within_torch_error("out", out, ref_out, low_out, factor=2.0)
    for name, g, r, lo in zip(("dq", "dk", "dv"), grads, ref_grads, low_grads):
        assert g.shape == r.shape and torch.isfinite(g).all(), f"{name}: shape or non-finite values"
        assert_within_torch_error(name, g, r, lo, factor=3.0, tiny=grad_tiny)


def poison_allocator(*nbytes: int) -> None:
    """Leaves NaN-filled blocks of these sizes in PyTorch's CUDA caching allocator.

    The binding allocates its outputs with ``empty``, which reuses freed blocks of the same size: an element
    the kernel forgets to write then reads as NaN instead of a harmless leftover zero.
    """
    blocks = [torch.full((max(n // 4, 1),), float("nan"), device="cuda") for n in nbytes]
    del blocks


# The two kernel families the binding can run on an H100: the Hopper kernels (TMA + wgmma, the default on
# sm_90) and the mma.sync kernels (sm_80+, and the deterministic backward). GPU test modules run every case
# under both through this fixture's parameter.
FLASH_IMPLS = ("sm90", "mma")


def use_flash_impl(monkeypatch, impl: str) -> None:
    """Selects the kernel family for the rest of a test (bridge.kernels.interface.kernel_family reads BRIDGE_FLASH_IMPL per call)."""
    monkeypatch.setenv("BRIDGE_FLASH_IMPL", impl)
