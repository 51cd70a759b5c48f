"""Measured fwd+bwd speed of the flash and fused attention backends (generated: do not edit by hand).

Written by ``python scripts/bench_attention.py --speed-table`` on NVIDIA H200, 2026-12-02:
bf16, 16384 tokens per shape (b = 16384 / s), heads {64: 32, 128: 16} per head dim,
flash = this repository's kernel, fused = PyTorch SDPA's cuDNN backend, timed in one process.
Every timing is in benchmarks/results/backend_speed.json;
``bridge.attention.measured`` explains how a layer's inputs are matched to a row.
"""

SOURCE = 'benchmarks/results/backend_speed.json'

# (arch, head dim, mask, min length, faster backend, fwd+bwd TFLOP/s ratio faster / slower)
ROWS = (
    ('sm90', 64, 'none', 0, 'fused', 1.24),  # flash 246.6, fused 306.6 TFLOP/s
    ('sm90', 64, 'none', 1024, 'fused', 1.27),  # flash 301.8, fused 384.3 TFLOP/s
    ('sm90', 64, 'none', 2048, 'fused', 1.21),  # flash 345.3, fused 417.8 TFLOP/s
    ('sm90', 64, 'none', 4096, 'fused', 1.19),  # flash 368.6, fused 438.7 TFLOP/s
    ('sm90', 64, 'none', 8192, 'fused', 1.17),  # flash 384.2, fused 450.8 TFLOP/s
    ('sm90', 64, 'none', 16384, 'fused', 1.17),  # flash 390.2, fused 457.2 TFLOP/s
    ('sm90', 64, 'causal', 0, 'fused', 1.26),  # flash 148.6, fused 187.6 TFLOP/s
    ('sm90', 64, 'causal', 1024, 'fused', 1.28),  # flash 211.8, fused 270.9 TFLOP/s
    ('sm90', 64, 'causal', 2048, 'fused', 1.2),  # flash 283.1, fused 339.2 TFLOP/s
    ('sm90', 64, 'causal', 4096, 'fused', 1.21),  # flash 326.7, fused 396.0 TFLOP/s
    ('sm90', 64, 'causal', 8192, 'fused', 1.15),  # flash 361.6, fused 417.4 TFLOP/s
    ('sm90', 64, 'causal', 16384, 'fused', 1.14),  # flash 383.1, fused 437.9 TFLOP/s
    ('sm90', 128, 'none', 0, 'fused', 1.2),  # flash 315.6, fused 380.2 TFLOP/s
    ('sm90', 128, 'none', 1024, 'fused', 1.18),  # flash 408.8, fused 482.5 TFLOP/s
    ('sm90', 128, 'none', 2048, 'fused', 1.09),  # flash 460.5, fused 502.2 TFLOP/s
    ('sm90', 128, 'none', 4096, 'fused', 1.07),  # flash 504.4, fused 537.6 TFLOP/s
    ('sm90', 128, 'none', 8192, 'fused', 1.06),  # flash 526.1, fused 558.6 TFLOP/s
    ('sm90', 128, 'none', 16384, 'fused', 1.06),  # flash 531.3, fused 562.5 TFLOP/s
    ('sm90', 128, 'causal', 0, 'fused', 1.26),  # flash 190.5, fused 240.2 TFLOP/s
    ('sm90', 128, 'causal', 1024, 'fused', 1.19),  # flash 292.6, fused 347.7 TFLOP/s
    ('sm90', 128, 'causal', 2048, 'fused', 1.14),  # flash 383.6, fused 438.0 TFLOP/s
    ('sm90', 128, 'causal', 4096, 'fused', 1.07),  # flash 447.3, fused 479.4 TFLOP/s
    ('sm90', 128, 'causal', 8192, 'fused', 1.05),  # flash 488.4, fused 511.2 TFLOP/s
    ('sm90', 128, 'causal', 16384, 'fused', 1.05),  # flash 517.5, fused 544.3 TFLOP/s
)
