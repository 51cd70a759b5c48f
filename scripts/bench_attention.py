"""Benchmark the in-repo flash kernel against PyTorch SDPA's backends on a fixed set of attention shapes.

Backends, all timed in one process so the ratios are what counts:
  bridge          this repository's kernel (bridge.kernels.flash_attn_func), [b, s, h, d]
  sdpa_flash      torch SDPA, FlashAttention-2 backend, [b, h, s, d]
  sdpa_cudnn      torch SDPA, cuDNN backend
  sdpa_efficient  torch SDPA, memory-efficient backend
  local           plain PyTorch attention (materialises S x S; only at small sizes)

TFLOP/s: fwd = 4 * b * h * s_q * s_k * d (halved when causal); fwd+bwd = 3.5 x fwd. Timing: CUDA events
around each call, median of many, after a warm-up, rotating among input sets larger than L2 together.
Peak memory of fwd+bwd at s = 4k, 16k, 64k shows linear growth. Writes JSON and a PNG to --out.

    python scripts/bench_attention.py                    # all configs, fwd and fwd+bwd, memory sweep
    python scripts/bench_attention.py --quick --no-bwd   # fast forward-only check
    python scripts/bench_attention.py --speed-table      # also measure auto's flash-vs-fused rule and write
                                                         # bridge/attention/speed_table.py
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bridge.kernels import flash_attn_func, unavailable_reason  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One attention shape; s_q = s_k = s."""

    name: str
    b: int
    h: int
    h_kv: int
    d: int
    s: int
    causal: bool

    def fwd_flops(self) -> float:
        flops = 4.0 * self.b * self.h * self.s * self.s * self.d
        return flops / 2 if self.causal else flops


CONFIGS = [
    Config("test_0", 2, 16, 16, 64, 512, False),
    Config("test_1", 2, 16, 16, 128, 2048, True),
    Config("test_3_gqa", 2, 32, 4, 128, 8192, True),
    Config("b8_h32_d64_s2k", 8, 32, 32, 64, 2048, False),
    Config("b8_h32_d64_s2k_causal", 8, 32, 32, 64, 2048, True),
    Config("b1_h32_d64_s16k_causal", 1, 32, 32, 64, 16384, True),
    Config("b8_h16_d128_s2k", 8, 16, 16, 128, 2048, False),
    Config("b2_h16_d128_s8k_causal", 2, 16, 16, 128, 8192, True),
    Config("b1_h16_d128_s16k", 1, 16, 16, 128, 16384, False),
]

BACKENDS = ("bridge", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "local")
_SDPA_BACKENDS = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                  "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
LOCAL_MAX_SCORE_BYTES = 2 << 30  # the local reference materialises b*h*s*s fp32 scores


# ---- attention callables, each on inputs in its own preferred layout -------------------------------------


def _local_attention(q, k, v, causal):
    """Plain PyTorch attention on [b, h, s, d] (the `local` backend's math)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if causal:
        s_q, s_k = scores.shape[-2:]
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(s_k - s_q)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(q.dtype) @ v


def make_attention(backend: str, cfg: Config) -> Optional[Callable]:
    """Returns fn(q, k, v) -> out for the backend, or None when it does not apply to this config."""
    if backend == "bridge":
        return lambda q, k, v: flash_attn_func(q, k, v, causal=cfg.causal)
    if backend == "local":
        if cfg.b * cfg.h * cfg.s * cfg.s * 4 > LOCAL_MAX_SCORE_BYTES:
            return None
        return lambda q, k, v: _local_attention(q, k, v, cfg.causal)
    sdpa_backend = _SDPA_BACKENDS[backend]
    gqa = cfg.h != cfg.h_kv

    def run(q, k, v):
        with sdpa_kernel([sdpa_backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal, enable_gqa=gqa)

    return run


def make_inputs(backend: str, cfg: Config, dtype, requires_grad: bool):
    """q, k, v (+ dout) in the backend's layout: [b, s, h, d] for bridge, [b, h, s, d] for SDPA/local."""
    bshd = backend == "bridge"

    def t(heads):
        shape = (cfg.b, cfg.s, heads, cfg.d) if bshd else (cfg.b, heads, cfg.s, cfg.d)
        return torch.randn(shape, device="cuda", dtype=dtype).requires_grad_(requires_grad)

    return t(cfg.h), t(cfg.h_kv), t(cfg.h_kv), t(cfg.h).detach()


# ---- timing -----------------------------------------------------------------------------------------------


def time_ms(step: Callable[[int], None], n_sets: int, warmup: int, iters: int) -> float:
    """Median time of step(i) in ms with CUDA events, cycling i over the input sets."""
    for i in range(warmup):
        step(i % n_sets)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (start, end) in enumerate(events):
        start.record()
        step(i % n_sets)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def l2_rotation_sets(cfg: Config, dtype) -> int:
    """Enough input sets that one pass over them exceeds twice the L2 cache."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    per_set = (2 * cfg.h + 2 * cfg.h_kv) * cfg.b * cfg.s * cfg.d * torch.finfo(dtype).bits // 8
    return max(1, min(8, math.ceil(2 * l2 / per_set)))


def bench_one(backend: str, cfg: Config, dtype, with_bwd: bool, warmup: int, iters: int) -> dict:
    fn = make_attention(backend, cfg)
    row = {"config": cfg.name, "backend": backend}
    if fn is None:
        return {**row, "skipped": "too large for the S x S reference"}
    n_sets = l2_rotation_sets(cfg, dtype)
    sets = [make_inputs(backend, cfg, dtype, requires_grad=with_bwd) for _ in range(n_sets)]
    try:
        with torch.no_grad():
            fwd_ms = time_ms(lambda i: fn(*sets[i][:3]), n_sets, warmup, iters)
        row.update(fwd_ms=fwd_ms, fwd_tflops=cfg.fwd_flops() / fwd_ms / 1e9)
        if with_bwd:
            def fwd_bwd(i):
                q, k, v, dout = sets[i]
                torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

            fb_ms = time_ms(fwd_bwd, n_sets, warmup, iters)
            row.update(fwdbwd_ms=fb_ms, fwdbwd_tflops=3.5 * cfg.fwd_flops() / fb_ms / 1e9)
    except RuntimeError as err:  # a backend that does not support this config (or a missing backward)
        row["error"] = str(err).splitlines()[0][:200]
    del sets
    torch.cuda.empty_cache()
    return row


def check_agreement(cfg: Config, dtype) -> float:
    """max |bridge - sdpa_flash| on one input, so the timings are of a kernel that computes the right thing."""
    q, k, v, _ = make_inputs("sdpa_flash", cfg, dtype, requires_grad=False)
    ref = make_attention("sdpa_flash", cfg)(q, k, v)
    out = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=cfg.causal).transpose(1, 2)
    return (out.float() - ref.float()).abs().max().item()


# ---- auto's speed rule ----------------------------------------------------------------------------------

SPEED_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
SPEED_TOKENS = 16384  # b * s of every sweep shape, so each one fills the GPU
SPEED_HEADS = {64: 32, 128: 16}  # heads per head dim (hidden size 2048)
SPEED_TABLE_PATH = REPO_ROOT / "bridge" / "attention" / "speed_table.py"
SPEED_BACKENDS = {"flash": "bridge", "fused": "sdpa_cudnn"}  # attention backend -> what runs it here


def speed_configs() -> list[Config]:
    """The shapes behind auto's rule: head dim x mask x length, SPEED_TOKENS tokens each."""
    return [Config(f"rule_d{d}_{'causal' if causal else 'none'}_s{s}", max(1, SPEED_TOKENS // s), h, h, d, s, causal)
            for d, h in SPEED_HEADS.items() for causal in (False, True) for s in SPEED_LENGTHS]


def speed_rows(results: list[dict], arch: str) -> list[dict]:
    """One rule row per sweep shape: the faster of flash and fused by fwd+bwd TFLOP/s, and by how much."""
    by_key = {(r["config"], r["backend"]): r for r in results}
    rows = []
    for cfg in speed_configs():
        tflops = {name: by_key.get((cfg.name, runner), {}).get("fwdbwd_tflops") for name, runner in SPEED_BACKENDS.items()}
        if None in tflops.values():
            continue  # a backend failed on this shape: no rule row
        faster = max(tflops, key=tflops.get)
        slower = min(tflops, key=tflops.get)
        rows.append({"arch": arch, "head_dim": cfg.d, "mask": "causal" if cfg.causal else "none",
                     "min_len": 0 if cfg.s == SPEED_LENGTHS[0] else cfg.s, "faster": faster,
                     "ratio": round(tflops[faster] / tflops[slower], 2), "config": cfg.name,
                     "flash_tflops": round(tflops["flash"], 1), "fused_tflops": round(tflops["fused"], 1)})
    return rows


def write_speed_table(rows: list[dict], device: str, evidence: str, path: Path = SPEED_TABLE_PATH) -> None:
    """Write the generated module that bridge.attention.measured reads."""
    lines = [
        '"""Measured fwd+bwd speed of the flash and fused attention backends (generated: do not edit by hand).',
        "",
        f"Written by ``python scripts/bench_attention.py --speed-table`` on {device}, {time.strftime('%Y-%m-%d')}:",
        f"bf16, {SPEED_TOKENS} tokens per shape (b = {SPEED_TOKENS} / s), heads {dict(SPEED_HEADS)} per head dim,",
        "flash = this repository's kernel, fused = PyTorch SDPA's cuDNN backend, timed in one process.",
        f"Every timing is in {evidence};",
        "``bridge.attention.measured`` explains how a layer's inputs are matched to a row.",
        '"""',
        "",
        f"SOURCE = {evidence!r}",
        "",
        "# (arch, head dim, mask, min length, faster backend, fwd+bwd TFLOP/s ratio faster / slower)",
        "ROWS = (",
    ]
    for r in rows:
        lines.append(f"    ({r['arch']!r}, {r['head_dim']}, {r['mask']!r}, {r['min_len']}, {r['faster']!r}, {r['ratio']}),"
                     f"  # flash {r['flash_tflops']}, fused {r['fused_tflops']} TFLOP/s")
    lines.append(")")
    path.write_text("\n".join(lines) + "\n")


# ---- memory -----------------------------------------------------------------------------------------------


def peak_memory_mb(backend: str, s: int, dtype, with_bwd: bool) -> Optional[float]:
    """Peak memory above the inputs for one fwd(+bwd) at b=1, h=16, d=128, causal."""
    cfg = Config(f"mem_s{s}", 1, 16, 16, 128, s, True)
    fn = make_attention(backend, cfg)
    if fn is None:
        return None
    q, k, v, dout = make_inputs(backend, cfg, dtype, requires_grad=with_bwd)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        out = fn(q, k, v)
        if with_bwd:
            torch.autograd.grad(out, (q, k, v), dout)
        torch.cuda.synchronize()
    except RuntimeError:
        return None
    peak = torch.cuda.max_memory_allocated() - base
    del q, k, v, dout, out
    torch.cuda.empty_cache()
    return peak / 2**20


# ---- report -----------------------------------------------------------------------------------------------


def add_ratios(rows: list[dict]) -> list[dict]:
    """Per config: bridge TFLOP/s over sdpa_flash and sdpa_cudnn, fwd and fwd+bwd."""
    by_key = {(r["config"], r["backend"]): r for r in rows}
    ratios = []
    for cfg in {r["config"] for r in rows}:
        mine = by_key.get((cfg, "bridge"), {})
        entry = {"config": cfg}
        for other in ("sdpa_flash", "sdpa_cudnn"):
            theirs = by_key.get((cfg, other), {})
            for phase in ("fwd_tflops", "fwdbwd_tflops"):
                if phase in mine and phase in theirs:
                    entry[f"{phase.split('_')[0]}_vs_{other}"] = round(mine[phase] / theirs[phase], 3)
        ratios.append(entry)
    order = [c.name for c in CONFIGS]
    return sorted(ratios, key=lambda e: order.index(e["config"]) if e["config"] in order else 99)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "fwd_tflops" in r]
    configs = [c for c in [c.name for c in CONFIGS] if any(r["config"] == c for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(20, 6))
    for ax, phase in zip(axes[:2], ("fwd_tflops", "fwdbwd_tflops")):
        width = 0.8 / len(BACKENDS)
        for j, backend in enumerate(BACKENDS):
            vals = [next((r.get(phase, 0) for r in rows if r["config"] == c and r["backend"] == backend), 0)
                    for c in configs]
            ax.bar([i + j * width for i in range(len(configs))], vals, width, label=backend)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))])
        ax.set_xticklabels(configs, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("TFLOP/s")
        ax.set_title(phase.replace("_tflops", "").replace("fwdbwd", "fwd+bwd"))
        ax.legend(fontsize=7)
    mem = report.get("memory", [])
    for backend in BACKENDS:
        pts = [(m["s"], m[backend]) for m in mem if m.get(backend) is not None]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=backend)
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("sequence length (b=1, h=16, d=128, causal)")
    axes[2].set_ylabel("peak memory above inputs, fwd+bwd (MiB)")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{report['device']} · {report['dtype']} · torch {report['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="all", help="comma-separated config names, or 'all'")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " +
                        ", ".join(BACKENDS))
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--no-bwd", action="store_true", help="forward only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory sweep")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (rough numbers)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="bench_attention", help="output file stem")
    parser.add_argument("--speed-table", action="store_true",
                        help="measure flash vs fused over head dim x mask x length and write auto's rule to "
                             "bridge/attention/speed_table.py (evidence in <out>/backend_speed.json)")
    args = parser.parse_args(argv)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    reason = unavailable_reason(dtype=dtype)
    if reason is not None:
        print(f"bench_attention: {reason}", file=sys.stderr)
        return 2
    configs = CONFIGS if args.configs == "all" else [c for c in CONFIGS if c.name in args.configs.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown or not configs:
        parser.error(f"unknown backends {sorted(unknown)} or no matching configs; valid: {BACKENDS}, "
                     f"{[c.name for c in CONFIGS]}")
    warmup, iters = (3, 10) if args.quick else (10, 50)

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "dtype": args.dtype, "timestamp": time.time(),
              "flops": "fwd = 4*b*h*s_q*s_k*d (halved when causal); fwd+bwd = 3.5 x fwd",
              "configs": [asdict(c) for c in configs], "results": [], "agreement": {}}
    for cfg in configs:
        report["agreement"][cfg.name] = check_agreement(cfg, dtype)
        for backend in backends:
            row = bench_one(backend, cfg, dtype, not args.no_bwd, warmup, iters)
            report["results"].append(row)
            print(json.dumps(row), flush=True)
    report["ratios"] = add_ratios(report["results"])
    if not args.no_memory:
        report["memory"] = []
        for s in (4096, 16384, 65536):
            entry = {"s": s}
            for backend in backends:
                entry[backend] = peak_memory_mb(backend, s, dtype, not args.no_bwd)
            report["memory"].append(entry)
            print(json.dumps(entry), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(report, indent=1))
    try:
        plot(report, args.out / f"{args.tag}.png")
    except ImportError:
        print("bench_attention: matplotlib not installed, no plot written", file=sys.stderr)
    print_summary(report)
    if args.speed_table:
        measure_speed_table(args.out, dtype, warmup, iters)
    return 0


def measure_speed_table(out: Path, dtype, warmup: int, iters: int) -> None:
    """Run the rule sweep, write its evidence JSON and the generated speed table."""
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm{major}{minor}"
    results = []
    for cfg in speed_configs():
        for runner in SPEED_BACKENDS.values():
            row = bench_one(runner, cfg, dtype, True, warmup, iters)
            results.append(row)
            print(json.dumps(row), flush=True)
    rows = speed_rows(results, arch)
    evidence = out / "backend_speed.json"
    evidence.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "arch": arch, "torch": torch.__version__,
                                    "cudnn": torch.backends.cudnn.version(), "dtype": str(dtype), "timestamp": time.time(),
                                    "configs": [asdict(c) for c in speed_configs()], "results": results,
                                    "rules": rows}, indent=1))
    # The table cites the evidence where it is committed, whichever --out this run wrote to.
    write_speed_table(rows, torch.cuda.get_device_name(0), f"benchmarks/results/{evidence.name}")
    print(f"\nauto's rule ({arch}), fwd+bwd TFLOP/s flash / fused:")
    for r in rows:
        print(f"  d={r['head_dim']:3d} {r['mask']:6s} len>={r['min_len']:5d}: {r['faster']:5s} {r['ratio']:.2f}x "
              f"({r['flash_tflops']:.0f} / {r['fused_tflops']:.0f})")


def print_summary(report: dict) -> None:
    by_key = {(r["config"], r["backend"]): r for r in report["results"]}
    print(f"\n{report['device']}  {report['dtype']}  TFLOP/s fwd / fwd+bwd")
    print(f"{'config':26s} {'bridge':>13s} {'sdpa_flash':>13s} {'sdpa_cudnn':>13s}  vs FA2 (fwd, f+b)  vs cuDNN")
    ratios = {e["config"]: e for e in report["ratios"]}
    for cfg in [c["name"] for c in report["configs"]]:
        cells = []
        for backend in ("bridge", "sdpa_flash", "sdpa_cudnn"):
            r = by_key.get((cfg, backend), {})
            cells.append(f"{r.get('fwd_tflops', float('nan')):5.0f} / {r.get('fwdbwd_tflops', float('nan')):5.0f}")
        e = ratios.get(cfg, {})
        print(f"{cfg:26s} {cells[0]:>13s} {cells[1]:>13s} {cells[2]:>13s}  "
              f"{e.get('fwd_vs_sdpa_flash', float('nan')):.2f}, {e.get('fwdbwd_vs_sdpa_flash', float('nan')):.2f}"
              f"        {e.get('fwd_vs_sdpa_cudnn', float('nan')):.2f}, {e.get('fwdbwd_vs_sdpa_cudnn', float('nan')):.2f}"
              f"   (max|diff| vs FA2 {report['agreement'].get(cfg, float('nan')):.1e})")
    for m in report.get("memory", []):
        print("peak MiB s=%6d  " % m["s"] + "  ".join(
            f"{b}={m[b]:.0f}" if m.get(b) is not None else f"{b}=n/a" for b in BACKENDS if b in m))


if __name__ == "__main__":
    sys.exit(main())
