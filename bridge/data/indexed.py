"""megatron-core indexed datasets (``prefix.bin`` + ``prefix.idx``): writing, opening, reading.

All pretraining data is read through megatron-core's ``IndexedDataset``; whatever the source
(``scripts/preprocess_data.py`` on JSONL, or the embedded corpus), it is written by
:func:`write_indexed_dataset` with megatron-core's ``IndexedDatasetBuilder``: one document per
text, EOD (the tokenizer's eos) appended.

Next to the two files we write ``prefix.tokenizer.json`` naming the tokenizer's fingerprint and
vocabulary size, so reading the data with a different tokenizer is a clear error instead of
silent garbage. Files made by other tools (without that sidecar) are read as they are.

:class:`TokenStream` presents a range of documents of one or more datasets as one long token
stream, which is how GPT and T5 pretraining samples cross document boundaries (as Megatron's
GPT dataset does).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Iterable, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np

from bridge.data.tokenizers import Tokenizer


class WriteStats(NamedTuple):
    """What :func:`write_indexed_dataset` wrote."""

    documents: int
    tokens: int
    skipped_empty: int


def load_indexed_dataset_module():
    """megatron-core's ``indexed_dataset`` module."""
    # Imported lazily: importing megatron.core is slow and warns about optional packages.
    from megatron.core.datasets import indexed_dataset

    return indexed_dataset


def sidecar_path(prefix: str) -> str:
    """Path of the JSON file recording which tokenizer wrote ``prefix``."""
    return prefix + ".tokenizer.json"


def token_dtype(vocab_size: int) -> type:
    """Smallest numpy dtype that holds every id: uint16 up to 65536 ids, else int32."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _encoded(texts: Iterable[str], tokenizer: Tokenizer, batch: int = 1024) -> Iterator[List[int]]:
    """Token ids of each text, in order; batched when the tokenizer can encode in parallel."""
    encode_batch = getattr(tokenizer, "encode_batch", None)
    if encode_batch is None:
        yield from (tokenizer.encode(t) if t else [] for t in texts)
        return
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, batch)):
        yield from encode_batch(chunk)


def write_indexed_dataset(texts: Iterable[str], tokenizer: Tokenizer, prefix: str) -> WriteStats:
    """Tokenize ``texts`` (one document each, eos appended) into ``prefix.bin``/``prefix.idx``.

    Empty texts are skipped. The files are written under temporary names and renamed at the end,
    so an interrupted run leaves no dataset that looks complete.
    """
    indexed = load_indexed_dataset_module()
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{prefix}.tmp{os.getpid()}"
    builder = indexed.IndexedDatasetBuilder(indexed.get_bin_path(tmp), dtype=token_dtype(tokenizer.vocab_size))
    documents = tokens = skipped = 0
    import torch  # the builder takes tensors

    try:
        for ids in _encoded(texts, tokenizer):
            if not ids:
                skipped += 1
                continue
            ids.append(tokenizer.eos_id)
            builder.add_item(torch.tensor(ids, dtype=torch.int64))
            builder.end_document()
            documents += 1
            tokens += len(ids)
        builder.finalize(indexed.get_idx_path(tmp))
        if documents == 0:
            raise ValueError(f"no non-empty text to write to {prefix} ({skipped} empty texts)")
    except BaseException:
        builder.data_file.close()
        for path in (indexed.get_bin_path(tmp), indexed.get_idx_path(tmp)):
            if os.path.exists(path):
                os.remove(path)
        raise
    with open(sidecar_path(tmp), "w") as f:
        json.dump({"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size}, f)
    # The .idx goes last: readers test for it, so a dataset never looks complete before it is.
    os.replace(indexed.get_bin_path(tmp), indexed.get_bin_path(prefix))
    os.replace(sidecar_path(tmp), sidecar_path(prefix))
    os.replace(indexed.get_idx_path(tmp), indexed.get_idx_path(prefix))
    return WriteStats(documents, tokens, skipped)


def indexed_dataset_exists(prefix: str) -> bool:
    """Whether both ``prefix.bin`` and ``prefix.idx`` exist."""
    return os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")


def open_indexed_dataset(prefix: str, tokenizer: Tokenizer):
    """megatron-core ``IndexedDataset`` at ``prefix``, checked against ``tokenizer``.

    Missing files, data written by another tokenizer, or ids outside the tokenizer's vocabulary
    (when recorded) are each one error naming the prefix. The arrays it returns view its memory
    map: keep the dataset referenced while using them (megatron-core unmaps on deletion).
    """
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"indexed dataset {prefix!r} is incomplete: missing {', '.join(missing)} "
            "(data.paths lists prefixes without the .bin/.idx suffix; make them with scripts/preprocess_data.py)")
    written_by = None
    if os.path.isfile(sidecar_path(prefix)):
        try:
            with open(sidecar_path(prefix)) as f:
                written_by = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{sidecar_path(prefix)} is not valid JSON ({exc}); delete it or preprocess the data "
                             "again") from None
        if written_by.get("fingerprint") != tokenizer.fingerprint:
            raise ValueError(
                f"indexed dataset {prefix!r} was tokenized with {written_by.get('fingerprint')} "
                f"(vocab {written_by.get('vocab_size')}), but training uses {tokenizer.fingerprint} "
                f"(vocab {tokenizer.vocab_size}); preprocess it again with the training tokenizer")
    try:
        dataset = load_indexed_dataset_module().IndexedDataset(prefix, mmap=True)
    except Exception as exc:  # megatron-core asserts on a bad header, numpy fails on a short index
        raise ValueError(f"indexed dataset {prefix!r} cannot be read ({type(exc).__name__}: {exc}); the .idx is "
                         "damaged or not megatron's format: make it again with scripts/preprocess_data.py") from None
    _check_contents(prefix, dataset, tokenizer, ids_known_to_fit=written_by is not None)
    return dataset


def _check_contents(prefix: str, dataset, tokenizer: Tokenizer, ids_known_to_fit: bool) -> None:
    """The .bin holds what the .idx points at, and (for files made by other tools) every id fits the vocabulary."""
    index = dataset.index
    bin_path = prefix + ".bin"
    size = os.path.getsize(bin_path)
    if len(index.sequence_lengths):
        needed = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * index.dtype_size
        if needed > size:
            raise ValueError(f"{bin_path} has {size} bytes but its .idx points up to byte {needed}: the data is "
                             "truncated or belongs to another .idx; make it again with scripts/preprocess_data.py")
    if ids_known_to_fit or size == 0:
        return
    tokens = np.memmap(bin_path, dtype=index.dtype, mode="r")
    largest = int(tokens.max())
    if largest >= tokenizer.vocab_size:
        raise ValueError(f"indexed dataset {prefix!r} holds token id {largest}, beyond the tokenizer's vocabulary "
                         f"({tokenizer.vocab_size} ids): it was made with another tokenizer; preprocess it again "
                         "with the training tokenizer")


def document_split(num_docs: int, weights: Sequence[float]) -> List[Tuple[int, int]]:
    """Contiguous ``[start, end)`` document ranges in proportion to ``weights`` (Megatron's rule).

    Every split with a positive weight gets at least one document when there are enough.
    """
    total = float(sum(weights))
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(num_docs * w / total)))
    bounds[-1] = num_docs
    # Give empty positive-weight splits one document taken from their left neighbour.
    for i in range(len(weights) - 1, 0, -1):
        if weights[i] > 0 and bounds[i + 1] - bounds[i] == 0 and bounds[i] > 0:
            bounds[i] -= 1
    for i in range(1, len(bounds)):
        bounds[i] = max(bounds[i], bounds[i - 1])
    return [(bounds[i], bounds[i + 1]) for i in range(len(weights))]


class TokenStream:
    """Documents ``[start, end)`` of several indexed datasets, read as one token stream.

    Only the per-document cumulative lengths are kept in memory (8 bytes a document); tokens are
    read from the memory-mapped .bin on demand.
    """

    def __init__(self, parts: Sequence[Tuple[object, int, int]]) -> None:
        """``parts``: ``(IndexedDataset, first_doc, end_doc)`` triples, concatenated in order."""
        self._datasets = [p[0] for p in parts]
        owners, local_ids, lengths = [], [], []
        for k, (dataset, start, end) in enumerate(parts):
            doc_bounds = dataset.document_indices
            # A document is a run of sequences; ours have one sequence each, other tools may not.
            seq_start, seq_end = doc_bounds[start], doc_bounds[end]
            seq_lengths = dataset.sequence_lengths[seq_start:seq_end].astype(np.int64)
            owners.append(np.full(len(seq_lengths), k, dtype=np.int32))
            local_ids.append(np.arange(seq_start, seq_end, dtype=np.int64))
            lengths.append(seq_lengths)
        self._owner = np.concatenate(owners) if owners else np.zeros(0, np.int32)
        self._local = np.concatenate(local_ids) if local_ids else np.zeros(0, np.int64)
        self._starts = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
        self.num_documents = sum(end - start for _, start, end in parts)

    @property
    def num_tokens(self) -> int:
        """Total tokens in the stream."""
        return int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream as int64, crossing documents freely."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"token range [{start}, {start + length}) outside stream of {self.num_tokens}")
        out = np.empty(length, dtype=np.int64)
        seq = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self._starts[seq])
            take = min(length - done, int(self._starts[seq + 1]) - start - done)
            dataset = self._datasets[self._owner[seq]]
            out[done:done + take] = dataset.get(int(self._local[seq]), offset=offset, length=take)
            done += take
            seq += 1
        return out
