"""Small forward + backward flash-kernel run, meant for ``compute-sanitizer --tool memcheck``.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/sanitize_flash.py

Covers ragged tiles (sequence lengths not multiples of the tiles), GQA, causal with s_q != s_k, varlen with a
zero-length sequence, the deterministic backward, sliding windows (with and without causal, fixed and varlen,
deterministic), soft-cap and ALiBi, and both head dims, at sizes small enough for the sanitizer's slowdown.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.kernels import flash_attn_func, flash_attn_varlen_func  # noqa: E402
from bridge.kernels.build import backward_is_built  # noqa: E402


def main() -> int:
    with_bwd = backward_is_built()
    for d in (64, 128):
        q = torch.randn(2, 77, 4, d, device="cuda", dtype=torch.bfloat16, requires_grad=with_bwd)
        k = torch.randn(2, 131, 2, d, device="cuda", dtype=torch.bfloat16, requires_grad=with_bwd)
        v = torch.randn(2, 131, 2, d, device="cuda", dtype=torch.bfloat16, requires_grad=with_bwd)
        for causal in (False, True):
            out = flash_attn_func(q, k, v, causal=causal)
            if with_bwd:
                torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        slopes = torch.rand(2, 4, device="cuda")
        for causal, window, mods in ((False, (20, 7), {}), (True, (33, 0), {}), (False, (0, 0), {}),
                                     (True, (-1, -1), {"softcap": 5.0, "alibi_slopes": slopes}),
                                     (False, (9, 9), {"alibi_slopes": slopes[0]})):
            out = flash_attn_func(q, k, v, causal=causal, window_size=window, **mods)
            if with_bwd:
                torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        if with_bwd:  # the deterministic backward (mma.sync kernels, ordered dQ adds), also with a window
            for window in ((-1, -1), (40, 0)):
                out = flash_attn_func(q, k, v, causal=True, window_size=window, deterministic=True)
                torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        cu_q = torch.tensor([0, 45, 45, 120], dtype=torch.int32, device="cuda")
        cu_k = torch.tensor([0, 30, 90, 90], dtype=torch.int32, device="cuda")
        qv = torch.randn(120, 4, d, device="cuda", dtype=torch.float16, requires_grad=with_bwd)
        kv = torch.randn(90, 2, d, device="cuda", dtype=torch.float16, requires_grad=with_bwd)
        vv = torch.randn(90, 2, d, device="cuda", dtype=torch.float16, requires_grad=with_bwd)
        for window in ((-1, -1), (16, 3)):
            out = flash_attn_varlen_func(qv, kv, vv, cu_q, cu_k, 75, 60, causal=True, window_size=window)
            if with_bwd:
                torch.autograd.grad(out, (qv, kv, vv), torch.randn_like(out))
    torch.cuda.synchronize()
    print(f"sanitize_flash: forward{' + backward' if with_bwd else ''} ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
