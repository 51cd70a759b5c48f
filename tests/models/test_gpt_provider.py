import logging

import pytest
import torch
from megatron.core.models.gpt import GPTModel

from bridge.attention import BridgeCoreAttention
from bridge.models import AttnBackend, GPTModelProvider, get_preset, list_presets

VOCAB = 97


def tiny(**overrides):
    fields = dict(num_layers=2, hidden_size=64, num_attention_heads=8, seq_length=32, vocab_size=VOCAB,
                  hidden_dropout=0.0, attention_backend="local")
    fields.update(overrides)
    return GPTModelProvider(**fields)


def device_of(model):
    return next(model.parameters()).device


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, BridgeCoreAttention)]


@pytest.mark.parametrize("groups, kv_heads", [(None, 8), (8, 8), (4, 4), (2, 2), (1, 1)])
def test_mha_gqa_mqa_build_and_train_step_on_cpu(groups, kv_heads):
    torch.manual_seed(0)
    model = tiny(num_query_groups=groups).provide()
    assert isinstance(model, GPTModel)
    qkv = model.decoder.layers[0].self_attention.linear_qkv.weight
    head_dim = 64 // 8
    assert qkv.shape[0] == (8 + 2 * kv_heads) * head_dim  # K/V projections really have kv_heads heads
    tokens = torch.randint(0, VOCAB, (2, 16), device=device_of(model))
    positions = torch.arange(16, device=tokens.device).expand(2, 16)
    loss = model(tokens, positions, None, labels=tokens)
    assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(m.last_backend is AttnBackend.local for m in attention_modules(model))


@pytest.mark.parametrize(
    "heads, groups, tp, message",
    [
        (8, 3, 1, "num_query_groups=3 does not divide num_attention_heads=8; use 1 (MQA), a divisor of 8 (GQA), or 8 (MHA)"),
        (8, 0, 1, "num_query_groups=0 is invalid: use 1 (MQA), a divisor of num_attention_heads=8 (GQA), or None / 8 (MHA)"),
        (8, -2, 1, "num_query_groups=-2 is invalid"),
        (12, 6, 4, "num_query_groups=6 must be a multiple or a divisor of tensor_model_parallel_size=4"),
    ],
)
def test_invalid_query_groups_error_text(heads, groups, tp, message):
    with pytest.raises(ValueError) as err:
        GPTModelProvider(num_attention_heads=heads, hidden_size=heads * 16, num_query_groups=groups,
                         tensor_model_parallel_size=tp)
    assert message in str(err.value)


@pytest.mark.parametrize("groups, tp", [(2, 4), (8, 4), (4, 4), (1, 2)])
def test_tp_rule_accepts_multiples_and_divisors(groups, tp):
    GPTModelProvider(num_attention_heads=16, hidden_size=256, num_query_groups=groups, tensor_model_parallel_size=tp)


def test_unknown_field_is_rejected_with_suggestion():
    with pytest.raises(TypeError, match=r"GPTModelProvider has no field 'num_layer'; did you mean 'num_layers'\?"):
        GPTModelProvider(num_layer=3)
    provider = GPTModelProvider()
    with pytest.raises(AttributeError, match="has no field 'hiden_size'; did you mean 'hidden_size'"):
        provider.hiden_size = 5


def test_head_dim_rules():
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_attention_heads=8"):
        GPTModelProvider(hidden_size=100, num_attention_heads=8)
    assert GPTModelProvider(hidden_size=100, num_attention_heads=8, kv_channels=16).head_dim == 16


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dtype", "fp8", "dtype='fp8' is not a supported dtype; valid values: fp32, bf16, fp16"),
        ("normalization", "BatchNorm", "normalization='BatchNorm' is not valid; valid values: LayerNorm, RMSNorm"),
        ("activation", "tanh", "activation='tanh' is not valid"),
        ("position_embedding_type", "alibi", "position_embedding_type='alibi' is not valid"),
        ("attention_backend", "triton", "attention_backend='triton' is not a valid attention backend"),
    ],
)
def test_invalid_choices(field, value, message):
    with pytest.raises(ValueError) as err:
        GPTModelProvider(**{field: value})
    assert message in str(err.value)


def test_spellings_are_normalised():
    p = GPTModelProvider(dtype=torch.bfloat16, normalization="rmsnorm", position_embedding_type="rotary",
                         attention_backend="fused_attn")
    assert (p.dtype, p.normalization, p.position_embedding_type, p.attention_backend) == (
        "bf16", "RMSNorm", "rope", AttnBackend.fused)


def test_legacy_flag_true_means_flash_and_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.models"):
        p = GPTModelProvider(use_flash_attention=True)
        p.validate()
    assert p.attention_backend is AttnBackend.flash
    warnings = [r for r in caplog.records if "use_flash_attention is deprecated" in r.getMessage()]
    assert len(warnings) == 1
    assert "attention_backend=flash" in warnings[0].getMessage()


def test_legacy_flag_false_excludes_flash_from_auto():
    p = GPTModelProvider(use_flash_attention=False)
    assert p.attention_backend is AttnBackend.auto
    model = tiny(use_flash_attention=False, attention_backend="auto").provide()
    assert all(m.exclude == (AttnBackend.flash,) for m in attention_modules(model))


@pytest.mark.parametrize(
    "flag, backend, message",
    [
        (True, "fused", "use_flash_attention=True contradicts attention_backend=fused; remove one of them"),
        (True, "local", "use_flash_attention=True contradicts attention_backend=local"),
        (False, "flash", "use_flash_attention=False contradicts attention_backend=flash; remove one of them"),
    ],
)
def test_legacy_flag_conflicts(flag, backend, message):
    with pytest.raises(ValueError) as err:
        GPTModelProvider(use_flash_attention=flag, attention_backend=backend)
    assert message in str(err.value)


def test_backend_reaches_every_layer():
    model = tiny(num_layers=3, attention_backend="unfused").provide()
    mods = attention_modules(model)
    assert len(mods) == 3 and all(m.backend is AttnBackend.local for m in mods)


@pytest.mark.parametrize("backend", ["fused", "flash"])
def test_explicit_gpu_backend_on_cpu_is_one_clear_error(backend):
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(RuntimeError) as err:
        tiny(attention_backend=backend).provide()
    message = str(err.value)
    assert message.startswith(f"attention_backend={backend} cannot run the GPT attention layers")
    assert "\n" not in message


def test_vocab_size_required_and_padded():
    with pytest.raises(ValueError, match="vocab_size is not set"):
        GPTModelProvider().provide()
    assert GPTModelProvider(vocab_size=257).padded_vocab_size == 257  # Megatron Bridge: should_pad_vocab=False
    assert GPTModelProvider(vocab_size=257, should_pad_vocab=True).padded_vocab_size == 384


def test_rope_rmsnorm_swiglu_model_runs():
    model = tiny(position_embedding_type="rope", normalization="RMSNorm", activation="swiglu",
                 add_bias_linear=False, num_query_groups=2).provide()
    assert isinstance(model.decoder.final_layernorm, torch.nn.RMSNorm)
    tokens = torch.randint(0, VOCAB, (1, 8), device=device_of(model))
    logits = model(tokens, torch.arange(8, device=tokens.device)[None], None)
    assert logits.shape == (1, 8, VOCAB)  # unpadded: should_pad_vocab defaults to False


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_is_valid(name):
    p = get_preset(name, vocab_size=1000)
    p.validate()
    assert p.head_dim > 0


def test_preset_overrides_and_unknown_preset():
    p = get_preset("llama_1b", num_query_groups=4)
    assert (p.num_query_groups, p.normalization, p.activation, p.position_embedding_type) == (4, "RMSNorm", "swiglu", "rope")
    with pytest.raises(KeyError, match="unknown model preset 'gpt_7b'; available: "):
        get_preset("gpt_7b")


def test_tiny_preset_trains_one_step():
    model = get_preset("gpt_tiny", vocab_size=VOCAB, attention_backend="local").provide()
    tokens = torch.randint(0, VOCAB, (2, 32), device=device_of(model))
    loss = model(tokens, torch.arange(32, device=tokens.device).expand(2, 32), None, labels=tokens).mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_positions_can_exceed_the_sample_length():
    """seq_length is the samples' length; max_position_embeddings the rows of the learned position table."""
    model = tiny(max_position_embeddings=48).provide()
    assert model.embedding.position_embeddings.weight.shape[0] == 48
    assert tiny().provide().embedding.position_embeddings.weight.shape[0] == 32
    with pytest.raises(ValueError, match="seq_length=64 needs that many learned positions but max_position_embeddings=48"):
        tiny(seq_length=64, max_position_embeddings=48)
    assert tiny(seq_length=64, max_position_embeddings=48, position_embedding_type="rope").seq_length == 64
