"""Virtual pipeline stages in one process: this rank's chunks checkpoint as one module, and the interleaved
schedule's micro-batch rule is one error line before anything is built."""

from __future__ import annotations

import pytest
import torch

from bridge.models import get_preset
from bridge.training.model_chunks import ModelChunks, as_one_module
from bridge.training.pipeline import check_interleaved_plan


def _chunk(seed: int):
    torch.manual_seed(seed)
    return get_preset("gpt_tiny", num_layers=1, seq_length=16, vocab_size=256, attention_backend="local").provide()


def test_chunks_nest_their_state_and_load_it_back():
    first, second = _chunk(1), _chunk(2)
    model = as_one_module([first, second])
    assert isinstance(model, ModelChunks) and model.config is first.config
    state = model.sharded_state_dict()
    assert sorted(state) == ["chunk0", "chunk1"]
    assert state["chunk0"].keys() == first.sharded_state_dict().keys()
    model.load_state_dict({"chunk0": second.state_dict(), "chunk1": first.state_dict()})
    for a, b in zip(first.parameters(), _chunk(2).parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="interleaved schedule"):
        model(None)


def test_one_chunk_is_the_module_itself():
    chunk = _chunk(1)
    assert as_one_module([chunk]) is chunk
    with pytest.raises(ValueError, match="2 or more"):
        ModelChunks([chunk])


def test_interleaved_schedule_needs_whole_groups_of_micro_batches():
    check_interleaved_plan(3, 1, 2, None)  # no virtual stages: any count
    check_interleaved_plan(4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"multiple of pipeline_model_parallel_size=2 micro-batches per step, got 3"):
        check_interleaved_plan(3, 2, 2, 2)
    with pytest.raises(ValueError, match=r"per evaluation, got 1 \(train.eval_steps\)"):
        check_interleaved_plan(2, 1, 2, 2)
