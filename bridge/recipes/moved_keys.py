"""Recipe keys that moved to another node and still work as aliases on the command line.

The sample lengths belong to the model (``model.seq_length``, T5's ``model.decoder_seq_length``); the
datasets read them there. ``data.seq_length=128`` on the command line, what recipes accepted before, sets
``model.seq_length`` instead. Both sides with different values is one error; in a YAML file the old key is
an unknown key whose message names the new one.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser

MOVED_KEYS: Dict[str, str] = {
    "data.seq_length": "model.seq_length",
    "data.decoder_seq_length": "model.decoder_seq_length",
}
"""old key -> the key that owns the value now."""


def moved_key_hint(full_key: str) -> Optional[str]:
    """``"; it moved to 'model.seq_length' ..."`` for a moved key, else None."""
    new = MOVED_KEYS.get(full_key)
    return f"; it moved to {new!r} (the datasets take their lengths from the model)" if new else None


def _restates_link(override) -> bool:
    """``data.seq_length=${model.seq_length}``: only restates the link the model now owns."""
    return str(override.value()).replace(" ", "") == "${" + MOVED_KEYS[override.key_or_group] + "}"


def rewrite_moved_overrides(overrides: Iterable[str]) -> List[str]:
    """``overrides`` with each ``data.seq_length=V`` (and its kin) turned into ``model.seq_length=V``.

    Both keys with different values is a ``ValueError`` naming both.
    """
    overrides = list(overrides)
    parsed = OverridesParser.create().parse_overrides(overrides)
    given = {o.key_or_group: o.value() for o in parsed
             if not o.is_delete() and o.key_or_group in MOVED_KEYS.values()}
    out: List[str] = []
    for text, override in zip(overrides, parsed):
        new = MOVED_KEYS.get(override.key_or_group)
        if new is None or override.is_delete():
            out.append(text)
            continue
        if _restates_link(override):
            continue
        value = override.value()
        if new in given:
            if given[new] != value:
                raise ValueError(f"{new}={given[new]} and {override.key_or_group}={value} disagree; set only "
                                 f"{new} (the data follows it)")
            continue
        out.append(f"{new}={override.get_value_element_as_str()}")
        given[new] = value
    return out
