"""Time the flash backward kernel alone against PyTorch SDPA's FlashAttention-2 backward (bf16, GPU).

    python3 scripts/bench_flash_bwd.py                       # every configuration, a table of ms and TFLOP/s
    python3 scripts/bench_flash_bwd.py --one 8,32,32,64,2048,0   # one call of b,h,h_kv,d,s,causal after a
                                                             # warm-up (for ncu: profile the last launch)

Both backwards get the same inputs: ours is fed SDPA-flash's own forward output and log-sum-exp.
Backward FLOPs = 2.5 x the forward's 4 * b * h * s^2 * d (halved when causal). BRIDGE_FLASH_IMPL picks
the kernel family as everywhere else.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.kernels.build import load_ops  # noqa: E402
from bridge.kernels.interface import kernel_family  # noqa: E402

CONFIGS = [  # (b, h, h_kv, d, s, causal): the configurations of scripts/bench_attention.py
    (2, 16, 16, 64, 512, False), (2, 16, 16, 128, 2048, True), (2, 32, 4, 128, 8192, True),
    (8, 32, 32, 64, 2048, False), (8, 32, 32, 64, 2048, True), (1, 32, 32, 64, 16384, True),
    (8, 16, 16, 128, 2048, False), (2, 16, 16, 128, 8192, True), (1, 16, 16, 128, 16384, False),
]


def median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bench() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ops = load_ops()
    print(f"{'config':38s} {'ours ms':>8s} {'FA2 ms':>8s} {'ours TF':>8s} {'FA2 TF':>8s} {'ratio':>6s}")
    for b, h, h_kv, d, s, causal in CONFIGS:
        q, k, v, dout = (torch.randn(b, s, n, d, device="cuda", dtype=torch.bfloat16) for n in (h, h_kv, h_kv, h))
        scale = 1.0 / math.sqrt(d)
        # FA2 through SDPA ([b, h, s, d] views; K/V repeated for GQA since FA2 in SDPA has no native GQA)
        qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in
                      (q, k.repeat_interleave(h // h_kv, 2), v.repeat_interleave(h // h_kv, 2)))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out_t = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
        dout_t = dout.transpose(1, 2)
        fa2_ms = median_ms(lambda: torch.autograd.grad(out_t, (qt, kt, vt), dout_t, retain_graph=True))
        # ours, fed with SDPA-flash's own forward output and lse (natural log, [b, h, s])
        res = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, causal, False, scale=scale)
        out, lse = res[0].transpose(1, 2), res[1][:, :, :s].contiguous()
        family = kernel_family(q.device)
        ours_ms = median_ms(lambda: ops.bwd(dout, q, k, v, out, lse, None, None, s, s, scale, causal, False, family))
        flops = 2.5 * 4 * b * h * s * s * d / (2 if causal else 1)
        name = f"b{b} h{h}/{h_kv} d{d} s{s} {'causal' if causal else 'full'}"
        print(f"{name:38s} {ours_ms:8.3f} {fa2_ms:8.3f} {flops / ours_ms / 1e9:8.1f} {flops / fa2_ms / 1e9:8.1f} "
              f"{fa2_ms / ours_ms:6.2f}", flush=True)


def one_call(spec: str) -> None:
    b, h, h_kv, d, s, causal = (int(x) for x in spec.split(","))
    q, k, v, dout = (torch.randn(b, s, n, d, device="cuda", dtype=torch.bfloat16) for n in (h, h_kv, h_kv, h))
    scale = 1.0 / math.sqrt(d)
    out, lse = torch.randn_like(q), torch.randn(b, h, s, device="cuda")
    for _ in range(2):
        load_ops().bwd(dout, q, k, v, out, lse, None, None, s, s, scale, bool(causal), False, kernel_family(q.device))
    torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", metavar="B,H,H_KV,D,S,CAUSAL", help="one configuration, two calls, no timing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_flash_bwd: needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.one:
        one_call(args.one)
    else:
        bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
