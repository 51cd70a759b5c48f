"""Tokenizers behind one small interface.

Three kinds, picked by :class:`TokenizerConfig`:

* ``byte`` (the default): UTF-8 bytes, no files needed. Ids 0/1/2 are pad/bos/eos, bytes follow
  at 3..258, then 100 sentinel ids for T5 span corruption (359 ids in all).
* ``huggingface``: a Hugging Face ``tokenizers`` file (``tokenizer.json``, or a directory
  holding one).
* ``sentencepiece``: a sentencepiece ``.model`` file.
* ``gpt2_bpe``: Megatron's ``GPT2BPETokenizer`` files, ``vocab.json`` (``path``) + ``merges.txt``
  (``merges_path``), read with the Hugging Face ``tokenizers`` library (byte-level BPE, as GPT-2).
* ``wordpiece``: Megatron's ``BertWordPieceCase`` / ``BertWordPieceLowerCase``: a BERT ``vocab.txt``
  (``lower_case`` picks the lower-casing variant), through the same library.

Every tokenizer exposes ``vocab_size``, ``encode(text) -> list[int]`` (no special tokens added),
``decode(ids) -> str`` (pad/bos/eos dropped, sentinels shown as ``<extra_id_N>``), ``eos_id``,
``bos_id``, ``pad_id``, ``sentinel_ids`` (at least 100, ``sentinel_ids[0]`` is ``<extra_id_0>``)
and ``fingerprint`` (identifies the vocabulary, so data tokenized with one tokenizer is never
silently read with another).

A file tokenizer whose vocabulary has no ``<extra_id_N>`` tokens gets 100 sentinel ids appended
past its vocabulary (as Hugging Face's T5 tokenizer does with ``extra_ids=100``); ``vocab_size``
counts them, so a model sized from it always has room for them.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

NUM_SENTINELS = 100
"""Sentinel ids every tokenizer provides (T5 uses one per corrupted span)."""

# Names under which tokenizer files usually spell their special tokens, most common first.
_EOS_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eot_id|>")
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")


def sentinel_name(i: int) -> str:
    """The text form of sentinel ``i``, as T5 vocabularies spell it."""
    return f"<extra_id_{i}>"


class TokenizerType(enum.Enum):
    """Which tokenizer implementation to use."""

    byte = "byte"
    huggingface = "huggingface"
    sentencepiece = "sentencepiece"
    gpt2_bpe = "gpt2_bpe"
    wordpiece = "wordpiece"


@dataclass
class TokenizerConfig:
    """How to build the tokenizer (``tokenizer.*`` in the recipes)."""

    type: TokenizerType = TokenizerType.byte
    """``byte`` (built in, no files), ``huggingface`` (a tokenizer.json) or ``sentencepiece``
    (a .model file)."""

    path: Optional[str] = None
    """Local file for ``huggingface`` (tokenizer.json or a directory holding one) and
    ``sentencepiece`` (.model). Unused by ``byte``."""

    eos_token: Optional[str] = None
    """End-of-document token of a file tokenizer, when it is not one of the usual names
    (</s>, <|endoftext|>, <eos>, ...). Unused by ``byte``."""

    merges_path: Optional[str] = None
    """``gpt2_bpe``: the merges.txt that goes with the vocab.json in ``path``."""

    lower_case: bool = False
    """``wordpiece``: lower-case the text first (Megatron's BertWordPieceLowerCase)."""

    def __post_init__(self) -> None:
        if isinstance(self.type, str):
            try:
                self.type = TokenizerType(self.type)
            except ValueError:
                valid = ", ".join(t.value for t in TokenizerType)
                raise ValueError(f"tokenizer.type={self.type!r} is not valid; use one of: {valid}") from None


class Tokenizer:
    """The interface every tokenizer implements (see the module docstring)."""

    vocab_size: int
    eos_id: int
    bos_id: int
    pad_id: int
    sentinel_ids: List[int]
    fingerprint: str

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text``, without bos/eos."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; pad/bos/eos are dropped, sentinels appear as ``<extra_id_N>``."""
        raise NotImplementedError

    @property
    def text_vocab_size(self) -> int:
        """Ids ``encode`` can return and a GPT needs rows for: ``vocab_size`` less the sentinel ids appended
        past a file tokenizer's own vocabulary (only T5 span corruption uses those)."""
        return getattr(self, "_base_vocab_size", self.vocab_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: pad=0, bos=1, eos=2, byte b -> b + 3, sentinels 259..358."""

    _OFFSET = 3

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.sentinel_ids = [self._OFFSET + 256 + i for i in range(NUM_SENTINELS)]
        self.vocab_size = self._OFFSET + 256 + NUM_SENTINELS
        self.fingerprint = "byte-v1"

    def encode(self, text: str) -> List[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        pieces: List[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if self._OFFSET <= i < self._OFFSET + 256:
                run.append(i - self._OFFSET)
                continue
            if i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            pieces.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            pieces.append(_sentinel_text(i, self.sentinel_ids))
        pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)


def _sentinel_text(token_id: int, sentinel_ids: Sequence[int]) -> str:
    """``<extra_id_N>`` for a sentinel id, ``<unk_ID>`` for any other id outside the vocabulary."""
    try:
        return sentinel_name(list(sentinel_ids).index(token_id))
    except ValueError:
        return f"<unk_{token_id}>"


def _file_fingerprint(kind: str, path: str) -> str:
    with open(path, "rb") as f:
        return f"{kind}-{hashlib.sha256(f.read()).hexdigest()[:16]}"


def _first_present(lookup, names: Sequence[str]) -> Optional[int]:
    for name in names:
        token_id = lookup(name)
        if token_id is not None:
            return token_id
    return None


class _FileTokenizer(Tokenizer):
    """Shared special-token and sentinel logic of the two file-backed tokenizers.

    Subclasses provide ``_base_vocab_size``, ``_token_to_id(name) -> Optional[int]``,
    ``_encode`` and ``_decode_plain`` (ids all inside the base vocabulary).
    """

    _base_vocab_size: int

    def _token_to_id(self, name: str) -> Optional[int]:
        raise NotImplementedError

    def _decode_plain(self, ids: List[int]) -> str:
        raise NotImplementedError

    def _setup_special_ids(self, path: str, eos_token: Optional[str],
                           native_eos: Optional[int] = None, native_bos: Optional[int] = None,
                           native_pad: Optional[int] = None) -> None:
        if eos_token is not None:
            eos = self._token_to_id(eos_token)
            if eos is None:
                raise ValueError(f"tokenizer.eos_token={eos_token!r} is not in the vocabulary of {path}")
        else:
            eos = native_eos if native_eos is not None else _first_present(self._token_to_id, _EOS_NAMES)
        if eos is None:
            raise ValueError(
                f"tokenizer {path} has no end-of-document token (looked for {', '.join(_EOS_NAMES)}); "
                "set tokenizer.eos_token to the name it uses")
        self.eos_id = eos
        pad = native_pad if native_pad is not None else _first_present(self._token_to_id, _PAD_NAMES)
        # Without a pad token, eos pads: padded positions never carry loss, so the id only has to exist.
        self.pad_id = eos if pad is None else pad
        bos = native_bos if native_bos is not None else _first_present(self._token_to_id, _BOS_NAMES)
        # T5 starts its decoder from pad when there is no bos, and so do we.
        self.bos_id = self.pad_id if bos is None else bos

        found = [self._token_to_id(sentinel_name(i)) for i in range(NUM_SENTINELS)]
        if all(t is not None for t in found):
            self.sentinel_ids = [int(t) for t in found]
            self.vocab_size = self._base_vocab_size
        else:
            self.sentinel_ids = [self._base_vocab_size + i for i in range(NUM_SENTINELS)]
            self.vocab_size = self._base_vocab_size + NUM_SENTINELS

    def decode(self, ids: Sequence[int]) -> str:
        specials = {self.pad_id, self.bos_id, self.eos_id}
        pieces: List[str] = []
        run: List[int] = []
        for i in ids:
            i = int(i)
            if i in specials:
                continue
            if 0 <= i < self._base_vocab_size:
                run.append(i)
                continue
            pieces.append(self._decode_plain(run))
            run = []
            pieces.append(_sentinel_text(i, self.sentinel_ids))
        pieces.append(self._decode_plain(run))
        return "".join(pieces)


class HuggingFaceTokenizer(_FileTokenizer):
    """A Hugging Face ``tokenizers`` tokenizer read from a local tokenizer.json."""

    def __init__(self, path: str, eos_token: Optional[str] = None, _built=None) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        if _built is not None:  # (tokenizers.Tokenizer, files, kind) from one of the Megatron formats below
            self._tok, files, kind = _built
            file = files[0]
            self.fingerprint = "+".join(_file_fingerprint(kind, f) for f in files)
        else:
            file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"Hugging Face tokenizer file not found: {file} (tokenizer.path must be a tokenizer.json "
                    "or a directory holding one)")
            try:
                self._tok = _HFTokenizer.from_file(file)
            except Exception as exc:  # the library raises a bare Exception with a Rust message
                raise ValueError(f"cannot read Hugging Face tokenizer {file}: {exc}") from None
            self.fingerprint = _file_fingerprint("huggingface", file)
        self._base_vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._setup_special_ids(file, eos_token)

    def _token_to_id(self, name: str) -> Optional[int]:
        return self._tok.token_to_id(name)

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Encode many texts at once (the library parallelises this)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode_plain(self, ids: List[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False) if ids else ""


class SentencePieceTokenizer(_FileTokenizer):
    """A sentencepiece model read from a local .model file."""

    def __init__(self, path: str, eos_token: Optional[str] = None) -> None:
        import sentencepiece

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"sentencepiece model not found: {path} (tokenizer.path must be a .model file)")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except Exception as exc:  # sentencepiece raises OSError/RuntimeError with its own text
            raise ValueError(f"cannot read sentencepiece model {path}: {exc}") from None
        self._base_vocab_size = self._sp.get_piece_size()
        self.fingerprint = _file_fingerprint("sentencepiece", path)

        def native(i: int) -> Optional[int]:
            return i if i >= 0 else None  # sentencepiece says -1 for a disabled special token

        self._setup_special_ids(path, eos_token, native(self._sp.eos_id()), native(self._sp.bos_id()),
                                native(self._sp.pad_id()))

    def _token_to_id(self, name: str) -> Optional[int]:
        i = self._sp.piece_to_id(name)
        # piece_to_id answers the unk id for unknown pieces; only a real unk piece may map there.
        if i == self._sp.unk_id() and name != self._sp.id_to_piece(i):
            return None
        return i

    def encode(self, text: str) -> List[int]:
        return self._sp.encode(text)

    def _decode_plain(self, ids: List[int]) -> str:
        return self._sp.decode(ids) if ids else ""


def _need_file(path: Optional[str], what: str) -> str:
    if not path:
        raise ValueError(f"{what} is not set")
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def gpt2_bpe_tokenizer(vocab: Optional[str], merges: Optional[str], eos_token: Optional[str] = None) -> Tokenizer:
    """Megatron's GPT2BPETokenizer: byte-level BPE from a GPT-2 vocab.json + merges.txt."""
    from tokenizers import Tokenizer as _HFTokenizer, decoders, models, pre_tokenizers

    vocab = _need_file(vocab, "GPT-2 BPE vocab.json (tokenizer.path)")
    merges = _need_file(merges, "GPT-2 BPE merges.txt (tokenizer.merges_path)")
    try:
        tok = _HFTokenizer(models.BPE.from_file(vocab, merges))
    except Exception as exc:  # a Rust error with its own text
        raise ValueError(f"cannot read GPT-2 BPE files {vocab} / {merges}: {exc}") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return HuggingFaceTokenizer(vocab, eos_token, _built=(tok, [vocab, merges], "gpt2_bpe"))


def wordpiece_tokenizer(vocab: Optional[str], lower_case: bool, eos_token: Optional[str] = None) -> Tokenizer:
    """Megatron's BertWordPieceCase / BertWordPieceLowerCase from a BERT vocab.txt."""
    from tokenizers import Tokenizer as _HFTokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = _need_file(vocab, "WordPiece vocab.txt (tokenizer.path)")
    try:
        tok = _HFTokenizer(models.WordPiece.from_file(vocab, unk_token="[UNK]"))
    except Exception as exc:
        raise ValueError(f"cannot read WordPiece vocabulary {vocab}: {exc}") from None
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower_case, strip_accents=lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return HuggingFaceTokenizer(vocab, eos_token, _built=(tok, [vocab], "wordpiece-lower" if lower_case else "wordpiece"))


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer that ``cfg`` describes; a missing file is one error naming the path."""
    kind = TokenizerConfig(type=cfg.type).type  # accept plain strings too, with the same message
    if kind is TokenizerType.byte:
        return ByteTokenizer()
    if kind is TokenizerType.gpt2_bpe:
        return gpt2_bpe_tokenizer(cfg.path, cfg.merges_path, cfg.eos_token)
    if kind is TokenizerType.wordpiece:
        return wordpiece_tokenizer(cfg.path, cfg.lower_case, cfg.eos_token)
    if not cfg.path:
        raise ValueError(f"tokenizer.type={kind.value} needs tokenizer.path (a local file)")
    path = os.path.expanduser(cfg.path)
    if kind is TokenizerType.huggingface:
        return HuggingFaceTokenizer(path, cfg.eos_token)
    return SentencePieceTokenizer(path, cfg.eos_token)


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raise one clear error when the model's embedding has fewer rows than the tokenizer has ids."""
    if model_vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size={model_vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} ids "
            f"({tokenizer.fingerprint}); set the model's vocab_size to at least {tokenizer.vocab_size}")
