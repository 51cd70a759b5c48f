"""Will the run fit in this machine's memory? An estimate made before the first step on the CPU.

A CPU run that does not fit is not stopped by an allocator error: the kernel's OOM killer ends the process
minutes later without a message. So before the first step the trainer adds up what one step holds at its
peak and compares it with the memory the process may still use (``MemAvailable``, and the cgroup limit
when a container sets one). The estimate counts:

* gradients and Adam's two moments in fp32: 12 bytes per parameter (the check runs once the model is built,
  so its weights are already allocated and no longer counted as free);
* activations kept for the backward pass of every layer: about ``34 × seq × hidden`` values per sample for the
  projections, MLP and norms, plus the ``heads × seq × seq`` attention probabilities that the local
  (plain PyTorch) attention materialises;
* the logits and their gradient: ``2 × seq × padded vocab`` per sample.

It is a lower bound of the real peak (allocator slack and temporaries come on top), so a run it rejects
would certainly not have fitted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

_BYTES = 4  # fp32 on the CPU
GIB = 2**30


@dataclass
class MemoryEstimate:
    static_bytes: int
    """Gradients and optimizer moments (the weights exist when the check runs)."""
    activation_bytes: int
    """Activations and logits of one micro-batch."""
    attention_bytes: int
    """Part of activation_bytes: the attention probabilities."""

    @property
    def total_bytes(self) -> int:
        return self.static_bytes + self.activation_bytes


def _stacks(model):
    """``(layers, sequence length)`` of each transformer stack (GPT: one; T5: encoder and decoder)."""
    if hasattr(model, "decoder_seq_length"):
        return [(model.encoder_num_layers or model.num_layers, model.seq_length),
                (model.decoder_num_layers or model.num_layers, model.decoder_seq_length or model.seq_length)]
    return [(model.num_layers, model.seq_length)]


def estimate_step_memory(model, micro_batch_size: int, num_params: int) -> MemoryEstimate:
    hidden, heads = model.hidden_size, model.num_attention_heads
    activations = attention = 0
    for layers, seq in _stacks(model):
        per_layer = micro_batch_size * seq * 34 * hidden
        probs = micro_batch_size * heads * seq * seq
        activations += layers * (per_layer + probs) * _BYTES
        attention += layers * probs * _BYTES
    out_seq = _stacks(model)[-1][1]
    activations += 2 * micro_batch_size * out_seq * model.padded_vocab_size * _BYTES
    return MemoryEstimate(static_bytes=12 * num_params, activation_bytes=activations, attention_bytes=attention)


def available_memory_bytes() -> Optional[int]:
    """Memory this process may still allocate: ``MemAvailable``, capped by a cgroup limit; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            room = int(limit) - usage
            available = room if available is None else min(available, room)
        break
    return available


def check_fits_on_cpu(model, micro_batch_size: int, num_params: int, processes_here: int,
                      available: Optional[int] = None) -> MemoryEstimate:
    """One error naming what does not fit when ``processes_here`` CPU processes of this run need more memory
    than the machine has left; returns the estimate."""
    estimate = estimate_step_memory(model, micro_batch_size, num_params)
    available = available_memory_bytes() if available is None else available
    need = estimate.total_bytes * processes_here
    if available is not None and need > available:
        per = f" per process × {processes_here}" if processes_here > 1 else ""
        raise MemoryError(
            f"this run needs at least {need / GIB:.1f} GiB on the CPU but {available / GIB:.1f} GiB is free: "
            f"{estimate.static_bytes / GIB:.1f} GiB of gradients and Adam state and "
            f"{estimate.activation_bytes / GIB:.1f} GiB of activations (of which attention probabilities "
            f"{estimate.attention_bytes / GIB:.1f} GiB) at train.micro_batch_size={micro_batch_size}, "
            f"seq_length={model.seq_length}{per}; lower train.micro_batch_size or model.seq_length, or pick a "
            f"smaller model")
    return estimate
