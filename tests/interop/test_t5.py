"""T5 / T5 v1.1: relative position bias, unscaled attention, gated and plain feed-forward, the decoder output scale."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bridge.interop.hf import HFConversionError, import_hf, save_hf

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _inputs():
    g = torch.Generator().manual_seed(3)
    enc, dec = torch.randint(0, 359, (2, 12), generator=g), torch.randint(0, 359, (2, 9), generator=g)
    enc_mask = torch.ones(2, 12, dtype=torch.bool)
    enc_mask[1, 8:] = False  # padding in the second encoder input
    return enc, dec, enc_mask


def _hf_logits(directory, enc, dec, enc_mask):
    model = transformers.T5ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=enc, attention_mask=enc_mask.long(), decoder_input_ids=dec).logits


def _our_logits(model, enc, dec, enc_mask):
    blocked = ~enc_mask[:, None, None, :]  # megatron's masks are True where attention is blocked
    with torch.no_grad():
        return model(enc, dec, blocked, torch.zeros(2, 1, 1, dec.shape[1], dtype=torch.bool), blocked)


def test_t5_import_matches_transformers_and_export_round_trips(t5_dir, tmp_path):
    name, directory = t5_dir
    enc, dec, enc_mask = _inputs()
    reference = _hf_logits(directory, enc, dec, enc_mask)

    provider, model = import_hf(directory, attention_backend="auto")
    assert (provider.position_embedding_type, provider.softmax_scale) == ("relative", 1.0)
    model.eval()
    torch.testing.assert_close(_our_logits(model, enc, dec, enc_mask), reference, rtol=1e-5, atol=1e-5)
    assert {m.last_backend.value for m in model.modules() if getattr(m, "last_backend", None)} == {"local"}

    out = str(tmp_path / "exported")
    save_hf(model, provider, out)
    torch.testing.assert_close(_hf_logits(out, enc, dec, enc_mask), reference, rtol=1e-5, atol=1e-5)
    original = safetensors_torch.load_file(os.path.join(directory, "model.safetensors"))
    exported = safetensors_torch.load_file(os.path.join(out, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    # sqrt(d_model=64) = 8: the folded output scale is a power of two, so even scaled weights come back exactly
    # when the source scales; an unscaled tied head comes back scaled (same function, other norm weight).
    differ = [k for k in original if not torch.equal(exported[k], original[k])]
    assert differ == ([] if "unscaled" not in name else ["decoder.final_layer_norm.weight"])


def test_t5_unexpressible_settings_are_one_clear_error(tmp_path):
    from tests.interop.conftest import T5_BUILDERS, save_hf_model

    directory = save_hf_model(T5_BUILDERS["t5_relu_scaled"], tmp_path / "t5")
    with pytest.raises(ValueError, match="encoder_attention_backend=fused cannot add the relative position bias"):
        import_hf(directory, attention_backend="fused")

    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    json.dump({**config, "feed_forward_proj": "gated-relu"}, open(path, "w"))
    with pytest.raises(HFConversionError, match="feed_forward_proj='gated-relu' is not supported: supported values: relu, gelu, gated-gelu, gated-silu"):
        import_hf(directory, attention_backend="local")


def test_t5_untied_head_cannot_be_exported_where_transformers_ties_it(tmp_path):
    from bridge.models import T5ModelProvider

    provider = T5ModelProvider(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=50,
                               position_embedding_type="relative", normalization="RMSNorm", activation="relu",
                               add_bias_linear=False, softmax_scale=1.0, share_embeddings_and_output_weights=False,
                               attention_backend="local")
    if not transformers.T5Config(tie_word_embeddings=False).tie_word_embeddings:
        pytest.skip("this transformers keeps an untied T5 head")
    with pytest.raises(HFConversionError, match="always ties T5's LM head"):
        save_hf(provider.provide(), provider, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
