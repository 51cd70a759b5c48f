"""Cached generation (megatron-core's static KV cache + our attention) against recomputing the whole prefix.

A small random GPT with a large init scale has sharp logits, so greedy tokens are a strict check: one wrong
cache row, position or mask changes them. CPU runs the ``local`` backend; the GPU test runs ``flash``, whose
decode steps go through the split-KV decode kernel.
"""

from __future__ import annotations

import pytest
import torch

from bridge.models import get_preset
from bridge.training.generation import generate_tokens, static_kv_cache
from bridge.training.sampling import pick_next

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15, 16, 17, 18, 19, 20, 21]]


def _model(groups: int, backend: str = "local", **overrides):
    torch.manual_seed(0)
    return get_preset("gpt_tiny", seq_length=64, num_layers=2, hidden_size=256, num_attention_heads=4,
                      vocab_size=128, num_query_groups=groups, init_method_std=0.5, attention_backend=backend,
                      **overrides).provide()


@pytest.mark.parametrize("groups", [4, 2, 1])  # 4 heads of 64: MHA, GQA, MQA
def test_cached_greedy_equals_recompute_for_ragged_batches(groups):
    model = _model(groups)
    cached = generate_tokens(model, PROMPTS, 10)
    assert cached == generate_tokens(model, PROMPTS, 10, use_cache=False)
    assert [len(c) for c in cached] == [10, 10, 10]
    # each prompt alone gives the same tokens as inside the ragged batch
    assert [generate_tokens(model, [p], 10)[0] for p in PROMPTS] == cached


def test_eos_stops_each_sequence_and_sampling_is_seeded():
    model = _model(2)
    greedy = generate_tokens(model, PROMPTS, 10)
    eos = greedy[0][2]
    stopped = generate_tokens(model, PROMPTS, 10, eos_id=eos)
    for full, cut in zip(greedy, stopped):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert cut == expected
    assert generate_tokens(model, PROMPTS, 10, eos_id=eos, use_cache=False) == stopped
    runs = [generate_tokens(model, PROMPTS, 8, top_k=0, top_p=0.9, temperature=1.5, seed=s) for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    assert generate_tokens(model, PROMPTS, 8, top_k=0, top_p=0.9, temperature=1.5, seed=1, use_cache=False) == runs[0]


def test_past_the_model_positions_falls_back_to_a_sliding_window():
    model = _model(2)
    out = generate_tokens(model, [list(range(1, 60))], 10)  # 59 + 10 > 64 positions
    assert len(out[0]) == 10


def test_cache_buffers_live_on_the_model_device():
    model = _model(1)
    context = static_kv_cache(model, batch=3, max_len=20)
    assert sorted(context.key_value_memory_dict) == [1, 2]
    k, v = context.key_value_memory_dict[1]
    assert k.shape == (20, 3, 1, 64) and k.device.type == "cpu" and v.shape == k.shape


def test_bad_settings_are_one_line():
    model = _model(1)
    for kwargs, match in (({"top_p": 0.0}, "0 < top_p <= 1"), ({"temperature": 0.0}, "temperature > 0"),
                          ({"top_k": -1}, "top_k >= 0")):
        with pytest.raises(ValueError, match=match):
            generate_tokens(model, PROMPTS, 4, **kwargs)
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        generate_tokens(model, [[1], []], 4)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(pick_next(logits, 0, 0.75, 1.0, [torch.Generator().manual_seed(s)])) for s in range(200)}
    assert seen == {0, 1}  # 0.5 alone is short of 0.75; 0.5 + 0.3 reaches it
    assert int(pick_next(logits, 1, 1.0, 1.0, [torch.Generator()])) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash backend needs a CUDA GPU")
@pytest.mark.parametrize("groups", [4, 1])
def test_flash_cached_greedy_equals_recompute_on_gpu(groups):
    model = _model(groups, backend="flash", dtype="bf16").cuda()
    cached = generate_tokens(model, PROMPTS, 10)
    assert cached == generate_tokens(model, PROMPTS, 10, use_cache=False)
