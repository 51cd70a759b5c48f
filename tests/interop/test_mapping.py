"""The tensor maps and the tensor-parallel split on hand-made tensors whose layout is known."""

from __future__ import annotations

import torch

from bridge.interop.hf.mapping import GatedMLPMap, QKVMap, VocabMap
from bridge.interop.hf.sharding import shard_for_rank


def _rows(label: float, n: int, width: int = 3) -> torch.Tensor:
    return torch.full((n, width), label)


def test_qkv_rows_are_grouped_per_query_group():
    # 4 query heads, 2 groups, head dim 1: megatron wants [q0 q1 k0 v0 | q2 q3 k1 v1]
    q = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    k = torch.tensor([[10.0], [11.0]])
    v = torch.tensor([[20.0], [21.0]])
    qkv = QKVMap("qkv", ("q", "k", "v"), num_heads=4, num_groups=2, head_dim=1)
    fused = qkv.to_megatron([q, k, v])
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    back = qkv.to_hf(fused)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_fused_transposed_qkv_of_gpt2():
    # GPT-2's c_attn is [in, out] with out = [q; k; v]; bias has no transpose
    weight = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)  # hidden 2, 2 heads of dim 2
    qkv = QKVMap("qkv", ("c_attn",), True, num_heads=2, num_groups=2, head_dim=2, fused_hf=True)
    fused = qkv.to_megatron([weight])
    q, k, v = weight.t().split(4)
    expected = torch.cat([q[:2], k[:2], v[:2], q[2:], k[2:], v[2:]])
    assert torch.equal(fused, expected)
    assert torch.equal(qkv.to_hf(fused)[0], weight)


def test_gated_mlp_and_vocab_padding():
    gate, up = _rows(1, 4), _rows(2, 4)
    fc1 = GatedMLPMap("fc1", ("gate", "up"))
    assert torch.equal(fc1.to_megatron([gate, up]), torch.cat([gate, up]))
    assert [t[0, 0].item() for t in fc1.to_hf(torch.cat([gate, up]))] == [1, 2]

    vocab = VocabMap("emb", ("wte",), vocab_size=5, padded_vocab_size=8)
    padded = vocab.to_megatron([_rows(7, 5)])
    assert padded.shape == (8, 3) and padded[5:].abs().sum() == 0
    assert torch.equal(vocab.to_hf(padded)[0], _rows(7, 5))


def test_tensor_parallel_shards_follow_megatron_partitioning():
    column = torch.nn.Parameter(torch.empty(4, 3))
    column.tensor_model_parallel, column.partition_dim, column.partition_stride = True, 0, 1
    full = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    assert torch.equal(shard_for_rank(full, column, 1, 2), full[4:])

    row = torch.nn.Parameter(torch.empty(3, 4))
    row.tensor_model_parallel, row.partition_dim, row.partition_stride = True, 1, 1
    assert torch.equal(shard_for_rank(full.t(), row, 0, 2), full.t()[:, :4])

    gated = torch.nn.Parameter(torch.empty(4, 3))  # [gate; up], each split over the ranks
    gated.tensor_model_parallel, gated.partition_dim, gated.partition_stride = True, 0, 2
    gate_up = torch.cat([_rows(1, 4), _rows(2, 4)])
    gate_up[:, 0] = torch.arange(8.0)
    assert shard_for_rank(gate_up, gated, 1, 2)[:, 0].tolist() == [2, 3, 6, 7]

    replicated = torch.nn.Parameter(torch.empty(3))
    assert shard_for_rank(torch.ones(3), replicated, 1, 2).shape == (3,)


def test_pipeline_stages_map_local_layer_numbers_to_global_ones():
    from bridge.interop.hf.importer import _global_name

    class Layer(torch.nn.Module):
        def __init__(self, number):
            super().__init__()
            self.layer_number = number  # megatron-core's global, 1-based layer number
            self.linear = torch.nn.Linear(1, 1)

    stage = torch.nn.Module()
    stage.decoder = torch.nn.Module()
    stage.decoder.layers = torch.nn.ModuleList([Layer(5), Layer(6)])  # the second stage of 2 × 4 layers
    assert _global_name(stage, "decoder.layers.1.linear.weight") == "decoder.layers.5.linear.weight"
    assert _global_name(stage, "decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"


def test_a_missing_optional_package_is_one_line_naming_the_extra():
    import pytest

    from bridge.interop.hf.errors import HFConversionError, require

    with pytest.raises(HFConversionError, match=r"needs the 'no_such_package_xyz' package, which is not installed: "
                                                r"pip install 'bridge\[hf\]'"):
        require("no_such_package_xyz.sub")
