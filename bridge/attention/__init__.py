"""Core-attention backends (flash / fused / local) and the selection between them.

``BridgeCoreAttention`` is the megatron-core core-attention module our layer specs plug in;
``select_backend`` decides which backend runs a layer; each backend module exposes
``unsupported_reason(inputs)`` and a function with the shared contract
``(query [sq,b,h,d], key/value [sk,b,g,d], mask, softmax_scale, dropout_p) -> [sq,b,h,d]``.
"""

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.attention.core_attention import BridgeCoreAttention
from bridge.attention.inputs import AttentionInputs, AttentionMask
from bridge.attention.selection import BackendUnavailableError, select_backend

__all__ = [
    "AttnBackend", "AttentionInputs", "AttentionMask", "BackendUnavailableError", "BridgeCoreAttention",
    "parse_attn_backend", "select_backend",
]
