"""RoPE that also runs on a CPU-only machine.

megatron-core 0.16's ``RotaryEmbedding.get_emb`` moves its frequencies to ``torch.cuda.current_device()``
unconditionally, which fails without CUDA. On such machines the builders switch the model's rotary
modules to this subclass, which computes the same table where the frequencies already are.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding


class HostRotaryEmbedding(RotaryEmbedding):
    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)  # (s, dim / 2)
        if self.rotary_interleaved:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)  # (s, dim)
        return emb[:, None, None, :]  # (s, 1, 1, dim)


def make_rope_host_compatible(model: torch.nn.Module) -> None:
    """On a machine without CUDA, let the model's RoPE modules run on the CPU (no-op with a GPU)."""
    if torch.cuda.is_available():
        return
    for module in model.modules():
        if type(module) is RotaryEmbedding:
            module.__class__ = HostRotaryEmbedding
