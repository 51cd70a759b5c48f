"""The training entry: parse the recipe, build the run, train, close.

    torchrun --nproc-per-node=1 scripts/train.py --config-name gpt_pretrain model.attention_backend=local
    torchrun --nproc-per-node=2 scripts/train.py --config-name t5_pretrain train.train_steps=50
    python scripts/train.py --nproc-per-node=2 --config-name t5_pretrain train.train_steps=50

torch.distributed comes from the torchrun environment (NCCL on GPU, gloo on CPU; a plain ``python`` launch
is one process); tensor / pipeline sizes come from ``model.*``, the other ranks are data parallel.
A bad recipe, value or path prints one ``error: ...`` line and exits with status 2; a run that fails (diverged
loss, unusable checkpoint) prints one line and exits with status 1. ``BRIDGE_FULL_ERROR=1`` shows the
traceback instead. The recipe, and the global batch against the number of processes, are checked before
torch.distributed starts, so every rank of a bad launch fails at the same point.

``python scripts/train.py --nproc-per-node=N`` is the launcher mode: it checks the recipe before starting any
process, starts the N workers with torch's elastic launcher (what torchrun runs), and ends with the workers'
one line and their exit status. Under plain ``torchrun`` the line is printed once (not once per rank) and
written to torch elastic's error file, but torchrun then adds its own failure report (its ChildFailedError
traceback and a summary whose root cause quotes the line) and exits with status 1: see
``bridge/failure_report.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bridge.console import quiet_scripts  # noqa: E402
from bridge.failure_report import exit_now, one_line, report, worker_status  # noqa: E402

quiet_scripts()

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


_failed = False  # set by _fail: the process then ends with exit_now


def _fail(exc: BaseException, code: int, every_rank: bool = False) -> int:
    """Report ``exc`` in one line; the exit status (0 for a torchrun worker that leaves the failure to local rank
    0, see bridge/failure_report.py)."""
    global _failed
    if os.environ.get("BRIDGE_FULL_ERROR") == "1":
        raise exc
    import torch.distributed as dist

    _failed = True
    line = one_line(exc)
    report(line, every_rank)
    return code if dist.is_initialized() else worker_status(line, code)


def _check_here(run) -> None:
    """What ``--cfg`` adds to the schema's validation: the model's explicit backends can run on this machine."""
    from bridge.models.build_checks import check_provider_for_this_machine

    check_provider_for_this_machine(run.model)


def _lost_worker(rank: int, failure, checkpoint_dir) -> str:
    """The line for a worker that died without a word (killed by a signal): which one, and where to resume."""
    from bridge.training.checkpointing import newest_verified

    latest = newest_verified(checkpoint_dir) if checkpoint_dir else None
    resume = (f"the last complete checkpoint is {latest}: continue with checkpoint.resume=true" if latest
              else "no checkpoint was saved before it")
    return (f"worker rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}; the other workers were "
            f"stopped; {resume}")


def _check_before_start(run, world_size: int) -> None:
    """What needs only the recipe and the number of processes, checked before any process group exists: the
    global batch must split over the data-parallel ranks (the run itself settles it again with its group)."""
    from bridge.training.trainer import batch_plan

    model_parallel = run.model.tensor_model_parallel_size * run.model.pipeline_model_parallel_size
    if world_size % model_parallel == 0:  # otherwise megatron-core's own check names the sizes
        batch_plan(dataclasses.replace(run.train), world_size // model_parallel)


def _launch(nproc: int, argv, checkpoint_dir=None) -> int:
    """Launcher mode: start ``nproc`` workers of this script through torch's elastic launcher (torchrun's own
    ``run``), then return their exit status with nothing printed after their one-line error. A worker killed
    by a signal prints nothing itself: the launcher says which one died and which checkpoint to resume from."""
    import logging as _logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args as torchrun_args
    from torch.distributed.run import run as torchrun

    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # the agent's own failure report
        _logging.getLogger(name).setLevel(_logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets (and otherwise warns about)
    try:
        torchrun(torchrun_args([f"--nproc-per-node={nproc}", os.path.abspath(__file__), *argv]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:  # the worker said why itself
            return failure.exitcode
        print(f"error: {_lost_worker(rank, failure, checkpoint_dir)}", file=sys.stderr, flush=True)
        return EXIT_RUN_ERROR
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _setup_logging()
    from bridge.attention import BackendUnavailableError  # an explicit backend this machine cannot run: config
    from bridge.training import CheckpointError, TrainingDivergedError, init_distributed, shutdown_distributed, train

    launching = args.nproc_per_node is not None and "RANK" not in os.environ
    try:
        run = load_config(args.config_name, args.overrides, args.config_dir)
        if args.cfg:  # the validated config; then whether this machine can run it (exit 2 when it cannot)
            print(run_to_yaml(run), flush=True)
            _check_here(run)
            return 0
        _check_before_start(run, args.nproc_per_node if launching else int(os.environ.get("WORLD_SIZE", "1")))
        if launching:
            worker_argv = [a for i, a in enumerate(argv) if not _is_nproc_arg(argv, i)]
            return _launch(args.nproc_per_node, worker_argv, run.checkpoint.dir)
        init_distributed(run)
        train(run)
    except (ConfigError, ValueError, OSError, MemoryError, BackendUnavailableError) as exc:
        return _fail(exc, EXIT_CONFIG_ERROR)
    except (CheckpointError, TrainingDivergedError) as exc:  # the same message on every rank: rank 0 says it
        return _fail(exc, EXIT_RUN_ERROR)
    except RuntimeError as exc:
        return _fail(exc, EXIT_RUN_ERROR, every_rank=True)
    finally:
        if not launching:
            shutdown_distributed()
    return 0


def _is_nproc_arg(argv, i: int) -> bool:
    """Whether ``argv[i]`` is part of ``--nproc-per-node N`` / ``--nproc-per-node=N`` (launcher-only)."""
    arg = argv[i]
    return arg.startswith("--nproc-per-node") or (i > 0 and argv[i - 1] == "--nproc-per-node")


if __name__ == "__main__":
    status = main()
    if _failed:  # end now, so that ranks failing together exit together (bridge/failure_report.py)
        exit_now(status)
    sys.exit(status)
