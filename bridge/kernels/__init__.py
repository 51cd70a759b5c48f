"""The in-repo CUDA flash-attention kernel (forward + backward, GQA/MQA, causal, variable length) and its
KV-cache decode kernel.

Public entry points::

    from bridge.kernels import flash_attn_func, flash_attn_varlen_func, unavailable_reason
    from bridge.kernels import flash_attn_with_kvcache   # generation: append to a KV cache and attend

Importing this package is cheap and works on CPU-only machines; the extension is compiled on first use
(see :mod:`bridge.kernels.build`). ``unavailable_reason()`` says, without building, why the kernel cannot
run somewhere.
"""

from bridge.kernels.decode import flash_attn_with_kvcache
from bridge.kernels.interface import (
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    flash_attn_func,
    flash_attn_varlen_func,
    unavailable_reason,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "flash_attn_func",
    "flash_attn_with_kvcache",
    "flash_attn_varlen_func",
    "unavailable_reason",
]
