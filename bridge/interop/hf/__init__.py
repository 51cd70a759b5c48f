"""Hugging Face interop: import a ``save_pretrained`` directory (GPT-2, Llama / Mistral / Qwen2, T5) into a
bridge provider + megatron-core model, and export a model or a training checkpoint back to a directory that
``transformers`` loads with ``from_pretrained``.

    from bridge.interop.hf import import_hf, save_hf
    provider, model = import_hf("gpt2_dir", attention_backend="local")
    save_hf(model, provider, "gpt2_copy")

Needs the optional ``hf`` extra (``transformers``, ``safetensors``); without it every entry point raises one
:class:`HFConversionError` saying how to install it. Fine-tuning recipes start from a directory with
``checkpoint.pretrained_checkpoint=hf:<dir>``; ``bridge.training.hf_checkpoints`` converts training checkpoints.
"""

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.exporter import hf_state_dict, save_hf
from bridge.interop.hf.importer import import_hf, load_hf_weights, provider_from_hf

__all__ = ["HFConversionError", "import_hf", "load_hf_weights", "provider_from_hf", "save_hf", "hf_state_dict"]
