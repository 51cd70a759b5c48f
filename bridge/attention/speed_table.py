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
    ('sm90', 64, 'none', 0, 'fused', 1.41),  # flash 221.7, fused 312.2 TFLOP/s
    ('sm90', 64, 'none', 1024, 'fused', 1.45),  # flash 266.6, fused 386.4 TFLOP/s
    ('sm90', 64, 'none', 2048, 'fused', 1.38),  # flash 297.4, fused 411.4 TFLOP/s
    ('sm90', 64, 'none', 4096, 'fused', 1.36),  # flash 317.4, fused 432.2 TFLOP/s
    ('sm90', 64, 'none', 8192, 'fused', 1.36),  # flash 326.0, fused 444.5 TFLOP/s
    ('sm90', 64, 'none', 16384, 'fused', 1.37),  # flash 330.3, fused 451.1 TFLOP/s
    ('sm90', 64, 'causal', 0, 'fused', 1.38),  # flash 137.7, fused 190.4 TFLOP/s
    ('sm90', 64, 'causal', 1024, 'fused', 1.4),  # flash 195.7, fused 273.1 TFLOP/s
    ('sm90', 64, 'causal', 2048, 'fused', 1.33),  # flash 251.3, fused 334.1 TFLOP/s
    ('sm90', 64, 'causal', 4096, 'fused', 1.35),  # flash 286.0, fused 385.4 TFLOP/s
    ('sm90', 64, 'causal', 8192, 'fused', 1.32),  # flash 312.3, fused 411.4 TFLOP/s
    ('sm90', 64, 'causal', 16384, 'fused', 1.34),  # flash 322.4, fused 432.0 TFLOP/s
    ('sm90', 128, 'none', 0, 'fused', 1.37),  # flash 279.3, fused 382.1 TFLOP/s
    ('sm90', 128, 'none', 1024, 'fused', 1.34),  # flash 361.0, fused 482.7 TFLOP/s
    ('sm90', 128, 'none', 2048, 'fused', 1.26),  # flash 399.8, fused 504.9 TFLOP/s
    ('sm90', 128, 'none', 4096, 'fused', 1.27),  # flash 417.4, fused 531.1 TFLOP/s
    ('sm90', 128, 'none', 8192, 'fused', 1.27),  # flash 432.6, fused 548.5 TFLOP/s
    ('sm90', 128, 'none', 16384, 'fused', 1.27),  # flash 437.3, fused 554.3 TFLOP/s
    ('sm90', 128, 'causal', 0, 'fused', 1.4),  # flash 172.1, fused 240.8 TFLOP/s
    ('sm90', 128, 'causal', 1024, 'fused', 1.32),  # flash 264.1, fused 348.6 TFLOP/s
    ('sm90', 128, 'causal', 2048, 'fused', 1.34),  # flash 326.9, fused 439.5 TFLOP/s
    ('sm90', 128, 'causal', 4096, 'fused', 1.37),  # flash 371.4, fused 508.0 TFLOP/s
    ('sm90', 128, 'causal', 8192, 'fused', 1.25),  # flash 402.5, fused 501.9 TFLOP/s
    ('sm90', 128, 'causal', 16384, 'fused', 1.23),  # flash 436.7, fused 537.0 TFLOP/s
)
