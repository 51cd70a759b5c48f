"""Benchmark KV-cache decoding: bridge's decode kernel against PyTorch SDPA's backends, and cached generation.

Part 1, attention of one new token per sequence over a cache of L tokens (bf16, 32 query heads), every backend in
this process:
  bridge          bridge.kernels.flash_attn_with_kvcache (split-KV, GQA rows packed per K/V head)
  sdpa_cudnn      torch SDPA, cuDNN backend           } q [b, h, 1, d] over k/v [b, g, L, d] with enable_gqa,
  sdpa_efficient  torch SDPA, memory-efficient backend} or over K/V repeated to h heads where a backend has
  sdpa_flash      torch SDPA, FlashAttention-2 backend} no GQA (its row says "repeated")
Time per call two ways: "graph" (20 calls replayed as one CUDA graph: GPU time) and "eager" (a loop of calls:
what a Python decode loop sees, launch overhead included). KV bandwidth = 2 * b * L * g * d * 2 bytes / time
(the bytes the cache holds, whatever a backend actually reads), next to the device's copy bandwidth
(read + write bytes of a large device-to-device copy per second). Inputs rotate over copies totalling more than
the L2 cache.

Part 2, generation tokens/s of a GPT with random weights (bridge.training.generation.generate_tokens): the
KV cache (prefill + decode kernel) against recomputing the whole prefix every token.

    python scripts/bench_decode.py --out benchmarks/results   # b = 8 grid + generation (H200: about a minute)
    python scripts/bench_decode.py --more-batches            # also b = 1 and 64
    python scripts/bench_decode.py --quick --no-generation   # three shapes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bridge.kernels import flash_attn_with_kvcache, unavailable_reason  # noqa: E402
from bridge.kernels.decode import decode_num_splits  # noqa: E402

H, D = 32, 64
SDPA_BACKENDS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "sdpa_flash": SDPBackend.FLASH_ATTENTION}
L2_BYTES = 120 * 2**20  # rotate inputs over more than the H200's 50 MiB L2 (with margin)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy (median of 10)."""
    src = torch.empty(2**30, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * 2 / statistics.median(times[2:])


def time_graph(fns: list[Callable[[], object]], calls: int = 20) -> Optional[float]:
    """µs per call of the fns (cycled) replayed from one CUDA graph; None when a backend cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for fn in fns:
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fns[i % len(fns)]()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - some SDPA backends refuse capture; the eager time still stands
        return None
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times[1:])


def time_eager(fns: list[Callable[[], object]], calls: int = 60) -> float:
    """µs per call of a Python loop of calls (launch overhead included), median of 5 loops."""
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            fns[i % len(fns)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def sdpa_call(backend: SDPBackend, q, k, v) -> Callable[[], object]:
    """The SDPA call for one backend: with enable_gqa when the backend takes it, else over repeated K/V."""
    def gqa():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    try:
        gqa()
        return gqa
    except RuntimeError:
        pass
    rep = q.shape[1] // k.shape[1]
    k_full, v_full = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

    def repeated():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k_full, v_full)
    repeated()
    repeated.repeated = True
    return repeated


def bench_case(b: int, g: int, cache: int, backends: list[str]) -> dict:
    kv_bytes = 2 * b * cache * g * D * 2
    copies = max(1, min(8, -(-L2_BYTES // kv_bytes)))
    sets = []
    for _ in range(copies):
        kc = torch.randn(b, cache, g, D, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn(b, cache, g, D, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(b, 1, H, D, device="cuda", dtype=torch.bfloat16)
        sets.append((q, kc, vc))
    row = {"b": b, "h": H, "g": g, "d": D, "cache": cache, "kv_bytes": kv_bytes, "backends": {}}
    for name in backends:
        entry: dict = {}
        try:
            if name == "bridge":
                fns = [lambda q=q, kc=kc, vc=vc: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=cache)
                       for q, kc, vc in sets]
                entry["num_splits"] = decode_num_splits(sets[0][0], g, cache)
                entry["max_err_vs_fp32"] = max_error_vs_fp32(*sets[0], cache)
            else:
                fns = []
                for q, kc, vc in sets:
                    fn = sdpa_call(SDPA_BACKENDS[name], q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2))
                    fns.append(fn)
                entry["kv"] = "repeated" if getattr(fns[0], "repeated", False) else "gqa"
            entry["us_graph"] = time_graph(fns)
            entry["us_eager"] = time_eager(fns)
            best = entry["us_graph"] if entry["us_graph"] is not None else entry["us_eager"]
            entry["kv_tb_per_s"] = kv_bytes / (best * 1e-6) / 1e12
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run a shape is reported, not fatal
            entry = {"error": str(exc).splitlines()[0][:200]}
        row["backends"][name] = entry
        torch.cuda.empty_cache()
    del sets
    torch.cuda.empty_cache()
    return row


def max_error_vs_fp32(q, kc, vc, cache: int) -> float:
    """max |bridge - fp32 attention| on one input set (a tuning run must not trade correctness for speed)."""
    out = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=cache).float()
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.transpose(1, 2).float(), kc.transpose(1, 2).float(),
                                             vc.transpose(1, 2).float(), enable_gqa=True).transpose(1, 2)
    return float((out - ref).abs().max())


def add_ratios(row: dict) -> None:
    ours = row["backends"].get("bridge", {})
    for name, entry in row["backends"].items():
        if name == "bridge" or "error" in entry or "error" in ours:
            continue
        for key in ("us_graph", "us_eager"):
            if entry.get(key) and ours.get(key):
                entry[f"speedup_{key[3:]}"] = round(entry[key] / ours[key], 3)


def bench_generation(quick: bool) -> list[dict]:
    """Tokens/s of a GPT with random weights: KV cache vs full recompute, MHA / GQA / MQA of one width."""
    from bridge.models import get_preset
    from bridge.training.generation import generate_tokens

    results = []
    # gpt_126m's shape (12 layers, 768 wide, 12 heads of 64) with 12 / 4 / 1 K/V heads.
    shapes = [("gpt_126m_mha", 12), ("gpt_126m_gqa4", 3), ("gpt_126m_mqa", 1)]
    for name, groups in shapes[:1] if quick else shapes:
        provider = get_preset("gpt_126m", num_query_groups=groups, seq_length=4096, vocab_size=32000,
                              attention_backend="flash", dtype="bf16", attention_dropout=0.0, hidden_dropout=0.0)
        model = provider.provide().cuda().eval()
        for batch, prompt_len, new in ((1, 512, 32), (16, 2048, 32)):
            prompts = torch.randint(0, 32000, (batch, prompt_len)).tolist()
            entry = {"model": name, "query_groups": groups, "batch": batch, "prompt_len": prompt_len,
                     "new_tokens": new}
            for use_cache in (True, False):
                generate_tokens(model, prompts, max_new_tokens=4, use_cache=use_cache)  # warm-up
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = generate_tokens(model, prompts, max_new_tokens=new, use_cache=use_cache, eos_id=None)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                entry["cached_tokens_per_s" if use_cache else "recompute_tokens_per_s"] = round(
                    sum(len(o) for o in out) / seconds, 1)
            if "recompute_tokens_per_s" in entry:
                entry["cache_speedup"] = round(entry["cached_tokens_per_s"] / entry["recompute_tokens_per_s"], 2)
            results.append(entry)
            print(json.dumps(entry), flush=True)
        del model
        torch.cuda.empty_cache()
    return results


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["decode"] if r["b"] == 8]
    groups = sorted({r["g"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True)
    for ax, g in zip(axes, groups):
        sub = sorted((r for r in rows if r["g"] == g), key=lambda r: r["cache"])
        for name in ("bridge", *SDPA_BACKENDS):
            xs = [r["cache"] for r in sub if r["backends"].get(name, {}).get("kv_tb_per_s")]
            ys = [r["backends"][name]["kv_tb_per_s"] for r in sub if r["backends"].get(name, {}).get("kv_tb_per_s")]
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.axhline(report["copy_tb_per_s"], color="gray", linestyle="--", label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_title(f"b=8, h=32, g={g}, d=64")
        ax.set_xlabel("cache length")
    axes[0].set_ylabel("KV TB/s (graph timing)")
    axes[-1].legend()
    fig.suptitle(f"decode attention, {report['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(report: dict) -> None:
    print(f"\ncopy bandwidth {report['copy_tb_per_s']:.2f} TB/s ({report['device']})")
    print(f"{'b':>3} {'g':>3} {'cache':>6} | " + " | ".join(f"{n:>24}" for n in ("bridge", *SDPA_BACKENDS)))
    for r in report["decode"]:
        cells = []
        for name in ("bridge", *SDPA_BACKENDS):
            e = r["backends"].get(name, {})
            if "error" in e or not e:
                cells.append(f"{'-':>24}")
            else:
                us = e["us_graph"] if e["us_graph"] is not None else e["us_eager"]
                cells.append(f"{us:8.1f}us {e['kv_tb_per_s']:5.2f}TB/s e{e['us_eager']:6.0f}")
        print(f"{r['b']:>3} {r['g']:>3} {r['cache']:>6} | " + " | ".join(cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="bench_decode")
    parser.add_argument("--quick", action="store_true", help="a few shapes, one generation case")
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--backends", default="bridge," + ",".join(SDPA_BACKENDS),
                        help="comma-separated subset to time (b = 8 rows); b = 1 / 64 rows time bridge and cuDNN")
    parser.add_argument("--more-batches", action="store_true", help="also b = 1 and 64 (bridge and cuDNN only)")
    args = parser.parse_args(argv)
    reason = unavailable_reason(dtype=torch.bfloat16, head_dim=D)
    if reason is not None:
        print(f"bench_decode: {reason}", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "extra_cflags": os.environ.get("BRIDGE_FLASH_EXTRA_CFLAGS", ""), "copy_tb_per_s": 0.0,
              "decode": [], "generation": []}
    report["copy_tb_per_s"] = copy_bandwidth() / 1e12
    cases = [(8, g, c) for g in (32, 8, 1) for c in (4096, 16384, 65536)]
    if args.quick:
        cases = [(8, g, 16384) for g in (32, 8, 1)]
    if args.more_batches:
        cases += [(b, g, c) for b in (1, 64) for g in (32, 8, 1) for c in (16384, 65536)
                  if 2 * b * c * g * D * 2 <= 16 * 2**30]
    for b, g, cache in cases:
        chosen = args.backends.split(",")
        backends = chosen if b == 8 else [n for n in ("bridge", "sdpa_cudnn") if n in chosen]
        row = bench_case(b, g, cache, backends)
        add_ratios(row)
        report["decode"].append(row)
        print(json.dumps(row), flush=True)
    if not args.no_generation:
        report["generation"] = bench_generation(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(report, indent=1) + "\n")
    try:
        plot(report, args.out / f"{args.tag}.png")
    except ImportError:
        print("bench_decode: matplotlib not installed, no plot written", file=sys.stderr)
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
