"""Python layer of the flash-attention kernel: custom ops, their fake (meta) versions, autograd, public API.

Layers, top to bottom:

* ``flash_attn_func`` / ``flash_attn_varlen_func``: the documented entry points (flash-attn 2.x's names and
  argument order, so a positional flash-attn call means the same here). They validate arguments and pick the softmax scale.
* ``bridge_kernels::flash_fwd`` / ``bridge_kernels::flash_bwd``: ``torch.library.custom_op`` wrappers
  around the compiled ``torch.ops.bridge_flash`` operators, with fake implementations so ``torch.compile``
  traces through them without running the kernel, and autograd registered on the forward.
* ``build.load_ops``: compiles the extension the first time a kernel actually runs.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Union

import torch

from bridge.kernels import build

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
SUPPORTED_HEAD_DIMS = build.HEAD_DIMS  # the one table (the binding is compiled with it)
KERNEL_FAMILY_ENV = "BRIDGE_FLASH_IMPL"

Tensor = torch.Tensor


def unavailable_reason(
    device: Optional[Union[torch.device, str, int]] = None,
    dtype: Optional[torch.dtype] = None,
    head_dim: Optional[int] = None,
) -> Optional[str]:
    """Why the flash kernel cannot run for these inputs, as one sentence; ``None`` when it can.

    Cheap: never builds the kernel. ``device`` defaults to the current CUDA device (if any); ``dtype`` and
    ``head_dim`` are checked only when given.
    """
    if device is None:
        if not torch.cuda.is_available():
            return "the flash kernel needs a CUDA GPU, but no CUDA device is available"
        device = torch.cuda.current_device()
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        return f"the flash kernel needs a CUDA GPU, but the device is {device}"
    if not torch.cuda.is_available():
        return "the flash kernel needs a CUDA GPU, but no CUDA device is available"
    reason = _gpu_reason(device.index if device.index is not None else torch.cuda.current_device())
    if reason is not None:
        return reason
    return _input_reason(dtype, head_dim) or build.toolchain_missing_reason()


def _input_reason(dtype: Optional[torch.dtype], head_dim: Optional[int]) -> Optional[str]:
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported by the flash kernel; use torch.bfloat16 or torch.float16"
    if head_dim is not None and head_dim not in SUPPORTED_HEAD_DIMS:
        supported = ", ".join(str(d) for d in SUPPORTED_HEAD_DIMS)
        return f"head dim {head_dim} is not supported by the flash kernel; supported head dims: {supported}"
    return None


@functools.lru_cache(maxsize=None)
def _gpu_reason(index: int) -> Optional[str]:
    """The architecture check of one GPU, the only one: the binding does not repeat it (cached: it is asked on
    every kernel call, through :func:`kernel_family`)."""
    capability = torch.cuda.get_device_capability(index)
    if capability in build.supported_capabilities():
        return None
    name = torch.cuda.get_device_name(index)
    built = ", ".join(f"sm_{major}{minor}" for major, minor in build.supported_capabilities())
    return (
        f"GPU {name} is sm_{capability[0]}{capability[1]}, but the flash kernel supports {built} "
        f"(set BRIDGE_FLASH_ARCHS=90a,80 to build for Ampere/Ada too)"
    )


def kernel_family(device: torch.device) -> str:
    """Which kernels run on ``device``: "sm90" (TMA + wgmma, Hopper only) or "mma" (mma.sync, sm_80+).

    ``BRIDGE_FLASH_IMPL`` (read on every call, so tests and benchmarks can compare both in one process):
    ``auto`` or unset = sm90 on an sm_90 GPU and mma elsewhere; ``sm90``; ``mma``. The compiled op receives
    the choice as its ``kernel_family`` argument (it is asked at run time, inside the custom ops, so
    torch.compile never traces it); the op still runs mma.sync where a Hopper kernel declines a call (the
    deterministic backward, tensors a TMA descriptor cannot describe). Every kernel call passes through here,
    so this is also where a GPU the kernel was not built for is refused.
    """
    requested = os.environ.get(KERNEL_FAMILY_ENV, "auto").strip() or "auto"
    if requested not in ("auto", "sm90", "mma"):
        raise ValueError(f"{KERNEL_FAMILY_ENV}={requested!r} is not valid; use auto, sm90 or mma")
    index = device.index if device.index is not None else torch.cuda.current_device()
    reason = _gpu_reason(index)
    if reason is not None:
        raise RuntimeError(f"bridge flash: {reason}")
    if requested == "mma":
        return "mma"
    return "sm90" if _capability(index) == (9, 0) else "mma"


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


# ---- custom ops ---------------------------------------------------------------------------------------------


@torch.library.custom_op("bridge_kernels::flash_fwd", mutates_args=())
def _flash_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    deterministic: bool,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    # `deterministic` only matters to the backward; it is an argument here so autograd can see it.
    return _run_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                    deterministic, window_left, window_right, softcap, alibi_slopes)


def _run_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
             deterministic=False, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None):
    return build.load_ops().fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                                causal, kernel_family(q.device), window_left, window_right, softcap, alibi_slopes)


def _run_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
             causal, deterministic, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None):
    # dout is aligned here, on real tensors: autograd often hands over expanded (stride 0) gradients, and
    # under AOT tracing the backward wrapper only sees fake tensors.
    dout = _aligned(dout)
    if not build.backward_is_built():
        raise RuntimeError(
            "the flash backward kernel is not built (bridge/kernels/csrc/flash_api_bwd.cpp is missing): "
            "the forward pass works, gradients need the backward kernel"
        )
    return build.load_ops().bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                softmax_scale, causal, deterministic, kernel_family(q.device), window_left,
                                window_right, softcap, alibi_slopes)


@_flash_fwd.register_fake
def _flash_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                    deterministic, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None):
    # Mirrors the binding: out = empty_like(q) (same strides), lse fp32 [b, h, s_q] or [h, total_q].
    out = torch.empty_like(q)
    if cu_seqlens_q is None:
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("bridge_kernels::flash_bwd", mutates_args=())
def _flash_bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    deterministic: bool,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _run_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          softmax_scale, causal, deterministic, window_left, window_right, softcap, alibi_slopes)
    return dq, dk, dv


@_flash_bwd.register_fake
def _flash_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    softmax_scale, causal, deterministic, window_left=-1, window_right=-1, softcap=0.0,
                    alibi_slopes=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    # inputs: q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q ... softcap (plain values), alibi_slopes
    q, k, v, cu_seqlens_q, cu_seqlens_k, *attrs, alibi_slopes = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes)
    ctx.attrs = tuple(attrs)
    ctx.mark_non_differentiable(lse)  # the log-sum-exp is an auxiliary output, not part of the graph


def _backward_with(run_bwd):
    """The autograd backward, for either path: the custom op (traced) or the eager function (direct call)."""

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes = ctx.saved_tensors
        dq, dk, dv = run_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *ctx.attrs, alibi_slopes)
        return (dq, dk, dv) + (None,) * (len(ctx.attrs) + 3)  # nothing for cu_seqlens, attrs, alibi_slopes

    return backward


_flash_fwd.register_autograd(_backward_with(_flash_bwd), setup_context=_setup_context)


class _FlashAttnEager(torch.autograd.Function):
    """Eager-mode twin of the custom op: same context and backward, without the custom-op dispatch in
    Python (which costs ~50 us per call, as much as the whole kernel at small sizes)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                deterministic, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None):
        inputs = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                  deterministic, window_left, window_right, softcap, alibi_slopes)
        out, lse = _run_fwd(*inputs)
        _setup_context(ctx, inputs, (out, lse))
        return out, lse

    backward = staticmethod(_backward_with(_run_bwd))


def _attention(*args) -> tuple[Tensor, Tensor]:
    """Runs the forward through the custom op when torch.compile traces, else through the eager function."""
    if torch.compiler.is_compiling():
        return _flash_fwd(*args)
    return _FlashAttnEager.apply(*args)


# ---- public API ---------------------------------------------------------------------------------------------


def _aligned(t: Tensor) -> Tensor:
    """``t`` itself when the kernel can read it in place (contiguous head dim, 16-byte aligned rows), else a copy.

    Under torch.compile only the strides are checked (Dynamo cannot trace data_ptr / storage_offset); the
    binding still rejects a misaligned pointer with a readable error.
    """
    strides = t.stride()  # one call: this runs three times per attention call
    ok = strides[-1] == 1 and all(st % 8 == 0 or n <= 1 for st, n in zip(strides[:-1], t.shape[:-1]))
    if ok and not torch.compiler.is_compiling():
        ok = t.data_ptr() % 16 == 0
    return t if ok else t.contiguous()


def _check_inputs(fn: str, q: Tensor, k: Tensor, v: Tensor, dims: int, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != dims:
            raise ValueError(f"{fn}: {name} must be {layout} ({dims} dims), got shape {tuple(t.shape)}")
    if q.device.type != "cuda":
        reason = unavailable_reason(q.device)
    else:
        reason = _input_reason(q.dtype, q.shape[-1])
        if reason is None and not torch.compiler.is_compiling():  # driver / file-system checks stay eager
            reason = _gpu_reason(q.device.index) or build.toolchain_missing_reason()
    if reason is not None:
        raise RuntimeError(f"{fn}: {reason}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{fn}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{fn}: q has head dim {q.shape[-1]} but k/v have {k.shape[-1]}")
    h, h_k = q.shape[-2], k.shape[-2]
    if h_k == 0 or h % h_k != 0:
        raise ValueError(f"{fn}: query heads ({h}) must be a multiple of key/value heads ({h_k}) for GQA/MQA")


def check_options(
    fn: str,
    dropout_p: float = 0.0,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    return_attn_probs: bool = False,
) -> tuple[int, int]:
    """Validates flash-attn's optional arguments; returns the window as ``(left, right)`` ints.

    Runs before any tensor check, so it also answers on machines without a GPU. Each unsupported option is
    one error naming it and what works instead.
    """
    if dropout_p != 0.0:
        raise ValueError(f"{fn}: dropout_p={dropout_p} is not supported; the flash kernel has no dropout (use 0.0)")
    if not (isinstance(softcap, (int, float)) and math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"{fn}: softcap={softcap!r} is not valid; use a finite number >= 0 (0.0 = off)")
    if alibi_slopes is not None and (not isinstance(alibi_slopes, Tensor) or alibi_slopes.dtype != torch.float32
                                     or alibi_slopes.dim() not in (1, 2)):
        raise ValueError(
            f"{fn}: alibi_slopes must be a float32 tensor [heads] or [batch, heads], got "
            + (f"{alibi_slopes.dtype} {tuple(alibi_slopes.shape)}" if isinstance(alibi_slopes, Tensor)
               else type(alibi_slopes).__name__)
        )
    if return_attn_probs:
        raise ValueError(
            f"{fn}: return_attn_probs=True is not supported (the kernel never materialises the probabilities); "
            "return_lse=True returns the log-sum-exp"
        )
    try:
        left, right = (int(x) for x in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: window_size must be a pair (left, right) of ints, got {window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(
            f"{fn}: window_size={tuple(window_size)} is not valid; each side is a number of keys >= 0, or -1 for unbounded"
        )
    return left, right


def _check_alibi(fn: str, alibi_slopes: Optional[Tensor], q: Tensor, batch: int) -> None:
    """alibi_slopes against the call's heads and batch (check_options has checked dtype and rank)."""
    if alibi_slopes is None:
        return
    h = q.shape[-2]
    if tuple(alibi_slopes.shape) not in ((h,), (batch, h)):
        raise ValueError(
            f"{fn}: alibi_slopes must have shape ({h},) or ({batch}, {h}) (heads, or batch x heads), "
            f"got {tuple(alibi_slopes.shape)}"
        )
    if alibi_slopes.device != q.device:
        raise ValueError(f"{fn}: alibi_slopes is on {alibi_slopes.device} but q is on {q.device}")


def _slopes(alibi_slopes: Optional[Tensor]) -> Optional[Tensor]:
    return None if alibi_slopes is None else alibi_slopes.detach().contiguous()


def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    return_lse: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Exact attention ``softmax(scale * q k^T [+ mask]) v`` with the in-repo flash kernel.

    The arguments are flash-attn 2.x's, in its order, so a positional flash-attn call means the same here.

    Args:
        q: ``[batch, seqlen_q, heads, head_dim]``, bf16 or fp16, on a supported CUDA GPU. Any batch /
            sequence / head strides work as long as the head dim is contiguous (megatron's ``[s, b, h, d]``
            passes as ``x.transpose(0, 1)`` without a copy).
        k, v: ``[batch, seqlen_k, kv_heads, head_dim]``; ``heads`` must be a multiple of ``kv_heads``
            (GQA; ``kv_heads == 1`` is MQA). K/V are never repeated in memory.
        dropout_p: must be 0.0 (the kernel has no dropout yet).
        softmax_scale: defaults to ``1 / sqrt(head_dim)``.
        causal: mask aligned to the bottom-right corner when ``seqlen_q != seqlen_k`` (query row ``i`` sees
            keys ``j <= i + seqlen_k - seqlen_q``), as flash-attn >= 2.1. Rows that see no key output zeros.
        window_size: ``(left, right)``: query row ``i`` sees keys ``j`` with
            ``i + s_k - s_q - left <= j <= i + s_k - s_q + right`` (bottom-right aligned like ``causal``; ``-1``
            = unbounded, the default ``(-1, -1)`` is full attention). With ``causal=True`` the right side is 0.
            Key tiles outside the window are skipped, so the cost grows linearly with the sequence length.
        softcap: when > 0, the scaled logits ``x`` become ``softcap * tanh(x / softcap)`` before the mask
            and the softmax (Gemma 2's logit soft-capping); gradients flow through the tanh.
        alibi_slopes: fp32 ``[heads]`` or ``[batch, heads]``: adds ``-slope * |i + s_k - s_q - j|`` to the
            (soft-capped) scaled logits of query row ``i`` and key ``j`` (ALiBi, bottom-right aligned); not
            differentiable. The log-sum-exp includes the bias.
        deterministic: make the backward pass bit-reproducible (slightly slower).
        return_attn_probs: must be False (the probabilities are never materialised).
        return_lse: (keyword only, not in flash-attn) also return the log-sum-exp ``[batch, heads, seqlen_q]``
            (fp32, not differentiable).

    Returns:
        ``out`` ``[batch, seqlen_q, heads, head_dim]`` (strides like ``q``), or ``(out, lse)``.
    """
    left, right = check_options("flash_attn_func", dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    _check_inputs("flash_attn_func", q, k, v, 4, "[batch, seqlen, heads, head_dim]")
    _check_alibi("flash_attn_func", alibi_slopes, q, q.shape[0])
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"flash_attn_func: q has batch {q.shape[0]} but k/v have batch {k.shape[0]}")
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    out, lse = _attention(
        _aligned(q), _aligned(k), _aligned(v), None, None, q.shape[1], k.shape[1], scale, bool(causal),
        bool(deterministic), left, right, float(softcap), _slopes(alibi_slopes),
    )
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    return_lse: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Flash attention over a packed batch of variable-length sequences (padding-free).

    Args:
        q: ``[total_q, heads, head_dim]``: the batch's query tokens concatenated; sequence ``i`` is rows
            ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]``.
        k, v: ``[total_k, kv_heads, head_dim]``, split by ``cu_seqlens_k`` the same way.
        cu_seqlens_q, cu_seqlens_k: int32 ``[batch + 1]`` cumulative lengths on q's device, starting at 0.
            Zero-length sequences are allowed (a query row with no key outputs zeros).
        max_seqlen_q, max_seqlen_k: the longest sequence in each (upper bounds; they size the launch grid,
            so rows past ``max_seqlen_q`` would not be computed).
        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
            return_lse: as in :func:`flash_attn_func`; causal and the window are bottom-right aligned per sequence.

    Returns:
        ``out`` ``[total_q, heads, head_dim]``, or ``(out, lse)`` with lse fp32 ``[heads, total_q]``.
    """
    left, right = check_options(
        "flash_attn_varlen_func", dropout_p, window_size, softcap, alibi_slopes, return_attn_probs
    )
    _check_inputs("flash_attn_varlen_func", q, k, v, 3, "[total_tokens, heads, head_dim]")
    _check_alibi("flash_attn_varlen_func", alibi_slopes, q, cu_seqlens_q.numel() - 1)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32 or cu.dim() != 1 or cu.device != q.device:
            raise ValueError(
                f"flash_attn_varlen_func: {name} must be a 1-D int32 tensor on {q.device}, "
                f"got {cu.dtype} {tuple(cu.shape)} on {cu.device}"
            )
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"flash_attn_varlen_func: cu_seqlens_q has {cu_seqlens_q.numel()} entries but cu_seqlens_k has "
            f"{cu_seqlens_k.numel()}; both are batch + 1"
        )
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    out, lse = _attention(
        _aligned(q), _aligned(k), _aligned(v), cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
        int(max_seqlen_q), int(max_seqlen_k), scale, bool(causal), bool(deterministic), left, right,
        float(softcap), _slopes(alibi_slopes),
    )
    return (out, lse) if return_lse else out

