"""The training entry: parse the recipe, build the run, train, close.

    torchrun --nproc-per-node=1 scripts/train.py --config-name gpt_pretrain model.attention_backend=local
    torchrun --nproc-per-node=2 scripts/train.py --config-name t5_pretrain train.train_steps=50

torch.distributed comes from the torchrun environment (NCCL on GPU, gloo on CPU; a plain ``python`` launch
is one process); tensor / pipeline sizes come from ``model.*``, the other ranks are data parallel.
A bad recipe or value prints one ``error: ...`` line and exits with status 2; a run that fails (diverged
loss, unusable checkpoint) prints one line and exits with status 1. ``BRIDGE_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# megatron-core warns that TE / Apex are absent (bridge does not use them, see docs/backends.md) and about a
# CUDA-graph default it sets itself; neither is something a user can act on.
for _message in ("Transformer Engine and Apex are not installed", "Apex is not installed", "full scope is deprecated"):
    warnings.filterwarnings("ignore", message=_message)
# torch.distributed.checkpoint's deprecation notices about APIs megatron-core's loader calls, not ours.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch\.distributed\.checkpoint|megatron\.core)")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bridge.recipes import ConfigError, load_config  # noqa: E402
from bridge.recipes.cli import parse_args, run_to_yaml  # noqa: E402

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ERROR = 1


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _setup_logging() -> None:
    """bridge's own log lines (deprecations, resume, ...) on rank 0; megatron-core's info chatter stays off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    bridge_logger = logging.getLogger("bridge")
    bridge_logger.addHandler(handler)
    bridge_logger.setLevel(logging.INFO if _rank() == 0 else logging.WARNING)
    bridge_logger.propagate = False


def _fail(exc: BaseException, code: int, every_rank: bool = False) -> int:
    if os.environ.get("BRIDGE_FULL_ERROR") == "1":
        raise exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if every_rank or _rank() == 0:
        where = f"[rank {_rank()}] " if every_rank and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{where}error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    _setup_logging()
    from bridge.training import CheckpointError, TrainingDivergedError, init_distributed, shutdown_distributed, train

    try:
        run = load_config(args.config_name, args.overrides, args.config_dir)
        if args.cfg:
            print(run_to_yaml(run))
            return 0
        init_distributed(run)
        train(run)
    except (ConfigError, ValueError) as exc:
        return _fail(exc, EXIT_CONFIG_ERROR)
    except (CheckpointError, TrainingDivergedError, RuntimeError) as exc:
        return _fail(exc, EXIT_RUN_ERROR, every_rank=True)
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
