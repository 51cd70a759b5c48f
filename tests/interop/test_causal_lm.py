"""GPT-2 / Llama (GQA, MQA, tied and untied, llama3 RoPE scaling) / Qwen2: import, export, round trip."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bridge.interop.hf import HFConversionError, import_hf, save_hf

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _logits(model, ids):
    """Our megatron-core GPT model's logits, vocabulary padding dropped."""
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return model(ids, positions, None)


def _hf_logits(directory, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _load_all(directory):
    return safetensors_torch.load_file(os.path.join(directory, "model.safetensors"))


def test_import_matches_transformers_and_export_round_trips(causal_lm_dir, tmp_path):
    name, directory = causal_lm_dir
    ids = torch.randint(0, 359, (2, 24), generator=torch.Generator().manual_seed(1))
    reference = _hf_logits(directory, ids)

    provider, model = import_hf(directory, attention_backend="local")
    model.eval()
    ours = _logits(model, ids)[..., : reference.shape[-1]]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)

    out = str(tmp_path / f"{name}_exported")
    files = save_hf(model, provider, out)
    assert "config.json" in files and "model.safetensors" in files
    torch.testing.assert_close(_hf_logits(out, ids), reference, rtol=1e-5, atol=1e-5)

    original, exported = _load_all(directory), _load_all(out)
    assert sorted(exported) == sorted(original)  # tied heads are left out in both, as save_pretrained does
    for key in original:
        assert torch.equal(exported[key], original[key]), key  # bit-identical


def test_architecture_fields(tmp_path):
    from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

    directory = save_hf_model(CAUSAL_LM_BUILDERS["llama_tied_mqa_llama3_rope"], tmp_path / "l")
    provider, _ = import_hf(directory, attention_backend="local")
    assert (provider.num_query_groups, provider.share_embeddings_and_output_weights) == (1, True)
    assert (provider.rope_scaling, provider.rope_scaling_factor, provider.rotary_base) == (True, 8.0, 10000)
    assert (provider.activation, provider.normalization, provider.add_bias_linear) == ("swiglu", "RMSNorm", False)
    config = json.load(open(os.path.join(directory, "config.json")))
    assert provider.vocab_size == config["vocab_size"] and provider.padded_vocab_size == config["vocab_size"]


def _edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "bloom"}, "model_type='bloom' is not supported; supported: gpt2, llama"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0}},
     "rope_type='yarn' is not supported: supported: default, linear, llama3"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"num_hidden_layers": None}, "has no 'num_hidden_layers'"),
])
def test_unsupported_config_is_one_clear_error(tmp_path, changes, message):
    from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

    directory = save_hf_model(CAUSAL_LM_BUILDERS["llama_gqa"], tmp_path / "l")
    _edit_config(directory, **changes)
    with pytest.raises(HFConversionError, match=message.replace("(", r"\(").replace("[", r"\[")):
        import_hf(directory, attention_backend="local")


def test_weight_mismatches_name_the_tensor(tmp_path):
    from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

    directory = save_hf_model(CAUSAL_LM_BUILDERS["llama_gqa"], tmp_path / "l")
    tensors = _load_all(directory)
    path = os.path.join(directory, "model.safetensors")

    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    safetensors_torch.save_file(missing, path)
    with pytest.raises(HFConversionError, match=r"no tensor 'model.layers.1.mlp.up_proj.weight' \(needed for "
                                                r"megatron tensor 'decoder.layers.1.mlp.linear_fc1.weight'\)"):
        import_hf(directory, attention_backend="local")

    wrong = dict(tensors, **{"model.layers.0.self_attn.o_proj.weight": torch.zeros(64, 32)})
    safetensors_torch.save_file(wrong, path)
    with pytest.raises(HFConversionError, match=r"model.layers.0.self_attn.o_proj.weight \(64, 32\) does not fit "
                                                r"megatron tensor 'decoder.layers.0.self_attention.linear_proj.weight'"):
        import_hf(directory, attention_backend="local")

    extra = dict(tensors, **{"model.layers.2.mlp.up_proj.weight": torch.zeros(96, 64)})
    safetensors_torch.save_file(extra, path)
    with pytest.raises(HFConversionError, match=r"tensor 'model.layers.2.mlp.up_proj.weight' \(and 0 more unused\)"):
        import_hf(directory, attention_backend="local")


def test_export_refuses_a_non_empty_directory_and_unexportable_models(tmp_path):
    from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

    directory = save_hf_model(CAUSAL_LM_BUILDERS["gpt2"], tmp_path / "g")
    provider, model = import_hf(directory, attention_backend="local")
    with pytest.raises(HFConversionError, match="exists and is not empty"):
        save_hf(model, provider, directory)
    assert os.path.isfile(os.path.join(directory, "model.safetensors"))  # nothing lost

    from bridge.models import GPTModelProvider

    odd = GPTModelProvider(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=50,
                           normalization="RMSNorm", attention_backend="local")
    with pytest.raises(HFConversionError, match="no Hugging Face architecture matches"):
        save_hf(odd.provide(), odd, str(tmp_path / "odd"))


def test_sharded_safetensors_and_pytorch_bin_directories(tmp_path):
    import shutil

    from bridge.interop.hf import hf_state_dict
    from bridge.interop.hf.files import write_weights
    from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

    directory = save_hf_model(CAUSAL_LM_BUILDERS["llama_gqa"], tmp_path / "l")
    provider, model = import_hf(directory, attention_backend="local")
    tensors = hf_state_dict(model, provider)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    files = write_weights(str(sharded), tensors, max_shard_bytes=40_000)
    assert "model.safetensors.index.json" in files and len(files) > 3
    shutil.copy(os.path.join(directory, "config.json"), sharded)
    ids = torch.randint(0, 359, (1, 8), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_hf_logits(str(sharded), ids), _hf_logits(directory, ids), rtol=0, atol=0)

    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(os.path.join(directory, "config.json"), binary)
    torch.save(_load_all(directory), binary / "pytorch_model.bin")
    for source in (sharded, binary):
        _, again = import_hf(str(source), attention_backend="local")
        for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
            assert torch.equal(a, b), (source, name)
