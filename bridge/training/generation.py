"""Text generation from a megatron-core GPT model, with a static KV cache.

The cache is megatron-core's own machinery: a ``StaticInferenceContext`` passed to the model's forward makes
every attention layer write its new keys/values into a per-layer ``[max_len, batch, groups, head_dim]`` buffer
and attend over the filled part. We allocate those buffers ourselves (megatron allocates them on the current
CUDA device, so CPU generation would fail) and leave the rest to megatron. Decoding steps reach our core
attention as one query over a view of the cache: the ``flash`` backend runs the split-KV decode kernel there
(``bridge.attention.flash``), ``local`` the plain PyTorch attention.

Prompts of different lengths share one cache: the shortest prompt is prefilled in one forward, then every step
feeds one token per sequence, the prompt's own token while a sequence is still inside its prompt and the
sampled one after (megatron-core's static text generation does the same). ``use_cache=False`` recomputes the
whole prefix every token (the reference the cached path is tested against, and the fallback when a prompt
plus its continuation exceeds the model's positions).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from bridge.training.sampling import check_sampling, pick_next


def _unwrap_config(model):
    """The megatron-core TransformerConfig's owner, through DDP / Float16Module wrappers."""
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "max_sequence_length"):
        inner = inner.module
    return inner


def static_kv_cache(model, batch: int, max_len: int):
    """A megatron-core ``StaticInferenceContext`` whose per-layer K/V buffers live on the model's device."""
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.transformer.attention import SelfAttention

    context = StaticInferenceContext(batch, max_len)
    for module in model.modules():
        if isinstance(module, SelfAttention):
            weight = module.linear_qkv.weight
            shape = (max_len, batch, module.num_query_groups_per_partition, module.hidden_size_per_attention_head)
            context.key_value_memory_dict[module.layer_number] = (
                torch.empty(shape, dtype=weight.dtype, device=weight.device),
                torch.empty(shape, dtype=weight.dtype, device=weight.device),
            )
    return context


@torch.no_grad()
def generate_tokens(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, *, top_k: int = 1,
                    top_p: float = 1.0, temperature: float = 1.0, eos_id: Optional[int] = None,
                    seed: Optional[int] = None, use_cache: bool = True, vocab_size: Optional[int] = None,
                    max_context: Optional[int] = None) -> list[list[int]]:
    """Continuations of a batch of token-id prompts (each at most ``max_new_tokens`` ids, ending at eos).

    ``top_k=1`` is greedy; otherwise tokens are sampled (see :func:`bridge.training.sampling.pick_next`), prompt
    i with a generator seeded by ``seed + i``. ``vocab_size`` limits the choice to the tokenizer's ids (the model's vocabulary
    may be padded). ``max_context`` defaults to the model's maximum sequence length; with the cache every prompt
    plus its continuation must fit in it.
    """
    check_sampling(top_k, top_p, temperature)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate_tokens needs at least one prompt and every prompt needs at least one token")
    core = _unwrap_config(model)
    max_context = max_context or getattr(core, "max_sequence_length", None) or 1024
    device = next(model.parameters()).device
    generators = [torch.Generator(device=device) for _ in prompts]
    for i, generator in enumerate(generators):
        generator.manual_seed((0 if seed is None else seed) + i)
    sample = _Sampler(top_k, top_p, temperature, generators, vocab_size)
    was_training = model.training
    model.eval()
    try:
        if max_new_tokens == 0:
            return [[] for _ in prompts]
        split = _sequence_split(core)
        if split > 1:  # sequence parallel: no one-token decode steps; every forward's length must split
            return _generate_recompute(model, prompts, max_new_tokens, eos_id, sample, device,
                                       max_context - max_context % split, split)
        if use_cache and max(len(p) for p in prompts) + max_new_tokens <= max_context:
            return _generate_cached(model, prompts, max_new_tokens, eos_id, sample, device)
        return _generate_recompute(model, prompts, max_new_tokens, eos_id, sample, device, max_context)
    finally:
        model.train(was_training)


class _Sampler:
    def __init__(self, top_k, top_p, temperature, generators, vocab_size):
        self.args = (top_k, top_p, temperature)
        self.generators = generators
        self.vocab_size = vocab_size

    def __call__(self, logits: torch.Tensor, rows: Sequence[int], gathered: bool = False) -> torch.Tensor:
        """logits [len(rows), vocab / tp] of prompts ``rows`` (the whole vocabulary when ``gathered``) -> ids,
        identical on every tensor-parallel rank."""
        if not gathered:
            logits = _full_vocab(logits)
        if self.vocab_size is not None:
            logits = logits[:, : self.vocab_size]
        return pick_next(logits, *self.args, [self.generators[i] for i in rows])


def _generate_cached(model, prompts, max_new_tokens, eos_id, sample, device) -> list[list[int]]:
    lengths = [len(p) for p in prompts]
    batch, total = len(prompts), max(lengths) + max_new_tokens
    tokens = torch.zeros(batch, total, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    in_prompt = torch.arange(total, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    stop = torch.tensor([n + max_new_tokens for n in lengths], device=device)  # first position not generated
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    context = static_kv_cache(model, batch, total)
    start = min(lengths)
    positions = torch.arange(total, dtype=torch.long, device=device)[None, :].expand(batch, total)
    # megatron-core's inference forward gathers the tensor-parallel logits itself (and insists on it).
    logits = model(tokens[:, :start], positions[:, :start], None, inference_context=context,
                   runtime_gather_output=True)[:, -1]
    context.sequence_len_offset = start
    context.enable_decode_mode()
    for pos in range(start, total):
        # Sequences past their prompt and still running draw a token; the others keep theirs (or padding).
        generating = ~in_prompt[:, pos] & ~done & (pos < stop)
        rows = generating.nonzero().flatten()
        if rows.numel():
            tokens[rows, pos] = sample(logits[rows], rows.tolist(), gathered=True)
        if eos_id is not None:
            done |= generating & (tokens[:, pos] == eos_id)
        done |= pos + 1 >= stop
        if bool(done.all()) or pos + 1 == total:
            break
        logits = model(tokens[:, pos:pos + 1], positions[:, pos:pos + 1], None, inference_context=context,
                       runtime_gather_output=True)[:, -1]
        context.sequence_len_offset = pos + 1
    return [_continuation(tokens[i], lengths[i], max_new_tokens, eos_id) for i in range(batch)]


def _generate_recompute(model, prompts, max_new_tokens, eos_id, sample, device, max_context,
                        split: int = 1) -> list[list[int]]:
    sequences = [list(p) for p in prompts]
    lengths = [len(p) for p in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        windows = [sequences[i][-max_context:] for i in active]
        width = max(len(w) for w in windows)
        width += -width % split  # sequence parallelism splits the length over the tensor-parallel ranks
        tokens = torch.zeros(len(active), width, dtype=torch.long, device=device)
        for row, w in enumerate(windows):  # right padding: causal attention keeps it out of the real tokens
            tokens[row, : len(w)] = torch.tensor(w, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long, device=device)[None, :].expand(len(active), width)
        logits = model(tokens, positions, None)
        last = torch.tensor([len(w) - 1 for w in windows], device=device)
        chosen = sample(logits[torch.arange(len(active), device=device), last], active).tolist()
        for i, token in zip(active, chosen):
            sequences[i].append(int(token))
        active = [i for i in active if not (eos_id is not None and sequences[i][-1] == eos_id)]
        if not active:
            break
    return [s[n:] for s, n in zip(sequences, lengths)]


def _continuation(row: torch.Tensor, prompt_len: int, max_new_tokens: int, eos_id: Optional[int]) -> list[int]:
    out = row[prompt_len: prompt_len + max_new_tokens].tolist()
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from bos (or eos when the tokenizer has no bos)."""
    return tokenizer.encode(prompt) or [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, top_k: int = 1,
             temperature: float = 1.0, seed: Optional[int] = None, stop_at_eos: bool = True,
             max_context: Optional[int] = None, top_p: float = 1.0, use_cache: bool = True) -> str:
    """The continuation of ``prompt`` (text only, the prompt excluded).

    ``top_k=1`` is greedy decoding; ``top_k > 1`` samples from the ``top_k`` most likely tokens at
    ``temperature`` (``top_k=0``: from the whole vocabulary), ``top_p < 1`` from the nucleus. Stops after
    ``max_new_tokens`` or at eos. ``max_context`` defaults to the model's maximum sequence length.
    """
    out = generate_tokens(model, [prompt_ids(tokenizer, prompt)], max_new_tokens, top_k=top_k, top_p=top_p, temperature=temperature,
                          eos_id=tokenizer.eos_id if stop_at_eos else None, seed=seed, use_cache=use_cache,
                          vocab_size=tokenizer.vocab_size, max_context=max_context)
    return tokenizer.decode(out[0])


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
