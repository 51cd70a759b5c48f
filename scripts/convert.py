"""Convert between Hugging Face model directories and this project's checkpoints.

    python scripts/convert.py import --hf-dir gpt2_dir --output checkpoints/gpt2_imported
    python scripts/convert.py export --checkpoint outputs/gpt_finetune/checkpoints --hf-dir gpt2_finetuned

``import`` reads a directory written by ``save_pretrained`` (config.json + safetensors; GPT-2, Llama /
Mistral / Qwen2, T5) and writes a weights-only checkpoint that ``scripts/generate.py`` and ``export`` read.
To fine-tune from a Hugging Face directory, pass it to a recipe directly:
``checkpoint.pretrained_checkpoint=hf:<dir>``. ``export`` rebuilds the model of a training checkpoint and
writes config.json, model.safetensors and the run's tokenizer files to a new directory that
``transformers``' ``from_pretrained`` loads. Errors are one line naming the tensor or setting at fault.
Needs the ``hf`` extra: pip install -e ".[hf]".
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bridge.console import quiet_scripts  # noqa: E402

quiet_scripts()  # megatron-core's notices about TE / Apex, which bridge does not use


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="Hugging Face directory -> bridge checkpoint")
    imp.add_argument("--hf-dir", required=True, help="directory written by save_pretrained")
    imp.add_argument("--output", required=True, help="new checkpoint directory (must not exist or be empty)")
    imp.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16: dtype of the saved weights")
    exp = commands.add_parser("export", help="bridge checkpoint -> Hugging Face directory")
    exp.add_argument("--checkpoint", required=True, help="a checkpoint.dir (its latest checkpoint) or a step_<N> folder")
    exp.add_argument("--hf-dir", required=True, help="new output directory (must not exist or be empty)")
    for sub in (imp, exp):
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    from bridge.interop.hf import import_hf
    from bridge.training.hf_checkpoints import export_checkpoint, save_imported

    progress = not args.no_progress
    if args.command == "import":
        provider, model = import_hf(args.hf_dir, progress=progress, attention_backend="local", dtype=args.dtype,
                                    use_cpu_initialization=True)
        path = save_imported(model, provider, args.hf_dir, args.output)
        return f"imported {args.hf_dir} ({type(provider).__name__}, {provider.num_layers} layers) into {path}"
    files = export_checkpoint(args.checkpoint, args.hf_dir, progress=progress)
    return f"exported {args.checkpoint} to {args.hf_dir}: {', '.join(files)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from bridge.interop.hf import HFConversionError
    from bridge.training import CheckpointError

    try:
        print(run(args))
    except (HFConversionError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
