"""Model FLOPs per sample, the device's peak, and MFU.

Training FLOPs per token ≈ 6·N (forward + backward through N parameters) plus the attention score and
value products, 12·L·h·s per token for a full (non-causal-skipping) attention over s keys in each of L
layers of width h — the PaLM appendix formula, which counts what the model needs, not what a kernel
happens to compute. T5: the encoder tokens see ``s_enc`` keys, the decoder tokens ``s_dec`` (self) +
``s_enc`` (cross) keys.
"""

from __future__ import annotations

from typing import Optional

import torch

# Dense (no sparsity) peak TFLOP/s per GPU for bf16/fp16 tensor cores and for tf32, from the vendor data
# sheets. Matched against torch.cuda.get_device_name() in this order (first substring that matches wins).
_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 494.0),        # SXM (the "H100 80GB HBM3" name)
    ("H200", 989.0, 494.0),
    ("H20", 148.0, 74.0),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("A10G", 125.0, 62.5),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("V100", 125.0, 15.7),
)


def peak_tflops(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """The device's dense peak TFLOP/s for ``dtype`` (fp32 counts as tf32); None on CPU or for unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, tf32 in _PEAK_TFLOPS:
        if key in name:
            return half if dtype in (torch.bfloat16, torch.float16) else tf32
    return None


def count_parameters(module: torch.nn.Module, tensor_parallel_size: int = 1, across_pipeline: bool = False) -> int:
    """Parameters of the whole model (this rank's count × the tensor-parallel size, close enough for FLOPs).

    ``across_pipeline``: ``module`` is one pipeline stage; the stages' counts are summed over the pipeline
    group, leaving out the last stage's copy of a tied embedding (megatron marks it ``shared``)."""
    count = sum(p.numel() for p in module.parameters() if not getattr(p, "shared", False))
    if across_pipeline:
        import torch.distributed as dist
        from megatron.core import parallel_state

        total = torch.tensor(count, dtype=torch.int64, device=next(module.parameters()).device)
        dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
        count = int(total)
    return count * tensor_parallel_size


def training_flops_per_sample(provider, family: str, num_params: int) -> float:
    """Forward + backward FLOPs for one sample of the provider's sequence length(s)."""
    attn_width = provider.num_attention_heads * provider.head_dim
    if family == "gpt":
        s = provider.seq_length
        return s * (6.0 * num_params + 12.0 * provider.num_layers * attn_width * s)
    s_enc, s_dec = provider.seq_length, provider.resolved_decoder_seq_length
    enc = s_enc * 12.0 * provider.resolved_encoder_layers * attn_width * s_enc
    dec = s_dec * 12.0 * provider.resolved_decoder_layers * attn_width * (s_dec + s_enc)
    return (s_enc + s_dec) * 6.0 * num_params + enc + dec


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
