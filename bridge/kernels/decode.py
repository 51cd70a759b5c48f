"""KV-cache attention for generation: ``flash_attn_with_kvcache`` (flash-attn's contract, our kernel).

On CUDA it runs the decode kernel (``csrc/flash_decode.cuh``: split-KV, GQA rows packed per K/V head, paged
caches); on the CPU it runs :func:`kvcache_attention_reference`, the plain-PyTorch definition the kernel is
tested against. Both append the new keys/values into the caches in place first. No autograd: this is for
inference.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from bridge.kernels import build
from bridge.kernels.interface import unavailable_reason

Tensor = torch.Tensor
_FN = "flash_attn_with_kvcache"


def flash_attn_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    cache_seqlens: Union[int, Tensor, None] = None,
    cache_batch_idx: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = True,
    window_size: tuple[int, int] = (-1, -1),
    num_splits: int = 0,
    return_lse: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Attention of new query tokens over a KV cache, appending the new keys/values to it in place.

    Args:
        q: ``[batch, seqlen_q, heads, head_dim]``: the new tokens' queries (1 for decoding, a few for
            speculative decoding or chunked prefill).
        k_cache, v_cache: ``[batch_cache, capacity, kv_heads, head_dim]`` (any batch/row/head strides with a
            contiguous head dim, e.g. megatron's ``[s, b, g, d]`` cache transposed), or, with ``block_table``,
            pages ``[num_pages, page_size, kv_heads, head_dim]``. ``heads`` must be a multiple of ``kv_heads``.
        k, v: optional ``[batch, seqlen_new, kv_heads, head_dim]``, written into the caches at positions
            ``cache_seqlens[i] ..`` before attending.
        cache_seqlens: int or int32 ``[batch]``: the tokens already in each sequence's cache. Sequence ``i``
            attends over its first ``cache_seqlens[i] + seqlen_new`` keys.
        cache_batch_idx: optional int32 ``[batch]``: the cache row of each sequence (default: row ``i``).
        block_table: optional int32 ``[batch, max_pages]``: the pages of each sequence, in order.
        softmax_scale: defaults to ``1 / sqrt(head_dim)``.
        causal: query ``j`` sits at key position ``j + seqlen_k - seqlen_q`` and sees keys up to it.
        window_size: ``(left, right)`` sliding window around that position; -1 is unbounded.
        num_splits: how many CTAs share one sequence's cache (split-KV); 0 picks by heuristic. The CPU path
            ignores it.
        return_lse: also return the fp32 log-sum-exp ``[batch, heads, seqlen_q]``.

    Returns:
        ``out`` ``[batch, seqlen_q, heads, head_dim]`` in q's dtype, or ``(out, lse)``. Rows that see no key
        are zeros with ``lse = -inf``.
    """
    _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, window_size,
                        num_splits)
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{_FN}: softmax_scale must be a positive finite number, got {softmax_scale}")
    left, right = (int(w) for w in window_size)
    if q.device.type == "cpu":
        out, lse = kvcache_attention_reference(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx,
                                               block_table, scale, causal, (left, right))
    else:
        reason = unavailable_reason(q.device, q.dtype, q.shape[-1])
        if reason is not None:
            raise RuntimeError(f"{_FN}: {reason}")
        fixed = cache_seqlens if isinstance(cache_seqlens, int) else 0
        lengths = cache_seqlens if isinstance(cache_seqlens, Tensor) else None
        out, lse = build.load_ops().decode(
            _aligned(q), k_cache, v_cache, None if k is None else _aligned(k), None if v is None else _aligned(v),
            lengths, fixed, cache_batch_idx, block_table, scale, bool(causal), left, right, int(num_splits))
    return (out, lse) if return_lse else out


def decode_num_splits(q: Tensor, kv_heads: int, capacity: int) -> int:
    """The split count ``num_splits=0`` picks on this GPU for these shapes (benchmarks report it)."""
    return int(build.load_ops().decode_num_splits(q, int(kv_heads), int(capacity)))


def _aligned(t: Tensor) -> Tensor:
    """``t`` when the kernel can read it in place (contiguous head dim, 16-byte rows), else a copy."""
    ok = t.stride(-1) == 1 and all(s % 8 == 0 or n <= 1 for s, n in zip(t.stride()[:-1], t.shape[:-1]))
    return t if ok and t.data_ptr() % 16 == 0 else t.contiguous()


def _check(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, window_size, num_splits) -> int:
    """One readable ValueError per kind of bad input; returns seqlen_new."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        if t is not None and t.dim() != 4:
            raise ValueError(f"{_FN}: {name} must have 4 dimensions, got shape {tuple(t.shape)}")
        if t is not None and (t.device != q.device or t.dtype != q.dtype):
            raise ValueError(f"{_FN}: {name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}; "
                             "all tensors must share q's dtype and device")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{_FN}: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    b, _, h, d = q.shape
    h_k = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"{_FN}: q has head dim {d} but the cache has {k_cache.shape[3]}")
    if h_k == 0 or h % h_k:
        raise ValueError(f"{_FN}: q's {h} heads must be a multiple of the cache's {h_k} key/value heads")
    if (k is None) != (v is None):
        raise ValueError(f"{_FN}: pass both k and v to append, or neither")
    seqlen_new = 0
    if k is not None:
        if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (h_k, d):
            raise ValueError(f"{_FN}: k and v must be [{b}, seqlen_new, {h_k}, {d}], got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        seqlen_new = k.shape[1]
    if cache_seqlens is None:
        raise ValueError(f"{_FN}: cache_seqlens is required (an int or an int32 tensor [batch])")
    if isinstance(cache_seqlens, Tensor):
        _check_index(cache_seqlens, "cache_seqlens", q, (b,))
    elif not isinstance(cache_seqlens, int) or cache_seqlens < 0:
        raise ValueError(f"{_FN}: cache_seqlens must be an int >= 0 or an int32 tensor [batch], got {cache_seqlens!r}")
    if block_table is not None:
        if cache_batch_idx is not None:
            raise ValueError(f"{_FN}: cache_batch_idx and block_table exclude each other (pages name the cache rows)")
        if block_table.dim() != 2:
            raise ValueError(f"{_FN}: block_table must be int32 [batch, max_pages], got shape {tuple(block_table.shape)}")
        _check_index(block_table, "block_table", q, (b, block_table.shape[1]))
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if cache_batch_idx is not None:
            _check_index(cache_batch_idx, "cache_batch_idx", q, (b,))
        elif k_cache.shape[0] < b:
            raise ValueError(f"{_FN}: the cache holds {k_cache.shape[0]} sequences but q has batch {b}")
        capacity = k_cache.shape[1]
    if isinstance(cache_seqlens, int) and cache_seqlens + seqlen_new > capacity:
        raise ValueError(f"{_FN}: cache_seqlens {cache_seqlens} + {seqlen_new} new tokens exceed the cache "
                         f"capacity {capacity}")
    if len(window_size) != 2:
        raise ValueError(f"{_FN}: window_size must be (left, right), got {window_size!r}")
    if not 0 <= num_splits <= 128:
        raise ValueError(f"{_FN}: num_splits must be in 0..128 (0 = heuristic), got {num_splits}")
    if q.device.type != "cpu" and k_cache.stride(-1) != 1:
        raise ValueError(f"{_FN}: the caches must have a contiguous head dimension (they are updated in place)")
    return seqlen_new


def _check_index(t: Tensor, name: str, q: Tensor, shape: tuple) -> None:
    if t.dtype != torch.int32 or tuple(t.shape) != tuple(shape) or t.device != q.device:
        raise ValueError(f"{_FN}: {name} must be an int32 tensor of shape {list(shape)} on {q.device}, got "
                         f"{t.dtype} {list(t.shape)} on {t.device}")


# ---- the reference -----------------------------------------------------------------------------------------


def kvcache_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
    cache_seqlens: Union[int, Tensor], cache_batch_idx: Optional[Tensor], block_table: Optional[Tensor],
    softmax_scale: float, causal: bool, window_size: tuple[int, int] = (-1, -1),
) -> tuple[Tensor, Tensor]:
    """The definition of :func:`flash_attn_with_kvcache` in plain PyTorch (fp32 math, any device).

    Appends ``k``/``v`` into the caches in place, then returns ``(out in q's dtype, lse fp32 [b, h, s_q])``.
    """
    b, sq, h, d = q.shape
    h_k = k_cache.shape[2]
    lengths = ([int(cache_seqlens)] * b if isinstance(cache_seqlens, int) else
               [int(x) for x in cache_seqlens.tolist()])
    seqlen_new = 0 if k is None else k.shape[1]
    out = torch.zeros(b, sq, h, d, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h, sq), float("-inf"), dtype=torch.float32, device=q.device)
    for i in range(b):
        sk = lengths[i] + seqlen_new
        rows = _cache_rows(k_cache, i, sk, cache_batch_idx, block_table)  # (index tuple) per key
        if k is not None:
            new_rows = tuple(r[lengths[i]:] for r in rows)
            k_cache[new_rows] = k[i]
            v_cache[new_rows] = v[i]
        keys = k_cache[rows].float().repeat_interleave(h // h_k, dim=1)    # (sk, h, d)
        values = v_cache[rows].float().repeat_interleave(h // h_k, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[i].float(), keys) * softmax_scale  # (h, sq, sk)
        allowed = _allowed(sq, sk, causal, window_size, q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)                                   # (h, sq)
        has_key = allowed.any(dim=-1)                                               # (sq,)
        probs = torch.where(has_key[None, :, None], torch.exp(scores - row_lse[..., None]),
                            torch.zeros_like(scores))
        out[i] = torch.einsum("hqk,khd->qhd", probs, values)
        lse[i] = torch.where(has_key[None, :], row_lse, torch.full_like(row_lse, float("-inf")))
    return out.to(q.dtype), lse


def _cache_rows(cache: Tensor, i: int, sk: int, cache_batch_idx, block_table) -> tuple[Tensor, Tensor]:
    """Advanced indices (first dim, second dim) of sequence i's first sk cache rows."""
    positions = torch.arange(sk, device=cache.device)
    if block_table is not None:
        page_size = cache.shape[1]
        pages = block_table[i].long()[positions // page_size]
        return pages, positions % page_size
    row = int(cache_batch_idx[i]) if cache_batch_idx is not None else i
    return torch.full_like(positions, row), positions


def _allowed(sq: int, sk: int, causal: bool, window_size: tuple[int, int], device) -> Tensor:
    """[sq, sk] bool: query j (at key position j + sk - sq) may see key c."""
    pos = torch.arange(sq, device=device)[:, None] + (sk - sq)
    col = torch.arange(sk, device=device)[None, :]
    left, right = window_size
    if causal:
        right = 0 if right < 0 else min(right, 0)
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if right >= 0:
        allowed &= col <= pos + right
    if left >= 0:
        allowed &= col >= pos - left
    return allowed
