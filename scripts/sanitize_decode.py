"""Small KV-cache decode runs, meant for ``compute-sanitizer --tool memcheck``.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/sanitize_decode.py

Covers both head dims, MHA / GQA / MQA (one and two row tiles), appended k/v, a few causal queries, one and
several splits (with empty splits), an empty cache, ragged cache lengths, paged caches with odd page sizes,
cache_batch_idx and a sliding window, at sizes small enough for the sanitizer's slowdown.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.kernels import flash_attn_with_kvcache  # noqa: E402


def main() -> int:
    dev, dt = "cuda", torch.bfloat16
    runs = 0
    for d in (64, 128):
        for h, g in ((8, 8), (8, 2), (32, 1)):
            kc = torch.randn(3, 300, g, d, device=dev, dtype=dt)
            vc = torch.randn_like(kc)
            lengths = torch.tensor([0, 150, 297], dtype=torch.int32, device=dev)
            for sq in (1, 3):
                q = torch.randn(3, sq, h, d, device=dev, dtype=dt)
                k = torch.randn(3, sq, g, d, device=dev, dtype=dt)
                v = torch.randn_like(k)
                for splits in (1, 4, 0):
                    flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=lengths, num_splits=splits)
                    runs += 1
                flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lengths, window_size=(40, -1), num_splits=3)
                idx = torch.tensor([2, 0, 1], dtype=torch.int32, device=dev)
                flash_attn_with_kvcache(q, kc, vc, cache_seqlens=100, cache_batch_idx=idx)
                runs += 2
            pages = torch.randn(40, 48, g, d, device=dev, dtype=dt)  # page size 48, 12 pages per sequence
            table = torch.randperm(36, device=dev).to(torch.int32).reshape(3, 12)
            q = torch.randn(3, 2, h, d, device=dev, dtype=dt)
            k = torch.randn(3, 2, g, d, device=dev, dtype=dt)
            flash_attn_with_kvcache(q, pages, pages.clone(), k, k.clone(), cache_seqlens=lengths, block_table=table,
                                    num_splits=5)
            runs += 1
    torch.cuda.synchronize()
    print(f"sanitize_decode: {runs} decode calls ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
