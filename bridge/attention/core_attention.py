"""The core-attention module that megatron-core layers get from our layer specs.

One instance per attention layer, with its own backend: the backend travels in the layer spec's params,
not in process-wide environment variables, so a T5 encoder and decoder can run different backends.
For ``auto`` the choice depends on the tensors (device, dtype, mask), so it is made on the first forward
call and again whenever those change.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Optional, Tuple

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from bridge.attention import flash, fused, local
from bridge.attention.inputs import AttentionInputs, reduced_mask, windowed
from bridge.attention.selection import LayerBackend, canonical
from bridge.attention.backend import AttnBackend, parse_attn_backend

_RUNNERS = {
    AttnBackend.flash: flash.flash_attention,
    AttnBackend.fused: fused.run,
    AttnBackend.local: local.local_attention,
}


def _dropout_rng_context(query: torch.Tensor):
    """Dropout under megatron's tensor-parallel RNG tracker on GPU (as its own module does); plain on CPU."""
    if query.is_cuda:
        tracker = tensor_parallel.get_cuda_rng_tracker()
        if tracker.get_states():
            return tracker.fork()
    return contextlib.nullcontext()


class BridgeCoreAttention(MegatronModule):
    """megatron-core ``core_attention``: query [sq, b, h, d], key/value [sk, b, g, d] -> [sq, b, h*d].

    ``backend`` and ``exclude`` come from the layer spec (see ``bridge.models.layer_specs``).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        backend: AttnBackend = AttnBackend.auto,
        exclude: Iterable[AttnBackend] = (),
        deterministic: bool = False,
        stack: str = "",
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("bridge's core attention does not support context parallelism (context_parallel_size must be 1)")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.backend = canonical(parse_attn_backend(backend))
        self.exclude: Tuple[AttnBackend, ...] = tuple(canonical(parse_attn_backend(b)) for b in exclude)
        self.deterministic = deterministic
        self.stack = stack
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        if config.apply_query_key_layer_scaling:
            self.softmax_scale /= self.layer_number
        self.choice = LayerBackend(self.backend, self.exclude, self.layer_name)

    @property
    def layer_name(self) -> str:
        where = f"{self.stack} " if self.stack else ""
        return f"{where}layer {self.layer_number} ({self.attention_type} attention)"

    @property
    def last_backend(self) -> Optional[AttnBackend]:
        """The backend the latest forward ran (for logs and tests)."""
        return self.choice.last

    def resolve(self, inputs: AttentionInputs) -> AttnBackend:
        """The backend for these inputs (decided once per signature by the layer's :class:`LayerBackend`)."""
        return self.choice.choose(inputs)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("bridge's core attention takes padding masks, not megatron PackedSeqParams; pass an attention mask instead")
        sq, b, h, d = query.shape
        sk, g = key.shape[0], key.shape[2]
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        mask = reduced_mask(attention_mask, mask_type, b, sq, sk, self.attention_type == "self")
        if self.config.window_size is not None:  # sliding-window attention: a dense band mask
            mask = windowed(mask, tuple(self.config.window_size), b, sq, sk, query.device)
        dropout_p = self.dropout_p if self.training else 0.0
        inputs = AttentionInputs(
            device_type=query.device.type, dtype=query.dtype, head_dim=d, num_heads=h, num_kv_heads=g,
            dropout_p=dropout_p, mask_kind=mask.kind, seqlen_q=sq, seqlen_k=sk,
        )
        backend = self.choice.choose_with_bias() if attention_bias is not None else self.resolve(inputs)
        kwargs = {"deterministic": self.deterministic} if backend == AttnBackend.flash else {}
        if attention_bias is not None:
            kwargs["bias"] = attention_bias
        with _dropout_rng_context(query) if dropout_p > 0 else contextlib.nullcontext():
            out = _RUNNERS[backend](query, key, value, mask, self.softmax_scale, dropout_p, **kwargs)
        return out.reshape(sq, b, h * d)
