"""The in-repo CUDA flash-attention kernel (forward + backward, GQA/MQA, causal, variable length).

Public entry points::

    from bridge.kernels import flash_attn_func, flash_attn_varlen_func, unavailable_reason

Importing this package is cheap and works on CPU-only machines; the extension is compiled on first use
(see :mod:`bridge.kernels.build`). ``unavailable_reason()`` says, without building, why the kernel cannot
run somewhere.
"""

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
    "flash_attn_varlen_func",
    "unavailable_reason",
]
