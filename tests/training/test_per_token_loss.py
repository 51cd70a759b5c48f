"""megatron-core's ``calculate_per_token_loss``: every loss token of the global batch weighs the same, instead of
every micro-batch (whose loss is the mean over its own tokens)."""

from types import SimpleNamespace

import pytest
import torch

from bridge.data import TokenizerConfig, build_tokenizer
from bridge.data.sft_dataset import Example, GPTFinetuneDataset
from bridge.distributed import ensure_model_parallel
from bridge.models import GPTModelProvider, family_spec
from bridge.training.data_parallel import wrap_data_parallel
from bridge.training.trainer import _train_step


def _parts(per_token: bool):
    ensure_model_parallel(1, 1)
    torch.manual_seed(0)
    provider = GPTModelProvider(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                                seq_length=24, vocab_size=359, hidden_dropout=0.0, attention_dropout=0.0,
                                attention_backend="local", calculate_per_token_loss=per_token)
    model = provider.provide()
    wrapped = wrap_data_parallel(model, torch.device("cpu"), use_distributed_optimizer=False)
    optimizer = SimpleNamespace(zero_grad=lambda: None)
    env = SimpleNamespace(device=torch.device("cpu"), pipeline_parallel_size=1)
    run = SimpleNamespace(model=provider, train=SimpleNamespace(micro_batch_size=1))
    return SimpleNamespace(env=env, run=run, wrapped=wrapped, optimizer=optimizer, family=family_spec("gpt"),
                           accumulation=2), model


def _micro_batches():
    """Two micro-batches with 2 and 12 loss tokens: the two weightings differ."""
    tok = build_tokenizer(TokenizerConfig())
    ds = GPTFinetuneDataset([Example("long prompt here: ", "x"), Example("q: ", "a long answer")], tok,
                            seq_length=24, seed=0)
    return [{k: v.unsqueeze(0) for k, v in ds.sample(j, 0).items()} for j in range(2)]


@pytest.mark.parametrize("per_token", [False, True])
def test_step_loss_and_gradients_follow_the_weighting(per_token):
    parts, model = _parts(per_token)
    batches = _micro_batches()
    loss, _ = _train_step(parts, iter(batches))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    losses = [family_spec("gpt").per_token_loss(model, b) * b["loss_mask"] for b in batches]
    tokens = [b["loss_mask"].sum() for b in batches]
    if per_token:  # one mean over all 14 tokens
        expected = sum(l.sum() for l in losses) / sum(tokens)
    else:  # the mean of the two micro-batch means
        expected = sum(l.sum() / t for l, t in zip(losses, tokens)) / 2
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_field_reaches_megatron_core():
    parts, model = _parts(per_token=True)
    assert model.config.calculate_per_token_loss is True  # megatron-core's DDP and schedules read it there
    assert parts.wrapped.average is False  # gradients are summed over data-parallel ranks, not averaged
