"""Datasets as the trainer builds them: through the family's spec, with the lengths of a tiny model."""

from __future__ import annotations

from typing import Optional

from bridge.models import family_spec, get_preset


def family_datasets(data_cfg, tokenizer, family: str, seq_length: int, decoder_seq_length: Optional[int] = None):
    """``(train, valid)`` of ``family`` for ``data_cfg``, samples of ``seq_length`` (T5: and ``decoder_seq_length``)."""
    lengths = {"seq_length": seq_length}
    if family == "t5":
        lengths["decoder_seq_length"] = decoder_seq_length
    model = get_preset(f"{family}_tiny", **lengths)
    return family_spec(family).build_datasets(data_cfg, tokenizer, model)
