"""Kill a training run at random moments (``kill -9``) and check that nothing was lost and resume stays exact.

    python scripts/kill_at_random.py --kills 24 --slow-fs-ms 40 --workdir /tmp/kill_harness

One uninterrupted reference run of the tiny GPT (dropout on, a checkpoint every 2 steps, ``keep_last=2``)
records the loss of every step. Then the same run is started again and again with ``checkpoint.resume=true``
into one folder, each time killed with SIGKILL: at a random moment, or while it is inside a save (writing
shards), moving a finished save into place (or a re-saved step's old copy out of the way: a run killed after
that rename but before it moved ``latest`` re-saves the step when resumed), or pruning old checkpoints. The file system is slowed down
(every shard write, rename and deletion sleeps ``--slow-fs-ms``) so that those windows are wide. After every
kill the folder is checked: ``latest`` names a step folder whose files match its manifest, and no step folder
that looks complete is damaged. At the end a last run finishes the job and the loss of every step, from every
run that reached it, must equal the reference bit for bit (same data, weights, optimizer, dropout RNG).

Prints one line per kill and a summary; exits 1 when any check failed. ``tests/training/test_kill_harness.py``
runs a few kills of it in the slow test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PHASES = ("random", "save", "swap", "prune")


def run_overrides(args, ckpt_dir: str) -> list:
    return [
        "model=gpt_tiny", "model.num_layers=2", "model.seq_length=64", "model.hidden_dropout=0.1",
        f"train.train_steps={args.steps}", "train.micro_batch_size=4", "train.global_batch_size=8",
        "train.eval_interval=0", "train.eval_steps=2", "train.log_interval=1", "train.device=cpu",
        "train.generate_sample=false", "scheduler.warmup_steps=2", f"data.cache_dir={args.workdir}/cache",
        f"checkpoint.dir={ckpt_dir}", "checkpoint.save_interval=2", "checkpoint.keep_last=2",
        "logging.progress_bar=false", "logging.tensorboard_dir=null",
    ]


# -- the worker: scripts/train.py with a slowed file system and phase markers -------------------------------------
def worker(argv) -> int:
    """Run ``scripts/train.py`` in this process with every checkpoint file operation slowed and announced."""
    delay = float(os.environ["KILL_HARNESS_DELAY_MS"]) / 1000
    phase_file, loss_file = os.environ["KILL_HARNESS_PHASE"], os.environ["KILL_HARNESS_LOSSES"]

    def announce(phase: str) -> None:
        with open(phase_file, "a") as f:
            f.write(phase + "\n")

    import torch.distributed.checkpoint as dcp

    write_data = dcp.FileSystemWriter.write_data

    def slow_write_data(self, plan, planner):
        announce("save")
        time.sleep(delay)
        result = write_data(self, plan, planner)
        time.sleep(delay)
        return result

    dcp.FileSystemWriter.write_data = slow_write_data
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def slow_replace(src, dst, *a, **k):  # a completed save moving into place (and an old copy out of the way)
        if os.path.basename(str(src)).startswith(".tmp_step_") or os.path.basename(str(dst)).startswith(".old_step_"):
            announce("swap")
        time.sleep(delay)
        result = real_replace(src, dst, *a, **k)
        time.sleep(delay)  # wide window between the rename and the next step (e.g. writing 'latest')
        return result

    def slow_rmtree(path, *a, **k):  # file by file, so a kill lands in the middle of a deletion
        if os.path.basename(str(path)).startswith(".trash_step_"):
            announce("prune")
        if os.path.isdir(path):
            for base, _, files in os.walk(path):
                for name in files:
                    time.sleep(delay / 4)
                    try:
                        os.unlink(os.path.join(base, name))
                    except OSError:
                        pass
        return real_rmtree(path, *a, **k)

    os.replace, shutil.rmtree = slow_replace, slow_rmtree

    from bridge.training import reporting

    metrics = reporting.Reporter.metrics

    def record(self, step, values, prefix="train"):
        if prefix == "train":
            with open(loss_file, "a") as f:
                f.write(json.dumps({"step": step, "loss": values["loss"]}) + "\n")
        return metrics(self, step, values, prefix)

    reporting.Reporter.metrics = record
    sys.path.insert(0, HERE)
    import train as train_script

    return train_script.main(argv)


# -- the orchestrator ---------------------------------------------------------------------------------------------
def _start(args, ckpt_dir: str, mode: str, tag: str):
    """Start a worker: ``mode`` is fresh (the reference run) or resume."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]), KILL_HARNESS_DELAY_MS=str(args.slow_fs_ms),
               KILL_HARNESS_PHASE=os.path.join(args.workdir, f"{tag}.phase"),
               KILL_HARNESS_LOSSES=os.path.join(args.workdir, f"{tag}.losses"))
    for name in ("KILL_HARNESS_PHASE", "KILL_HARNESS_LOSSES"):
        if os.path.exists(env[name]):
            os.remove(env[name])
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--config-name", "gpt_pretrain",
           *run_overrides(args, ckpt_dir), f"checkpoint.resume={'true' if mode == 'resume' else 'false'}"]
    log = open(os.path.join(args.workdir, f"{tag}.log"), "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), env


def _phases(env) -> list:
    try:
        with open(env["KILL_HARNESS_PHASE"]) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _losses(env) -> dict:
    out = {}
    try:
        with open(env["KILL_HARNESS_LOSSES"]) as f:
            for line in f:
                record = json.loads(line)
                out[record["step"]] = record["loss"]
    except FileNotFoundError:
        pass
    return out


def check_folder(ckpt_dir: str) -> list:
    """Problems of ``ckpt_dir`` after a kill (empty when it is sound)."""
    from bridge.training.checkpoint_manifest import read_manifest, verified
    from bridge.training.checkpointing import list_steps, newest_verified, read_latest

    problems = []
    steps = list_steps(ckpt_dir)
    try:
        latest = read_latest(ckpt_dir)
    except Exception as exc:  # noqa: BLE001 - a harness reports every kind of failure
        return [f"latest unreadable: {exc}"]
    if latest is None:
        # A kill between a first save's rename and the write of 'latest' leaves a complete step folder and no
        # 'latest': sound, because resume then takes the newest step whose files match its manifest.
        if steps and newest_verified(ckpt_dir) is None:
            problems.append(f"step folders {steps} but no latest and none of them complete")
        return problems
    target = os.path.join(ckpt_dir, latest)
    spares = [p for p in (os.path.join(ckpt_dir, ".tmp_" + latest), os.path.join(ckpt_dir, ".old_" + latest))
              if verified(p)]
    if not os.path.isdir(target) and not spares:
        problems.append(f"latest names {latest}, which is missing, and no complete copy exists")
    elif os.path.isdir(target) and not verified(target):
        problems.append(f"latest names {latest}, whose files do not match its manifest")
    for _, name in steps:
        folder = os.path.join(ckpt_dir, name)
        if read_manifest(folder) is not None and not verified(folder):
            problems.append(f"{name} has a manifest but damaged files")
    return problems


def orchestrate(args) -> int:
    sys.path.insert(0, REPO)
    from bridge.console import quiet_scripts

    quiet_scripts()  # this process reads checkpoints (check_folder), which imports megatron-core
    os.makedirs(args.workdir, exist_ok=True)
    rng = random.Random(args.seed)
    ref_dir, ckpt_dir = os.path.join(args.workdir, "reference"), os.path.join(args.workdir, "ckpt")
    for folder in (ref_dir, ckpt_dir):
        shutil.rmtree(folder, ignore_errors=True)

    start = time.time()
    proc, env = _start(args, ref_dir, "fresh", tag="reference")
    if proc.wait() != 0:
        print(f"reference run failed: see {args.workdir}/reference.log")
        return 1
    reference, run_seconds = _losses(env), time.time() - start
    print(f"reference: {len(reference)} steps in {run_seconds:.0f} s", flush=True)

    failures, kills, seen = [], 0, {}
    attempt = 0
    while kills < args.kills and attempt < args.kills * 4:
        attempt += 1
        phase = PHASES[kills % len(PHASES)] if args.cycle_phases else rng.choice(PHASES)
        proc, env = _start(args, ckpt_dir, "resume", tag=f"run{attempt:03d}")
        deadline = time.time() + (rng.uniform(0.3, 1.0) * run_seconds if phase == "random" else run_seconds * 3)
        killed_in = None
        while proc.poll() is None and time.time() < deadline:
            if phase != "random" and phase in _phases(env):
                time.sleep(rng.uniform(0, args.slow_fs_ms / 1000))
                killed_in = phase
                break
            time.sleep(0.02)
        if proc.poll() is None and (phase == "random" or killed_in):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            outcome = f"killed ({killed_in or 'at random'})"
        else:
            proc.wait()
            outcome = f"ended by itself (exit {proc.returncode}) before reaching '{phase}'"
            if proc.returncode != 0:
                failures.append(f"run {attempt} failed with exit {proc.returncode}: see {args.workdir}/run{attempt:03d}.log")
        for step, loss in _losses(env).items():
            seen.setdefault(step, []).append(loss)
        problems = check_folder(ckpt_dir)
        failures += [f"after run {attempt}: {p}" for p in problems]
        print(f"run {attempt:3d}: {outcome}; folder {'ok' if not problems else problems}", flush=True)
        if proc.returncode == 0 and phase != "random" and not killed_in:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: start over so later runs have work to kill

    proc, env = _start(args, ckpt_dir, "resume", tag="final")
    if proc.wait() != 0:
        failures.append(f"final resume failed: see {args.workdir}/final.log")
    for step, loss in _losses(env).items():
        seen.setdefault(step, []).append(loss)
    mismatched = sorted(step for step, losses in seen.items() if any(x != reference.get(step) for x in losses))
    if mismatched:
        failures.append(f"losses differ from the uninterrupted run at steps {mismatched}")
    print(f"summary: {kills} kills in {attempt} runs; {sum(len(v) for v in seen.values())} step losses compared "
          f"with the reference, {len(mismatched)} differ; {len(failures)} problem(s)")
    for failure in failures:
        print(f"  problem: {failure}")
    return 1 if failures else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the run (default 12)")
    parser.add_argument("--slow-fs-ms", type=float, default=40.0, help="delay of every checkpoint file operation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--cycle-phases", action="store_true", help="kill in random/save/swap/prune in turn")
    parser.add_argument("--workdir", default="outputs/kill_harness", help="scratch folder (replaced)")
    return orchestrate(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
