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
    ('sm90', 64, 'none', 0, 'fused', 1.36),  # flash 226.6, fused 309.2 TFLOP/s
    ('sm90', 64, 'none', 1024, 'fused', 1.45),  # flash 268.6, fused 389.1 TFLOP/s
    ('sm90', 64, 'none', 2048, 'fused', 1.4),  # flash 297.8, fused 415.8 TFLOP/s
    ('sm90', 64, 'none', 4096, 'fused', 1.4),  # flash 315.2, fused 439.9 TFLOP/s
    ('sm90', 64, 'none', 8192, 'fused', 1.38),  # flash 327.2, fused 452.1 TFLOP/s
    ('sm90', 64, 'none', 16384, 'fused', 1.37),  # flash 334.4, fused 457.0 TFLOP/s
    ('sm90', 64, 'causal', 0, 'fused', 1.4),  # flash 135.0, fused 188.8 TFLOP/s
    ('sm90', 64, 'causal', 1024, 'fused', 1.39),  # flash 195.1, fused 271.8 TFLOP/s
    ('sm90', 64, 'causal', 2048, 'fused', 1.37),  # flash 249.5, fused 342.4 TFLOP/s
    ('sm90', 64, 'causal', 4096, 'fused', 1.38),  # flash 283.0, fused 390.4 TFLOP/s
    ('sm90', 64, 'causal', 8192, 'fused', 1.34),  # flash 308.8, fused 415.1 TFLOP/s
    ('sm90', 64, 'causal', 16384, 'fused', 1.31),  # flash 328.4, fused 429.8 TFLOP/s
    ('sm90', 128, 'none', 0, 'fused', 1.33),  # flash 286.7, fused 381.0 TFLOP/s
    ('sm90', 128, 'none', 1024, 'fused', 1.31),  # flash 371.8, fused 486.2 TFLOP/s
    ('sm90', 128, 'none', 2048, 'fused', 1.21),  # flash 419.7, fused 508.9 TFLOP/s
    ('sm90', 128, 'none', 4096, 'fused', 1.2),  # flash 451.2, fused 541.6 TFLOP/s
    ('sm90', 128, 'none', 8192, 'fused', 1.19),  # flash 471.3, fused 559.1 TFLOP/s
    ('sm90', 128, 'none', 16384, 'fused', 1.18),  # flash 477.6, fused 562.0 TFLOP/s
    ('sm90', 128, 'causal', 0, 'fused', 1.32),  # flash 182.4, fused 240.4 TFLOP/s
    ('sm90', 128, 'causal', 1024, 'fused', 1.29),  # flash 270.7, fused 349.5 TFLOP/s
    ('sm90', 128, 'causal', 2048, 'fused', 1.26),  # flash 351.9, fused 441.7 TFLOP/s
    ('sm90', 128, 'causal', 4096, 'fused', 1.22),  # flash 393.4, fused 480.7 TFLOP/s
    ('sm90', 128, 'causal', 8192, 'fused', 1.18),  # flash 434.7, fused 511.6 TFLOP/s
    ('sm90', 128, 'causal', 16384, 'fused', 1.15),  # flash 470.9, fused 542.5 TFLOP/s
)
