"""Moving models between bridge and other ecosystems (``bridge.interop.hf``: Hugging Face checkpoints)."""
