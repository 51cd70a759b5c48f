"""Put a freshly built megatron-core model on its device and dtype in one piece.

megatron-core creates its linear layers on the GPU in ``params_dtype`` (unless ``use_cpu_initialization``),
but the torch LayerNorm / RMSNorm of its local specs on the CPU in float32. A model straight from
``provide()`` should run as it is, so the builders move the whole model where its linear layers are and
cast it to the provider's dtype (what megatron's ``Float16Module`` does in training).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


def place_model(model: torch.nn.Module, config: TransformerConfig) -> torch.nn.Module:
    if torch.cuda.is_available() and not config.use_cpu_initialization:
        model = model.cuda(torch.cuda.current_device())
    if config.params_dtype != torch.float32:
        model = model.to(dtype=config.params_dtype)
    return model
