"""Turn JSONL text into a megatron-core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

Each line of the input is a JSON object; its ``--json-key`` field (``text`` by default) becomes
one document, tokenized, with the tokenizer's eos (EOD) appended. List the prefix in
``data.paths`` to train on it, with the same tokenizer settings::

    python scripts/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type huggingface --tokenizer-path tokenizer.json
    torchrun ... scripts/train.py --config-name gpt_pretrain data.paths=[data/corpus] \\
        tokenizer.type=huggingface tokenizer.path=tokenizer.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bridge.console import quiet_scripts  # noqa: E402

quiet_scripts()  # megatron-core's notices about TE / Apex (imported by bridge.data's megatron dataset helpers)

from bridge.data.indexed import load_indexed_dataset_module, write_indexed_dataset  # noqa: E402
from bridge.data.jsonl import read_jsonl_texts  # noqa: E402
from bridge.data.tokenizers import TokenizerConfig, TokenizerType, build_tokenizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, nargs="+", help="JSONL file(s), read in the order given")
    parser.add_argument("--output-prefix", required=True,
                        help="writes PREFIX.bin, PREFIX.idx (and PREFIX.tokenizer.json)")
    parser.add_argument("--json-key", default="text", help="field of each JSON line holding the text (default: text)")
    parser.add_argument("--tokenizer-type", default="byte", choices=[t.value for t in TokenizerType],
                        help="tokenizer kind (default: byte, needs no file)")
    parser.add_argument("--tokenizer-path", default=None,
                        help="tokenizer.json (or its folder) for huggingface, .model for sentencepiece")
    parser.add_argument("--eos-token", default=None,
                        help="end-of-document token name when the tokenizer's is not a usual one")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        tokenizer = build_tokenizer(TokenizerConfig(type=args.tokenizer_type, path=args.tokenizer_path,
                                                    eos_token=args.eos_token))
        missing = [p for p in args.input if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"input file not found: {missing[0]}")
        load_indexed_dataset_module()  # import megatron-core before the clock starts
        start = time.perf_counter()
        texts = itertools.chain.from_iterable(read_jsonl_texts(p, args.json_key) for p in args.input)
        stats = write_indexed_dataset(texts, tokenizer, args.output_prefix)
    except (OSError, ValueError) as exc:
        print(f"preprocess_data: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"wrote {args.output_prefix}.bin/.idx: {stats.documents} documents, {stats.tokens} tokens "
          f"({stats.skipped_empty} empty skipped), tokenizer {tokenizer.fingerprint} vocab {tokenizer.vocab_size}, "
          f"{stats.tokens / max(seconds, 1e-9):,.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
