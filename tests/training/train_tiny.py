"""Run the tiny GPT / T5 from a command line (torchrun, kill tests, the GPU check); writes a JSON result.

    torchrun --nproc-per-node=2 tests/training/train_tiny.py --family gpt --steps 6 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="gpt", choices=("gpt", "t5"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ckpt-dir", default=None)
    parser.add_argument("--save-interval", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--backend", default="auto", help="model.attention_backend")
    parser.add_argument("--full-tiny", action="store_true", help="the gpt_tiny preset as shipped (seq 256, 4 layers)")
    parser.add_argument("--heads", type=int, default=None, help="override num_attention_heads (--full-tiny)")
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--resume", action="store_true", help="checkpoint.resume=true")
    parser.add_argument("--pid-file", default=None, help="write this rank's process id to <pid-file>.<rank>")
    parser.add_argument("--hang-in-save", type=int, default=0,
                        help="block inside the writer of this save (1-based), for the kill -9 test")
    args = parser.parse_args()

    from runs import tiny_run
    from bridge.models import get_preset
    from bridge.training import CheckpointConfig, shutdown_distributed, train

    if args.hang_in_save:
        _hang_in_save(args.hang_in_save, args.out + ".saving")
    run = tiny_run(args.family, steps=args.steps, cache_dir=args.cache_dir, device=args.device,
                   micro_batch_size=args.micro, global_batch_size=args.global_batch, log_interval=10,
                   precision="auto", model_overrides={"attention_backend": args.backend})
    if args.full_tiny:
        heads = {"num_attention_heads": args.heads} if args.heads else {}
        run.model = get_preset("gpt_tiny", attention_backend=args.backend, **heads)
    run.checkpoint = CheckpointConfig(dir=args.ckpt_dir, save_interval=args.save_interval, keep_last=0,
                                      resume=args.resume)
    if args.pid_file:
        with open(f"{args.pid_file}.{os.environ.get('RANK', '0')}", "w") as f:
            f.write(str(os.getpid()))
    start = time.time()
    result = train(run)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump({"losses": result.losses, "valid_loss": result.valid_loss, "checkpoint": result.checkpoint,
                       "tokens_per_second": result.tokens_per_second, "tflops_per_gpu": result.tflops_per_gpu,
                       "mfu": result.mfu, "attention_backends": result.attention_backends, "seconds": time.time() - start,
                       "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, f)
    shutdown_distributed()


def _hang_in_save(which: int, marker: str) -> None:
    """Make the ``which``-th checkpoint write block after writing part of its data (then wait to be killed)."""
    import torch.distributed.checkpoint as dcp

    original = dcp.FileSystemWriter.write_data
    calls = {"n": 0}

    def write_data(self, plan, planner):
        calls["n"] += 1
        result = original(self, plan, planner)
        if calls["n"] == which:
            open(marker, "w").close()
            time.sleep(600)
        return result

    dcp.FileSystemWriter.write_data = write_data


if __name__ == "__main__":
    main()
