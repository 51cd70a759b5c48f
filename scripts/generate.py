"""Generate text from a GPT checkpoint written by ``scripts/train.py``.

    python scripts/generate.py --checkpoint checkpoints/gpt_tiny --prompt "The " --max-new-tokens 80
    python scripts/generate.py --checkpoint checkpoints/gpt_tiny/step_0000200 --top-k 20 --temperature 0.8
    python scripts/generate.py --checkpoint checkpoints/gpt_tiny --prompt "The " --prompt "A longer prompt" --top-p 0.9 --top-k 0

The model and the tokenizer are rebuilt from the run config saved with the checkpoint. ``--top-k 1``
(the default) is greedy decoding. Several ``--prompt`` run as one batch; generation keeps a KV cache (prefill,
then one token per step; ``--no-cache`` recomputes the whole prefix every token instead). Attention runs with ``--attention-backend`` (default ``auto``: the
best backend of this machine, whatever the training run used).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bridge.console import quiet_scripts  # noqa: E402

quiet_scripts()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint.dir (its 'latest' checkpoint is used) or one step_<N> folder")
    parser.add_argument("--prompt", action="append", help="text to continue (repeat for a batch; default 'The ')")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    parser.add_argument("--top-k", type=int, default=1, help="1 = greedy; k > 1 samples from the k likeliest; 0 = all")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (top-k != 1)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the likeliest tokens up to this probability")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix for every token")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--attention-backend", default="auto", help="auto | flash | fused | local")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from bridge.training import CheckpointError, load_run_config, load_weights
    from bridge.training.generation import generate_tokens, prompt_ids
    from bridge.training.snapshot import provider_from_snapshot, tokenizer_from_snapshot

    try:
        snapshot = load_run_config(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bridge.models import family_names, family_spec

    family = snapshot.get("family", "gpt")
    if family not in family_names() or not family_spec(family).generates_text:
        texts = [name for name in family_names() if family_spec(name).generates_text]
        print(f"error: {args.checkpoint} holds a {family} model; generate.py reads checkpoints of the families that "
              f"generate text ({', '.join(texts)})", file=sys.stderr)
        return 2
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    # Generation runs on this machine with one process: no tensor / pipeline parallel, a backend that fits here.
    provider = provider_from_snapshot(
        snapshot, attention_backend=args.attention_backend, use_flash_attention=None,
        dtype="bf16" if use_cuda else "fp32", tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
        sequence_parallel=False, use_cpu_initialization=None)
    tokenizer = tokenizer_from_snapshot(snapshot)
    if provider.vocab_size < tokenizer.text_vocab_size:  # e.g. an imported model without its tokenizer files
        print(f"error: {args.checkpoint}: the model has {provider.vocab_size} token ids but its tokenizer "
              f"({tokenizer.fingerprint}) produces up to {tokenizer.text_vocab_size}", file=sys.stderr)
        return 2
    model = provider.provide().to("cuda" if use_cuda else "cpu")
    try:
        path = load_weights(args.checkpoint, model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# {path}", file=sys.stderr)
    prompts = args.prompt or ["The "]
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    try:
        outs = generate_tokens(model, ids, args.max_new_tokens, top_k=args.top_k, top_p=args.top_p,
                               temperature=args.temperature, eos_id=tokenizer.eos_id, seed=args.seed,
                               use_cache=not args.no_cache, vocab_size=tokenizer.vocab_size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for prompt, out in zip(prompts, outs):
        print(prompt + tokenizer.decode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
