"""Parameter counts, the device's peak, and peak memory: what tokens/s, TFLOP/s and MFU are measured against.

The model FLOPs of a sample come from each family's spec (``FamilySpec.flops_per_sample``, built on
:func:`bridge.models.family.training_flops`).
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


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
