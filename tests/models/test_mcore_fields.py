"""megatron-core's TransformerConfig field names on the providers: every field accounted for, each one either
reaching the built model or rejected with one line saying why."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from megatron.core.activations import squared_relu
from megatron.core.transformer.transformer_config import TransformerConfig

from bridge.models import GPTModelProvider, T5ModelProvider, get_preset
from bridge.models import mcore_fields
from bridge.models.gpt_builder import gpt_transformer_config

MCORE_FIELDS = [f for f in dataclasses.fields(TransformerConfig) if not f.name.startswith("_")]
TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128, seq_length=32,
            hidden_dropout=0.0, attention_dropout=0.0, attention_backend="local")


def test_every_transformer_config_field_is_a_provider_field_with_a_handling():
    provider_fields = {f.name for f in dataclasses.fields(GPTModelProvider)}
    t5_fields = {f.name for f in dataclasses.fields(T5ModelProvider)}
    for f in MCORE_FIELDS:
        assert f.name in provider_fields and f.name in t5_fields, f.name
        assert mcore_fields.handling(f.name) in ("ours", "alias", "derived", "passed", "no effect", "rejected")


def test_generated_fields_carry_megatron_core_defaults():
    provider = GPTModelProvider()
    for f in MCORE_FIELDS:
        if f.name not in mcore_fields.GENERATED or f.name in mcore_fields.ALIASES:
            continue
        default = mcore_fields.mcore_default(f)
        value = getattr(provider, f.name)
        assert value is None or value == default or list(value) == list(default), f.name


def test_defaults_match_megatron_core_for_shared_fields():
    provider = GPTModelProvider()
    assert provider.attention_dropout == 0.1 and provider.hidden_dropout == 0.1
    assert provider.gated_linear_unit is False and provider.activation_func is F.gelu
    assert provider.bf16 is False and provider.fp16 is False and provider.params_dtype == torch.float32
    assert provider.should_pad_vocab is False


@pytest.mark.parametrize("name", sorted((mcore_fields.PASSED | set(mcore_fields.ACCEPTED_WITHOUT_EFFECT))
                                        - mcore_fields.KERNEL_CHOICES))
def test_passed_fields_reach_transformer_config_kwargs(name):
    provider = GPTModelProvider()
    sentinel = object()
    object.__setattr__(provider, name, sentinel)  # no validation: only the plumbing is under test
    assert mcore_fields.passthrough_kwargs(provider)[name] is sentinel


def _non_default(f):
    default = mcore_fields.mcore_default(f)
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)) and default is not None:
        return default + 3
    if isinstance(default, list):
        return ["x"]
    return 2 if default is None else "something-else"


@pytest.mark.parametrize("f", [f for f in MCORE_FIELDS if mcore_fields.handling(f.name) == "rejected"], ids=lambda f: f.name)
def test_rejected_fields_fail_with_one_line_naming_them(f):
    value = _non_default(f)
    with pytest.raises(ValueError) as exc:
        GPTModelProvider(**{f.name: value})
    message = str(exc.value)
    assert "\n" not in message and f"{f.name}={value!r} is not supported" in message


@pytest.mark.parametrize("f", [f for f in MCORE_FIELDS if mcore_fields.handling(f.name) == "rejected"], ids=lambda f: f.name)
def test_rejected_fields_accept_their_default(f):
    GPTModelProvider(**{f.name: mcore_fields.mcore_default(f)})


def test_fp8_without_transformer_engine_says_so():
    with pytest.raises(ValueError, match=r"fp8='hybrid' is not supported: needs Transformer Engine"):
        GPTModelProvider(fp8="hybrid")


def test_all_problems_reported_together():
    with pytest.raises(ValueError) as exc:
        GPTModelProvider(num_moe_experts=8, context_parallel_size=2, hidden_dropout=1.5, num_query_groups=5)
    message = str(exc.value)
    assert message.startswith("GPTModelProvider has 4 problems: ")
    for part in ("num_moe_experts=8", "context_parallel_size=2", "hidden_dropout must be in [0, 1)", "num_query_groups=5"):
        assert part in message


# -- aliases ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation,gated,func", [
    ("swiglu", True, F.silu), ("geglu", True, F.gelu), ("gelu", False, F.gelu), ("relu", False, F.relu),
    ("squared_relu", False, squared_relu),
])
def test_activation_both_spellings(activation, gated, func):
    ours = GPTModelProvider(activation=activation)
    theirs = GPTModelProvider(gated_linear_unit=gated, activation_func=func)
    for provider in (ours, theirs):
        assert (provider.activation, provider.gated_linear_unit, provider.activation_func) == (activation, gated, func)
        kwargs = provider.transformer_config_kwargs()
        assert kwargs["gated_linear_unit"] is gated and kwargs["activation_func"] is func


def test_nemo_activation_spellings():
    assert GPTModelProvider(activation="squared-relu").activation == "squared_relu"
    assert GPTModelProvider(activation="fast-swiglu").activation == "swiglu"


def test_activation_func_as_dotted_path_and_custom_function():
    assert GPTModelProvider(activation_func="torch.nn.functional.silu").activation == "silu"
    custom = lambda x: x * torch.sigmoid(1.702 * x)  # noqa: E731
    provider = GPTModelProvider(activation_func=custom)
    assert provider.activation == "custom" and provider.transformer_config_kwargs()["activation_func"] is custom


def test_activation_contradiction_is_one_error():
    with pytest.raises(ValueError, match=r"activation='gelu' contradicts gated_linear_unit=True.*set only one"):
        GPTModelProvider(activation="gelu", gated_linear_unit=True, activation_func=F.silu)


@pytest.mark.parametrize("fields,dtype", [
    (dict(bf16=True), "bf16"), (dict(fp16=True), "fp16"), (dict(params_dtype=torch.bfloat16), "bf16"),
    (dict(bf16=True, params_dtype=torch.float32), "bf16"), (dict(dtype="bf16", bf16=True), "bf16"),
])
def test_dtype_both_spellings(fields, dtype):
    provider = GPTModelProvider(**fields)
    assert provider.dtype == dtype
    kwargs = provider.transformer_config_kwargs()
    assert kwargs["bf16"] is (dtype == "bf16") and kwargs["fp16"] is (dtype == "fp16")


def test_dtype_contradictions():
    with pytest.raises(ValueError, match="dtype='fp32' contradicts bf16=True"):
        GPTModelProvider(dtype="fp32", bf16=True)
    with pytest.raises(ValueError, match="bf16=True and fp16=True contradict"):
        GPTModelProvider(bf16=True, fp16=True)


def test_changing_one_spelling_after_construction_wins():
    """Megatron Bridge code sets fields on a built provider and then calls finalize()."""
    provider = GPTModelProvider()
    provider.gated_linear_unit, provider.activation_func = True, F.silu
    provider.bf16 = True
    provider.finalize()
    assert provider.activation == "swiglu" and provider.dtype == "bf16"
    provider.activation = "gelu"
    provider.bf16 = False
    provider.finalize()
    assert provider.gated_linear_unit is False and provider.activation_func is F.gelu and provider.dtype == "fp32"


# -- misleading hints ------------------------------------------------------------------------------------
def test_unknown_field_hints_do_not_mislead():
    with pytest.raises(TypeError, match="'seq_length_dec': it is a T5ModelProvider field"):
        GPTModelProvider(seq_length_dec=128)
    GPTModelProvider(qk_layernorm=True)  # a field now, not "did you mean layernorm_epsilon"
    with pytest.raises(TypeError, match=r"no field 'num_layr'; did you mean 'num_layers'\?"):
        GPTModelProvider(num_layr=2)
    assert T5ModelProvider(seq_length_dec=64).decoder_seq_length == 64


def test_t5_seq_length_dec_is_decoder_seq_length():
    provider = T5ModelProvider(decoder_seq_length=32)
    assert provider.seq_length_dec == 32
    provider.seq_length_dec = 48
    provider.finalize()
    assert provider.decoder_seq_length == 48
    with pytest.raises(ValueError, match="decoder_seq_length=32 contradicts seq_length_dec=64"):
        T5ModelProvider(decoder_seq_length=32, seq_length_dec=64)


# -- fields that take effect in the built model ----------------------------------------------------------
def test_vocab_padding_follows_should_pad_vocab():
    assert GPTModelProvider(vocab_size=50257).padded_vocab_size == 50257
    assert GPTModelProvider(vocab_size=50257, should_pad_vocab=True).padded_vocab_size == 50304
    assert get_preset("gpt_126m", vocab_size=50257).padded_vocab_size == 50304  # presets pad, as Megatron-LM
    model = GPTModelProvider(**TINY, should_pad_vocab=False).provide()
    assert model.embedding.word_embeddings.weight.shape[0] == 128


def test_structural_fields_reach_the_model():
    model = GPTModelProvider(**{**TINY, "vocab_size": 100}, add_bias_linear=False, add_qkv_bias=True,
                             qk_layernorm=True, rotary_interleaved=True, position_embedding_type="rope",
                             seq_len_interpolation_factor=2.0, softmax_scale=0.5, window_size=(4, 0),
                             fp32_residual_connection=True, init_method_std=0.01).provide()
    attention = model.decoder.layers[0].self_attention
    assert attention.linear_qkv.bias is not None and attention.linear_proj.bias is None
    assert isinstance(attention.q_layernorm, torch.nn.LayerNorm) and isinstance(attention.k_layernorm, torch.nn.LayerNorm)
    assert model.rotary_pos_emb.rotary_interleaved and model.rotary_pos_emb.seq_len_interpolation_factor == 2.0
    assert attention.core_attention.softmax_scale == 0.5
    config = model.config
    assert config.window_size == (4, 0) and config.fp32_residual_connection and config.init_method_std == 0.01
    assert model.embedding.word_embeddings.weight.shape[0] == 100


def test_attention_dropout_default_reaches_the_config():
    config = gpt_transformer_config(GPTModelProvider(vocab_size=64))
    assert config.attention_dropout == 0.1


RECOMPUTE = [
    dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
    dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1),
    dict(recompute_granularity="selective"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only error")
def test_recompute_on_a_cpu_only_machine_is_one_clear_error():
    with pytest.raises(ValueError, match="recompute_granularity=selective needs a CUDA GPU"):
        GPTModelProvider(**TINY, recompute_granularity="selective").provide()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_recompute_takes_effect_and_gives_the_same_gradients(recompute):
    torch.manual_seed(0)
    plain = GPTModelProvider(**TINY).provide()
    model = GPTModelProvider(**TINY, **recompute).provide()
    assert model.config.recompute_granularity == recompute["recompute_granularity"]
    model.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 128, (2, 16), device="cuda")
    position_ids = torch.arange(16, device="cuda").expand(2, 16)
    grads = []
    for m in (plain, model):
        m.train()
        m(tokens, position_ids, None, labels=tokens).mean().backward()
        grads.append(m.decoder.layers[0].mlp.linear_fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_recompute_settings_are_checked():
    with pytest.raises(ValueError, match="recompute_granularity=full needs recompute_method"):
        GPTModelProvider(recompute_granularity="full")
    with pytest.raises(ValueError, match="recompute_granularity='partial' is not valid"):
        GPTModelProvider(recompute_granularity="partial")


@pytest.mark.parametrize("fusion", ["bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion"])
def test_cpu_capable_fusions_give_the_same_loss(fusion):
    torch.manual_seed(0)
    plain = GPTModelProvider(**TINY).provide()
    fused = GPTModelProvider(**TINY, **{fusion: True}).provide()
    fused.load_state_dict(plain.state_dict())
    assert getattr(fused.config, fusion) is True
    tokens = torch.randint(0, 128, (2, 16))
    position_ids = torch.arange(16).expand(2, 16)
    plain.eval(), fused.eval()
    torch.testing.assert_close(fused(tokens, position_ids, None, labels=tokens), plain(tokens, position_ids, None, labels=tokens))


def test_no_effect_fusions_are_accepted_and_passed_on():
    config = GPTModelProvider(**TINY, masked_softmax_fusion=True, attention_softmax_in_fp32=False).provide().config
    assert config.masked_softmax_fusion is True


def test_t5_rotary_base_is_used():
    model = T5ModelProvider(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=64, seq_length=16,
                            decoder_seq_length=8, position_embedding_type="rope", rotary_base=500,
                            attention_backend="local").provide()
    expected = 1.0 / (500 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    torch.testing.assert_close(model.rotary_pos_emb.inv_freq.float().cpu(), expected)


def test_provide_signature_and_vp_stage_checks():
    provider = GPTModelProvider(**TINY)
    model = provider.provide(pre_process=True, post_process=True, vp_stage=None)
    assert model.pre_process and model.post_process
    with pytest.raises(ValueError, match="vp_stage=1 is not a virtual pipeline stage"):
        provider.provide(vp_stage=1)
    with pytest.raises(ValueError, match="virtual_pipeline_model_parallel_size > 1 needs pipeline_model_parallel_size > 1"):
        GPTModelProvider(**TINY, virtual_pipeline_model_parallel_size=2)


def test_provide_distributed_model_on_cpu():
    from megatron.core.distributed import DistributedDataParallelConfig

    provider = GPTModelProvider(**TINY)
    with pytest.raises(ValueError, match="ddp_config is required"):
        provider.provide_distributed_model()
    chunks = provider.provide_distributed_model(ddp_config=DistributedDataParallelConfig(), bf16=True,
                                                post_wrap_hook=lambda m: m)
    assert len(chunks) == 1 and provider.dtype == "bf16"
    assert isinstance(chunks[0], torch.nn.parallel.DistributedDataParallel)  # megatron-core's DDP needs CUDA
    module = chunks[0].module
    assert type(module).__name__ == "Float16Module"
    assert next(module.parameters()).dtype == torch.bfloat16
    plain = GPTModelProvider(**TINY).provide_distributed_model(wrap_with_ddp=False)
    assert type(plain[0]).__name__ == "GPTModel"


def test_window_size_limits_attention_on_the_local_backend():
    """megatron-core's window_size=(left, right) reaches our core attention as a sliding-window mask."""
    from megatron.core.transformer.enums import AttnMaskType

    model = GPTModelProvider(**TINY, window_size=(2, 0)).provide()
    core = model.decoder.layers[0].self_attention.core_attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 1, 4, 16) for _ in range(3))
    out = core(q, k, v, None, AttnMaskType.causal).view(6, 4, 16)
    scores = torch.einsum("qhd,khd->hqk", q[:, 0], k[:, 0]) * core.softmax_scale
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    scores = scores.masked_fill(~((j <= i) & (j >= i - 2)), float("-inf"))
    expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[:, 0])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="window_size=.* must be two integers"):
        GPTModelProvider(window_size=(2,))
