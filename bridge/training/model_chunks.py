"""This rank's model as one module when it holds several pieces: virtual pipeline stages.

With ``virtual_pipeline_model_parallel_size`` each pipeline rank holds one model chunk per virtual stage
(``provide(vp_stage=i)``; with PP=2 × VP=2 rank 0 holds layers of stages 0 and 2, rank 1 of stages 1 and 3).
Checkpoints, parameter counts and the attention-backend report handle this rank's model as one module;
:class:`ModelChunks` is that module. Its sharded state dict nests each chunk's under ``chunk<i>``: the tensors
in it carry megatron-core's global keys (layer numbers offset by pipeline rank and virtual stage), so a
checkpoint saved with virtual stages loads into any other layout and the other way round; only the nesting,
which distributed checkpointing does not store for tensors, differs.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch


class ModelChunks(torch.nn.Module):
    """Several megatron-core model chunks of one rank, checkpointed together."""

    def __init__(self, chunks: List[torch.nn.Module]) -> None:
        super().__init__()
        if len(chunks) < 2:
            raise ValueError(f"ModelChunks holds the chunks of virtual pipeline stages (2 or more), got {len(chunks)}")
        self.chunks = torch.nn.ModuleList(chunks)

    @property
    def config(self):
        """The chunks' shared megatron-core TransformerConfig."""
        return self.chunks[0].config

    def forward(self, *args, **kwargs):
        raise RuntimeError("a model split into virtual pipeline stages runs through megatron-core's interleaved "
                           "schedule (bridge.training.pipeline), not as one module")

    def sharded_state_dict(self, *args, **kwargs) -> Dict[str, Any]:
        return {f"chunk{i}": chunk.sharded_state_dict(*args, **kwargs) for i, chunk in enumerate(self.chunks)}

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True):
        for i, chunk in enumerate(self.chunks):
            chunk.load_state_dict(state_dict[f"chunk{i}"], strict=strict)


def as_one_module(chunks: List[torch.nn.Module]) -> torch.nn.Module:
    """The chunk itself when there is one, else :class:`ModelChunks` over all of them."""
    return chunks[0] if len(chunks) == 1 else ModelChunks(chunks)
