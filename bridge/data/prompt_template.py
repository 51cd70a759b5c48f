"""Prompt templates for GPT fine-tuning: ``"Q: {input}\\nA: {output}"`` filled from each JSONL record.

This is what NeMo 1.x SFT files call ``prompt_template``: the placeholders name keys of the record, and the
template ends with the placeholder of the response (``{output}``), so the prompt is everything before it. The
prompt is kept as parts (literal text and filled fields) because a too-long example is shortened inside one
field (NeMo's ``truncation_field``), not by cutting the template's own text.
"""

from __future__ import annotations

import string
from typing import List, NamedTuple, Optional, Tuple


class PromptPart(NamedTuple):
    """A piece of a rendered prompt: its text, and whether a too-long example may lose tokens from it."""

    text: str
    truncatable: bool


class PromptTemplate(NamedTuple):
    """A parsed template: the prompt's pieces (literal text, or a ``{key}`` placeholder) and the response key."""

    pieces: Tuple[Tuple[str, Optional[str]], ...]  # (literal text, None) or ("", record key)
    response_key: str

    @property
    def keys(self) -> Tuple[str, ...]:
        """Record keys the template reads, the response key last."""
        return tuple(key for _, key in self.pieces if key is not None) + (self.response_key,)


def parse_prompt_template(template: str, response_key: str) -> PromptTemplate:
    """Parse ``template``; it must end with ``{response_key}`` and hold it once. Errors are one ValueError line."""
    pieces: List[Tuple[str, Optional[str]]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"data.prompt_template={template!r} is not a valid template ({exc}); write fields as "
                         "{key}, braces as {{ }}") from None
    for literal, key, spec, conversion in parsed:
        if literal:
            pieces.append((literal, None))
        if key is None:
            continue
        if not key or spec or conversion:
            raise ValueError(f"data.prompt_template={template!r}: placeholders are plain record keys such as "
                             "{input}, not positional, formatted or converted fields")
        pieces.append(("", key))
    keys = [key for _, key in pieces if key is not None]
    if not pieces or pieces[-1][1] != response_key or keys.count(response_key) != 1:
        raise ValueError(f"data.prompt_template={template!r} must end with the response placeholder "
                         f"{{{response_key}}} (data.response_key) and hold it once, e.g. "
                         f"'{{input}} {{{response_key}}}'")
    return PromptTemplate(tuple(pieces[:-1]), response_key)


def render_prompt(template: PromptTemplate, record: dict, truncation_field: Optional[str]) -> Tuple[PromptPart, ...]:
    """The prompt of ``record`` as parts; the parts filled from ``truncation_field`` are truncatable."""
    return tuple(PromptPart(record[key], key == truncation_field) if key is not None else PromptPart(text, False)
                 for text, key in template.pieces)
