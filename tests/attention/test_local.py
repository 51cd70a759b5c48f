import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType

from bridge.attention.inputs import AttentionMask
from bridge.attention.local import local_attention
from tests.attention.reference import causal_allowed, reference_attention


def qkv(sq, sk, b, h, g, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, b, h, d, generator=gen, dtype=dtype)
    k = torch.randn(sk, b, g, d, generator=gen, dtype=dtype)
    v = torch.randn(sk, b, g, d, generator=gen, dtype=dtype)
    return q, k, v


def run_local(q, k, v, mask):
    return local_attention(q, k, v, mask, softmax_scale=q.shape[-1] ** -0.5, dropout_p=0.0)


@pytest.mark.parametrize("h, g", [(4, 4), (6, 2), (6, 3), (4, 1)])
@pytest.mark.parametrize("sq, sk", [(16, 16), (7, 19), (19, 7), (1, 1)])
def test_no_mask_and_causal_match_float64(h, g, sq, sk):
    q, k, v = qkv(sq, sk, 2, h, g, 16)
    out = run_local(q, k, v, AttentionMask())
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, None), atol=1e-5, rtol=1e-5)
    out = run_local(q, k, v, AttentionMask(causal=True))
    ref = reference_attention(q, k, v, causal_allowed(2, sq, sk))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_matches_float64_and_padded_rows_are_zero(causal):
    sq = sk = 12
    q, k, v = qkv(sq, sk, 3, 6, 2, 16)
    valid = torch.ones(3, sk, dtype=torch.bool)
    valid[0, 5:] = False
    valid[2, 9:] = False
    megatron_mask = ~valid[:, None, None, :]
    mask_type = AttnMaskType.causal if causal else AttnMaskType.padding
    mask = AttentionMask.from_megatron(megatron_mask, mask_type, 3, sq, sk, self_attention=True)
    assert mask.kind == ("padding_causal" if causal else "padding")
    out = run_local(q, k, v, mask)
    allowed = valid[:, None, :] & valid[:, :, None]
    if causal:
        allowed = allowed & causal_allowed(3, sq, sk)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, allowed), atol=1e-5, rtol=1e-5)
    assert torch.all(out[5:, 0] == 0) and torch.all(out[9:, 2] == 0)


def test_cross_attention_key_padding_keeps_every_query_row():
    q, k, v = qkv(5, 9, 2, 4, 4, 8)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 3:] = False
    mask = AttentionMask.from_megatron(~valid[:, None, None, :], AttnMaskType.arbitrary, 2, 5, 9, self_attention=False)
    assert mask.query_padding is None and mask.kind == "padding"
    out = run_local(q, k, v, mask)
    ref = reference_attention(q, k, v, valid[:, None, :].expand(2, 5, 9))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_arbitrary_mask_and_fully_masked_rows_give_zeros_not_nan():
    q, k, v = qkv(6, 6, 1, 2, 2, 8)
    allowed = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    allowed[0, 2] = False  # a row with nothing to attend to
    mask = AttentionMask.from_megatron(~allowed[:, None], AttnMaskType.arbitrary, 1, 6, 6, self_attention=True)
    assert mask.kind == "arbitrary"
    out = run_local(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.all(out[2] == 0)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_gradients_match_float64_autograd():
    q, k, v = qkv(8, 8, 2, 4, 2, 8, dtype=torch.float64)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = run_local(q, k, v, AttentionMask(causal=True))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q2, k2, v2, causal_allowed(2, 8, 8))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q2, k2, v2))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_stay_close_and_keep_dtype():
    q, k, v = qkv(32, 32, 2, 4, 4, 32, dtype=torch.bfloat16)
    out = run_local(q, k, v, AttentionMask(causal=True))
    assert out.dtype == torch.bfloat16
    ref = reference_attention(q, k, v, causal_allowed(2, 32, 32))
    assert (out.double() - ref).abs().max() < 2e-2


def test_dropout_changes_output_only_in_training_probability():
    q, k, v = qkv(16, 16, 1, 2, 2, 8)
    torch.manual_seed(0)
    dropped = local_attention(q, k, v, AttentionMask(), 8 ** -0.5, dropout_p=0.5)
    plain = run_local(q, k, v, AttentionMask())
    assert not torch.allclose(dropped, plain)
