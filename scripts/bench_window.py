"""Sliding-window throughput of the flash kernel: fwd and fwd+bwd time and useful TFLOP/s at growing lengths.

Useful FLOPs count only the admissible (query, key) pairs of the band (4·d per pair and head forward, 3.5×
that for forward + backward), so a kernel that skips every tile outside the band keeps its TFLOP/s as the
sequence grows and its time grows linearly. Also times the same shapes without a window (causal) at the
shortest length, for scale.

    python scripts/bench_window.py                       # b1 h16 d128, window (1024, 0) causal, s = 8k, 32k
    python scripts/bench_window.py --out benchmarks/results/bench_window.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.kernels import flash_attn_func  # noqa: E402


def band_pairs(s: int, left: int, right: int) -> int:
    rows = torch.arange(s, dtype=torch.int64)
    lo = (rows - left).clamp(min=0) if left >= 0 else torch.zeros_like(rows)
    hi = (rows + right).clamp(max=s - 1) if right >= 0 else torch.full_like(rows, s - 1)
    return int((hi - lo + 1).clamp(min=0).sum())


def time_ms(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(b: int, h: int, d: int, s: int, window: tuple[int, int]) -> dict:
    q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def fwd():
        with torch.no_grad():
            flash_attn_func(q, k, v, causal=True, window_size=window)

    def fwd_bwd():
        out = flash_attn_func(*leaves, causal=True, window_size=window)
        torch.autograd.grad(out, leaves, dout)

    flops = 4.0 * d * b * h * band_pairs(s, window[0], 0)
    t_f, t_fb = time_ms(fwd), time_ms(fwd_bwd)
    return {"b": b, "h": h, "d": d, "s": s, "window": list(window), "fwd_ms": t_f, "fwd_bwd_ms": t_fb,
            "fwd_tflops": flops / t_f / 1e9, "fwd_bwd_tflops": 3.5 * flops / t_fb / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=1024, help="left window (causal, right = 0)")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_window: needs a CUDA GPU", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = [measure(1, 16, 128, s, (args.window, 0)) for s in lengths]
    rows.append(measure(1, 16, 128, lengths[0], (-1, 0)))  # plain causal, for scale
    print(f"{'s':>6} {'window':>10} {'fwd ms':>8} {'fwd TF/s':>9} {'f+b ms':>8} {'f+b TF/s':>9}")
    for r in rows:
        print(f"{r['s']:>6} {str(tuple(r['window'])):>10} {r['fwd_ms']:8.3f} {r['fwd_tflops']:9.1f} "
              f"{r['fwd_bwd_ms']:8.3f} {r['fwd_bwd_tflops']:9.1f}")
    if args.out:
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
