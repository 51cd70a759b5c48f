"""bridge: a Megatron-style configuration layer for training GPT and T5 models.

Providers (`bridge.models`) describe a model and build a megatron-core model; `bridge.attention` holds the
core-attention modules of each backend; `bridge.kernels` is this repository's flash-attention kernel;
`bridge.recipes`, `bridge.training` and `bridge.data` assemble and run training.
"""

__version__ = "0.1.0"
