"""``flash_attn_with_kvcache``: the CPU reference against full attention, the decode kernel against the reference.

CPU tests pin the contract down with the plain-PyTorch path (appending in place, causal alignment, GQA, paged
caches, cache_batch_idx, windows, errors). GPU tests run the kernel on NaN-poisoned memory over split counts,
MHA/GQA/MQA, paged and contiguous caches, ragged cache lengths, appended k/v and a few causal queries, and
compare output, lse and the updated caches with the reference on the same inputs.
"""

from __future__ import annotations

import pytest
import torch

from bridge.kernels import flash_attn_with_kvcache
from bridge.kernels.decode import kvcache_attention_reference
from tests.kernels.attention_reference import attention_reference, max_abs_err, poison_allocator



def _paged(cache: torch.Tensor, page_size: int, generator: torch.Generator):
    """A contiguous cache [b, capacity, g, d] as shuffled pages plus the block table that reads it back."""
    b, capacity, g, d = cache.shape
    per_seq = capacity // page_size
    order = torch.randperm(b * per_seq, generator=generator)
    pages = torch.empty(b * per_seq, page_size, g, d, dtype=cache.dtype, device=cache.device)
    pages[order] = cache.reshape(b * per_seq, page_size, g, d)
    table = order.reshape(b, per_seq).to(torch.int32).to(cache.device)
    return pages, table


# ---- the reference (CPU) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("h,g", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("sq", [1, 3])
def test_reference_appends_and_equals_full_attention(h, g, sq):
    torch.manual_seed(0)
    b, cap, d = 2, 24, 16
    k_cache, v_cache = torch.randn(b, cap, g, d), torch.randn(b, cap, g, d)
    lengths = torch.tensor([5, 11], dtype=torch.int32)
    q, k, v = torch.randn(b, sq, h, d), torch.randn(b, sq, g, d), torch.randn(b, sq, g, d)
    before = k_cache.clone()
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths, return_lse=True)
    for i, n in enumerate(lengths.tolist()):
        assert torch.equal(k_cache[i, n:n + sq], k[i]) and torch.equal(v_cache[i, n:n + sq], v[i])
        assert torch.equal(k_cache[i, :n], before[i, :n]) and torch.equal(k_cache[i, n + sq:], before[i, n + sq:])
        full_k = torch.cat([before[i, :n], k[i]])[None]
        ref_out, ref_lse = attention_reference(q[i:i + 1], full_k, v_cache[i:i + 1, :n + sq], causal=True)
        assert max_abs_err(out[i], ref_out[0]) < 1e-5 and max_abs_err(lse[i], ref_lse[0]) < 1e-5


def test_reference_paged_equals_contiguous_and_batch_idx_selects_rows():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    b, cap, g, h, d = 3, 32, 2, 4, 8
    k_cache, v_cache = torch.randn(b, cap, g, d), torch.randn(b, cap, g, d)
    q, k, v = torch.randn(b, 2, h, d), torch.randn(b, 2, g, d), torch.randn(b, 2, g, d)
    lengths = torch.tensor([0, 9, 30], dtype=torch.int32)
    k_pages, table = _paged(k_cache, 8, gen)
    v_pages = torch.empty_like(k_pages)
    v_pages[table.flatten().long()] = v_cache.reshape(-1, 8, g, d)
    out_paged = flash_attn_with_kvcache(q, k_pages, v_pages, k, v, cache_seqlens=lengths, block_table=table)
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths)
    assert max_abs_err(out_paged, out) < 1e-6
    assert torch.equal(k_pages[table.flatten().long()].reshape(b, cap, g, d), k_cache)
    # cache_batch_idx: sequence i reads cache row idx[i]
    idx = torch.tensor([2, 0, 1], dtype=torch.int32)
    out_idx = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=5, cache_batch_idx=idx)
    out_perm = flash_attn_with_kvcache(q, k_cache[idx.long()], v_cache[idx.long()], cache_seqlens=5)
    assert torch.equal(out_idx, out_perm)


def test_reference_window_and_rows_without_keys():
    torch.manual_seed(2)
    q, kc, vc = torch.randn(1, 4, 2, 8), torch.randn(1, 16, 2, 8), torch.randn(1, 16, 2, 8)
    out, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=10, window_size=(3, -1), return_lse=True)
    keys = torch.arange(10)
    for j in range(4):
        pos = j + 6
        visible = (keys <= pos) & (keys >= pos - 3)
        ref, ref_lse = attention_reference(q[:, j:j + 1], kc[:, :10][:, visible], vc[:, :10][:, visible])
        assert max_abs_err(out[:, j:j + 1], ref) < 1e-5 and max_abs_err(lse[:, :, j:j + 1], ref_lse) < 1e-5
    # An empty cache and causal queries beyond it: the rows see no key (zeros, lse -inf).
    out, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=2, return_lse=True)
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2])) and torch.isinf(lse[:, :, :2]).all()


@pytest.mark.parametrize("kwargs,match", [
    ({}, "cache_seqlens is required"),
    ({"cache_seqlens": 30}, "exceed the cache capacity 16"),
    ({"cache_seqlens": torch.tensor([1, 2])}, "cache_seqlens must be an int32 tensor of shape"),
    ({"cache_seqlens": 1, "num_splits": 500}, "num_splits must be in 0..128"),
    ({"cache_seqlens": 1, "k": torch.randn(1, 1, 2, 8)}, "pass both k and v"),
])
def test_bad_input_is_one_line(kwargs, match):
    q, kc, vc = torch.randn(1, 1, 4, 8), torch.randn(1, 16, 2, 8), torch.randn(1, 16, 2, 8)
    with pytest.raises(ValueError, match=match) as info:
        flash_attn_with_kvcache(q, kc, vc, **kwargs)
    assert "\n" not in str(info.value)


def test_heads_must_divide():
    with pytest.raises(ValueError, match="multiple of the cache's 3 key/value heads"):
        flash_attn_with_kvcache(torch.randn(1, 1, 4, 8), torch.randn(1, 8, 3, 8), torch.randn(1, 8, 3, 8),
                                cache_seqlens=1)


# ---- the kernel (GPU) --------------------------------------------------------------------------------------


def _compare(q, k_cache, v_cache, k, v, lengths, causal=True, window=(-1, -1), num_splits=0, block_table=None,
             batch_idx=None):
    """Kernel vs reference on copies of the same caches: output, lse and the caches after the append."""
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    b, sq, h, d = q.shape
    poison_allocator(q.numel() * q.element_size(), b * h * sq * 4)
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths, cache_batch_idx=batch_idx,
                                       block_table=block_table, causal=causal, window_size=window,
                                       num_splits=num_splits, return_lse=True)
    ref_out, ref_lse = kvcache_attention_reference(q, ref_k, ref_v, k, v, lengths, batch_idx, block_table,
                                                   d ** -0.5, causal, window)
    assert not torch.isnan(out).any()
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v), "the append wrote other cache rows"
    tol = 2e-2 if q.dtype == torch.bfloat16 else 4e-3
    assert max_abs_err(out, ref_out) <= tol, max_abs_err(out, ref_out)
    assert max_abs_err(lse, ref_lse) <= 2e-3, max_abs_err(lse, ref_lse)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("g", [8, 2, 1])
@pytest.mark.parametrize("num_splits", [1, 3, 0])
@pytest.mark.parametrize("sq", [1, 4])
@pytest.mark.parametrize("append", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode kernel needs a CUDA GPU")
def test_kernel_matches_reference_contiguous(dtype, d, g, num_splits, sq, append):
    torch.manual_seed(d + g + sq)
    b, h, cap = 3, 8, 700
    dev = "cuda"
    k_cache = torch.randn(b, cap, g, d, device=dev, dtype=dtype)
    v_cache = torch.randn(b, cap, g, d, device=dev, dtype=dtype)
    lengths = torch.tensor([0, 37, 650], dtype=torch.int32, device=dev)
    q = torch.randn(b, sq, h, d, device=dev, dtype=dtype)
    k = torch.randn(b, sq, g, d, device=dev, dtype=dtype) if append else None
    v = torch.randn(b, sq, g, d, device=dev, dtype=dtype) if append else None
    _compare(q, k_cache, v_cache, k, v, lengths, num_splits=num_splits)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("g", [4, 1])
@pytest.mark.parametrize("page_size", [16, 256])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode kernel needs a CUDA GPU")
def test_kernel_paged_cache(d, g, page_size):
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    b, h, cap, sq = 4, 16, 1024, 2
    cache = torch.randn(b, cap, g, d, dtype=torch.bfloat16)
    k_pages, table = _paged(cache, page_size, gen)
    v_pages, _ = _paged(torch.randn_like(cache), page_size, torch.Generator().manual_seed(7))
    k_pages, v_pages, table = k_pages.cuda(), v_pages.cuda(), table.cuda()
    lengths = torch.tensor([1000, 3, 511, 512], dtype=torch.int32, device="cuda") - sq
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sq, g, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, sq, g, d, device="cuda", dtype=torch.bfloat16)
    for splits in (1, 0, 5):
        _compare(q, k_pages.clone(), v_pages.clone(), k, v, lengths, num_splits=splits, block_table=table)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode kernel needs a CUDA GPU")
def test_kernel_long_cache_window_batch_idx_and_megatron_layout():
    torch.manual_seed(3)
    dev, dt = "cuda", torch.bfloat16
    # megatron's static cache is [s, b, g, d]; the kernel reads its [b, s, g, d] transpose in place.
    cache_sbgd = torch.randn(20000, 2, 8, 64, device=dev, dtype=dt)
    vcache_sbgd = torch.randn(20000, 2, 8, 64, device=dev, dtype=dt)
    kc, vc = cache_sbgd.transpose(0, 1), vcache_sbgd.transpose(0, 1)
    q = torch.randn(2, 1, 32, 64, device=dev, dtype=dt)
    lengths = torch.tensor([19999, 16384], dtype=torch.int32, device=dev)
    _compare(q, kc, vc, None, None, lengths)
    _compare(q, kc, vc, None, None, lengths, window=(1000, -1))
    _compare(q, kc, vc, None, None, lengths, causal=False, window=(300, 200))
    idx = torch.tensor([1, 0], dtype=torch.int32, device=dev)
    _compare(q, kc, vc, None, None, lengths, batch_idx=idx)
    # a fixed int length, as the attention backend passes it
    out = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=12345)
    ref, _ = kvcache_attention_reference(q, kc, vc, None, None, 12345, None, None, 0.125, True)
    assert max_abs_err(out, ref) <= 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode kernel needs a CUDA GPU")
def test_kernel_rejects_unsupported_head_dim_in_one_line():
    q = torch.randn(1, 1, 4, 96, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(1, 16, 4, 96, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head dim 96 is not supported") as info:
        flash_attn_with_kvcache(q, kc, kc.clone(), cache_seqlens=3)
    assert "\n" not in str(info.value)
