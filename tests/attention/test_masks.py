import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType

from bridge.attention.inputs import AttentionMask


def test_no_mask_and_causal_types():
    assert AttentionMask.from_megatron(None, AttnMaskType.causal, 2, 4, 4, True).kind == "causal"
    assert AttentionMask.from_megatron(None, AttnMaskType.padding, 2, 4, 4, True).kind == "none"
    full = torch.zeros(2, 1, 1, 4, dtype=torch.bool)  # nothing masked
    assert AttentionMask.from_megatron(full, AttnMaskType.padding, 2, 4, 4, True).kind == "none"


def test_outer_product_mask_reduces_to_padding():
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    dense = ~(valid[:, :, None] & valid[:, None, :])[:, None]  # [b, 1, s, s], True = masked
    mask = AttentionMask.from_megatron(dense, AttnMaskType.arbitrary, 2, 4, 4, True)
    assert mask.kind == "padding"
    assert torch.equal(mask.key_padding, valid) and torch.equal(mask.query_padding, valid)


def test_causal_plus_padding_dense_mask_reduces():
    valid = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    dense = ~(valid[:, :, None] & valid[:, None, :] & causal)[:, None]
    mask = AttentionMask.from_megatron(dense, AttnMaskType.causal, 1, 4, 4, True)
    assert mask.kind == "padding_causal"


def test_irregular_mask_stays_dense():
    dense = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    dense[0, 0, 0, 1] = True
    assert AttentionMask.from_megatron(dense, AttnMaskType.arbitrary, 1, 3, 3, True).kind == "arbitrary"


@pytest.mark.parametrize("shape", [(2, 1, 5), (2, 2, 1, 4, 4), (2, 1, 3, 4)])
def test_bad_mask_shape_is_one_clear_error(shape):
    with pytest.raises(ValueError, match=r"attention_mask has shape .*; expected \[b, 1, 1, 4\] or \[b, 1, 4, 4\]"):
        AttentionMask.from_megatron(torch.zeros(shape, dtype=torch.bool), AttnMaskType.padding, 2, 4, 4, True)


def test_float_mask_rejected():
    with pytest.raises(ValueError, match="attention_mask must be a bool tensor"):
        AttentionMask.from_megatron(torch.zeros(2, 1, 1, 4), AttnMaskType.padding, 2, 4, 4, True)


def test_reduced_mask_is_computed_once_per_tensor_and_redone_after_in_place_change():
    from bridge.attention.inputs import reduced_mask

    mask = torch.zeros(2, 1, 1, 4, dtype=torch.bool)
    mask[0, ..., 3] = True
    first = reduced_mask(mask, AttnMaskType.padding, 2, 4, 4, True)
    assert reduced_mask(mask, AttnMaskType.padding, 2, 4, 4, True) is first  # the next layer reuses it
    assert reduced_mask(mask, AttnMaskType.padding, 2, 4, 4, False) is not first  # cross-attention differs
    mask[1, ..., 2] = True  # in-place edit: must not serve the stale reduction
    again = reduced_mask(mask, AttnMaskType.padding, 2, 4, 4, True)
    assert again is not first and not bool(again.key_padding[1, 2])
    other = mask.clone()
    assert reduced_mask(other, AttnMaskType.padding, 2, 4, 4, True) is not again


def test_window_on_causal_stays_a_description_and_builds_the_band():
    from bridge.attention.inputs import windowed

    mask = windowed(AttentionMask(causal=True), (2, 0), 1, 6, 6, "cpu")
    assert mask.kind == "sliding_window" and mask.base_kind == "causal" and mask.window == (2, 0)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    assert torch.equal(mask.allowed(1, 6, 6, "cpu")[0, 0], (j <= i) & (j >= i - 2))
    # bottom-right aligned when the lengths differ, right side bounded too
    two_sided = windowed(AttentionMask(), (1, 2), 1, 3, 5, "cpu").allowed(1, 3, 5, "cpu")[0, 0]
    rows = torch.arange(3)[:, None] + 2
    cols = torch.arange(5)[None, :]
    assert torch.equal(two_sided, (cols >= rows - 1) & (cols <= rows + 2))


def test_window_on_padding_keeps_padding_and_on_dense_folds_in():
    from bridge.attention.inputs import windowed

    valid = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    padded = windowed(AttentionMask(causal=True, key_padding=valid, query_padding=valid), (1, 0), 1, 4, 4, "cpu")
    assert padded.kind == "sliding_window" and padded.base_kind == "padding_causal"
    allowed = padded.allowed(1, 4, 4, "cpu")[0, 0]
    assert allowed[2].tolist() == [False, True, True, False] and not allowed[3].any()
    dense = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    folded = windowed(AttentionMask(dense=dense), (0, 0), 1, 4, 4, "cpu")
    assert folded.kind == "arbitrary" and torch.equal(folded.dense[0, 0], torch.eye(4, dtype=torch.bool))
    assert windowed(AttentionMask(causal=True), (-1, -1), 1, 4, 4, "cpu").kind == "causal"
