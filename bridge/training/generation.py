"""Text generation from a megatron-core GPT model: greedy or top-k sampling, one token at a time.

No KV cache: each new token re-runs the (last ``max_context`` tokens of the) sequence. That is plenty for
the tiny models this is used with (end-of-run samples, fine-tuning accuracy, ``scripts/generate.py``) and
keeps to the model's ordinary forward, so every attention backend works unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch


def _unwrap_config(model):
    """The megatron-core TransformerConfig's owner, through DDP / Float16Module wrappers."""
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "max_sequence_length"):
        inner = inner.module
    return inner


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, top_k: int = 1,
             temperature: float = 1.0, seed: Optional[int] = None, stop_at_eos: bool = True,
             max_context: Optional[int] = None) -> str:
    """The continuation of ``prompt`` (text only, the prompt excluded).

    ``top_k=1`` is greedy decoding; ``top_k > 1`` samples from the ``top_k`` most likely tokens at
    ``temperature`` (``top_k=0``: from the whole vocabulary). Stops after ``max_new_tokens`` or at eos.
    ``max_context`` defaults to the model's maximum sequence length.
    """
    if max_new_tokens < 0 or top_k < 0 or temperature <= 0:
        raise ValueError(f"generate needs max_new_tokens >= 0, top_k >= 0 and temperature > 0; got "
                         f"{max_new_tokens}, {top_k}, {temperature}")
    core = _unwrap_config(model)
    max_context = max_context or getattr(core, "max_sequence_length", None) or 1024
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(0 if seed is None else seed)
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]
    prompt_len = len(ids)
    was_training = model.training
    model.eval()
    try:
        split = _sequence_split(core)
        max_context -= max_context % split
        for _ in range(max_new_tokens):
            context = ids[-max_context:]
            # sequence parallelism splits the sequence over the tensor-parallel ranks: fill it up to a multiple
            # of their count on the right, where causal attention keeps the filler from the positions before it
            padded = context + [context[-1]] * (-len(context) % split)
            tokens = torch.tensor([padded], dtype=torch.long, device=device)                 # [1, s]
            positions = torch.arange(len(padded), dtype=torch.long, device=device)[None, :]  # [1, s]
            logits = model(tokens, positions, None)[0, len(context) - 1]
            logits = _full_vocab(logits)[: tokenizer.vocab_size].float()                    # [V]
            next_id = _pick(logits, top_k, temperature, generator)
            ids.append(next_id)
            if stop_at_eos and next_id == tokenizer.eos_id:
                break
    finally:
        model.train(was_training)
    return tokenizer.decode(ids[prompt_len:])


def _sequence_split(core) -> int:
    """How many parts the model splits a sequence into: the tensor-parallel size under sequence parallelism."""
    config = getattr(core, "config", None)
    return config.tensor_model_parallel_size if getattr(config, "sequence_parallel", False) else 1


def _full_vocab(logits: torch.Tensor) -> torch.Tensor:
    """The whole vocabulary's logits: with tensor parallelism each rank holds a slice ([V / tp]), so gather them
    (every tensor-parallel rank then picks the same token and keeps the collectives of the next forward in step)."""
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized() or parallel_state.get_tensor_model_parallel_world_size() == 1:
        return logits
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def _pick(logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator) -> int:
    if top_k == 1:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k > 1:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
