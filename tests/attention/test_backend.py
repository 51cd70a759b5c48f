import pytest
from megatron.core.transformer.enums import AttnBackend as MegatronAttnBackend

import bridge.attention
from bridge.models import AttnBackend, parse_attn_backend

SPELLINGS = [
    (AttnBackend.flash, AttnBackend.flash),
    ("flash", AttnBackend.flash),
    ("FLASH", AttnBackend.flash),
    ("flash_attn", AttnBackend.flash),
    (MegatronAttnBackend.flash, AttnBackend.flash),
    (AttnBackend.fused, AttnBackend.fused),
    ("fused", AttnBackend.fused),
    ("fused_attn", AttnBackend.fused),
    (MegatronAttnBackend.fused, AttnBackend.fused),
    (AttnBackend.local, AttnBackend.local),
    ("local", AttnBackend.local),
    (MegatronAttnBackend.local, AttnBackend.local),
    (AttnBackend.auto, AttnBackend.auto),
    ("auto", AttnBackend.auto),
    (" Auto ", AttnBackend.auto),
    (MegatronAttnBackend.auto, AttnBackend.auto),
    ("unfused", AttnBackend.unfused),
    (MegatronAttnBackend.unfused, AttnBackend.unfused),
]


@pytest.mark.parametrize("value, expected", SPELLINGS)
def test_every_spelling_parses(value, expected):
    assert parse_attn_backend(value) is expected


@pytest.mark.parametrize("value", ["flashattn", "cudnn", "", "sdpa", 3, None, True])
def test_invalid_backend_lists_valid_values(value):
    with pytest.raises(ValueError) as err:
        parse_attn_backend(value)
    message = str(err.value)
    assert repr(value) in message
    for valid in ("auto", "flash", "fused", "local", "flash_attn", "fused_attn"):
        assert valid in message


def test_enum_prints_as_its_value():
    assert f"{AttnBackend.flash}" == "flash"


def test_the_enum_lives_in_attention_and_models_re_exports_it():
    assert AttnBackend is bridge.attention.AttnBackend
    assert AttnBackend.__module__ == "bridge.attention.backend"
