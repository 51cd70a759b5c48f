"""Scale-out runs on one multi-GPU host: each suite trains through ``scripts/train.py`` at several layouts and
writes one JSON with every command, its logged losses, tokens/s, model TFLOP/s per GPU and MFU.

    python scripts/bench_scaling.py dp         # GPT-1.3B, s=2048, bf16, flash: data parallel 1 / 2 / 4 / 8
    python scripts/bench_scaling.py tp         # llama_1b shape and a 6.7B GPT: tensor parallel 2 / 4 / 8 + SP
    python scripts/bench_scaling.py pp         # the same models: pipeline parallel 2 / 4 with virtual stages
    python scripts/bench_scaling.py reshard    # save at TP=2 x PP=2, resume at TP=4 and at data parallel 4
    python scripts/bench_scaling.py t5         # t5_base, flash encoder / fused decoder: DP=8, TP=2 x DP=4
    python scripts/bench_scaling.py kill       # kill one of 8 workers mid-run, then resume its checkpoint
    python scripts/bench_scaling.py smoke      # the tiny GPT on 1 and 2 CPU processes (checks this script)
    python scripts/bench_scaling.py tp --dry-run            # print the commands only
    python scripts/bench_scaling.py tp --max-gpus 4         # only the layouts that fit 4 GPUs
    python scripts/bench_scaling.py --table benchmarks/results/scaling_dp.json   # a Markdown table of a result

Every run launches ``python scripts/train.py --nproc-per-node=N`` (torch's elastic launcher) and its log goes
to ``<work-dir>/<run>.log``. Runs whose losses are compared start from the same weights: the suite's first run
of a model (``*_init``, one short step at the smallest layout that fits) saves them, the others load them as
``checkpoint.pretrained_checkpoint`` (resharded to their layout; ``make_vocab_size_divisible_by`` is set so that
every tensor-parallel size pads the vocabulary to the same rows). tokens/s, TFLOP/s and MFU are the trainer's own
figures, averaged over the logged windows after the first (which pays for warm-up). The JSON goes to
``benchmarks/results/scaling_<suite>.json`` unless ``--out`` says otherwise; nothing is written for a dry run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "scripts", "train.py")
SUITES = ("dp", "tp", "pp", "reshard", "t5", "kill", "smoke")
VOCAB_ROWS = 1024
"""Every layout pads the vocabulary to a multiple of this (make_vocab_size_divisible_by = VOCAB_ROWS / TP), so a
checkpoint of one tensor-parallel size loads at any other."""

_COMMON = ("train.eval_interval=1000", "train.eval_steps=8", "train.generate_sample=false",
           "logging.progress_bar=false", "logging.tensorboard_dir=null", "scheduler.warmup_steps=5")
GPT_1P3B = ("--config-name", "gpt_pretrain", "model=gpt_1p3b", "model.seq_length=2048",
            "model.attention_backend=flash")
LLAMA_1B = ("--config-name", "gpt_pretrain", "model=llama_1b", "model.seq_length=2048",
            "model.attention_backend=flash")
GPT_6P7B = ("--config-name", "gpt_pretrain", "model=gpt_1p3b", "model.seq_length=2048", "model.num_layers=32",
            "model.hidden_size=4096", "model.num_attention_heads=32", "model.attention_backend=flash")
"""GPT-3 6.7B shape (32 layers, width 4096, 32 heads of 128): its bf16 weights, fp32 main weights, gradients and
Adam state take about 120 GB, so with activations it does not train on one 141 GB GPU."""
T5_BASE = ("--config-name", "t5_pretrain", "model=t5_base", "model.encoder_attention_backend=flash",
           "model.decoder_attention_backend=fused", "model.hidden_dropout=0.0")
TINY_CPU = ("--config-name", "gpt_pretrain", "train.device=cpu", "model.num_layers=2", "model.seq_length=64",
            "model.attention_backend=local", "train.micro_batch_size=4")


@dataclass(frozen=True)
class Run:
    """One launch of scripts/train.py."""

    name: str
    gpus: int
    """Processes (GPUs, or CPU processes for the smoke suite)."""
    args: Tuple[str, ...]
    """Recipe and overrides, without the checkpoint folder (the suite's work dir provides it)."""
    compare_to: Optional[str] = None
    """Run whose logged losses this one should follow (same weights, data and global batch)."""
    start_from: Optional[str] = None
    """Run whose final checkpoint this one loads as its initial weights (checkpoint.pretrained_checkpoint)."""
    resume_from: Optional[Tuple[str, int]] = None
    """(run, step): resume that run's checkpoint of that step (a copy whose 'latest' names it)."""
    steps_after_resume: Optional[int] = None
    """With ``resume_from``: train this many steps past the resumed step (else the args' train.train_steps)."""
    kill_rank: Optional[int] = None
    """Kill this worker with SIGKILL once the run's first checkpoint exists."""


def _layout(tp: int = 1, pp: int = 1, vp: Optional[int] = None, sp: bool = False) -> Tuple[str, ...]:
    out = [f"model.tensor_model_parallel_size={tp}", f"model.pipeline_model_parallel_size={pp}",
           f"model.make_vocab_size_divisible_by={VOCAB_ROWS // tp}"]
    if vp:
        out.append(f"model.virtual_pipeline_model_parallel_size={vp}")
    if sp:
        out.append("model.sequence_parallel=true")
    return tuple(out)


def _training(steps: int, micro: int, global_batch: int, log_interval: int = 5) -> Tuple[str, ...]:
    return (f"train.train_steps={steps}", f"train.micro_batch_size={micro}", f"train.global_batch_size={global_batch}",
            f"train.log_interval={log_interval}", *_COMMON)


def _model_parallel_suite(pipeline: bool) -> List[Run]:
    """llama_1b shape (baseline: 1 GPU) and GPT 6.7B (baseline: TP=2, the smallest layout that fits), 50 steps
    each from the same weights; tensor parallel with sequence parallel, or pipeline with virtual stages."""
    runs = []
    for model, base_args, base_tp, micro, batch in (("llama_1b", LLAMA_1B, 1, 4, 32), ("gpt_6p7b", GPT_6P7B, 2, 1, 16)):
        train = _training(50, micro, batch)
        init = f"{model}_init"
        base = f"{model}_tp{base_tp}"
        runs.append(Run(init, base_tp, base_args + _layout(tp=base_tp) + _training(1, micro, batch, 1)))
        runs.append(Run(base, base_tp, base_args + _layout(tp=base_tp, sp=base_tp > 1) + train, start_from=init))
        if pipeline:
            for pp in (2, 4):
                runs.append(Run(f"{model}_pp{pp}_vp2", pp, base_args + _layout(pp=pp, vp=2) + train,
                                compare_to=base, start_from=init))
        else:
            for tp in (2, 4, 8):
                if tp != base_tp:
                    runs.append(Run(f"{model}_tp{tp}_sp", tp, base_args + _layout(tp=tp, sp=True) + train,
                                    compare_to=base, start_from=init))
    return runs


def suite_runs(suite: str) -> List[Run]:
    """The runs of ``suite``, in launch order."""
    if suite == "dp":  # weak scaling: 8 samples of 2048 tokens per GPU and step
        dp_overrides = ("optimizer.use_distributed_optimizer=true", "optimizer.overlap_grad_reduce=true")
        return [Run(f"dp{n}", n, GPT_1P3B + dp_overrides + _training(30, 8, 8 * n, 10)) for n in (1, 2, 4, 8)]
    if suite in ("tp", "pp"):
        return _model_parallel_suite(pipeline=suite == "pp")
    if suite == "reshard":
        train = _training(40, 4, 32)
        saved = ("checkpoint.save_interval=20", "checkpoint.keep_last=0")
        return [
            Run("tp2_pp2", 4, LLAMA_1B + _layout(tp=2, pp=2) + train + saved),
            Run("resume_tp4", 4, LLAMA_1B + _layout(tp=4, sp=True) + train, compare_to="tp2_pp2",
                resume_from=("tp2_pp2", 20)),
            Run("resume_dp4", 4, LLAMA_1B + _layout() + train, compare_to="tp2_pp2", resume_from=("tp2_pp2", 20)),
        ]
    if suite == "t5":
        train = _training(50, 16, 128)
        return [Run("t5_base_dp8", 8, T5_BASE + _layout() + train),
                Run("t5_base_tp2_dp4", 8, T5_BASE + _layout(tp=2) + train)]
    if suite == "kill":
        train = _training(400, 8, 64, 10)
        return [Run("dp8_killed", 8, GPT_1P3B + train + ("checkpoint.save_interval=10", "checkpoint.keep_last=2"),
                    kill_rank=3),
                Run("dp8_resumed", 8, GPT_1P3B + train, resume_from=("dp8_killed", -1), steps_after_resume=20)]
    if suite == "smoke":
        train = ("train.train_steps=6", "train.log_interval=2", "train.eval_steps=1", "train.generate_sample=false",
                 "logging.progress_bar=false", "logging.tensorboard_dir=null", "scheduler.warmup_steps=2")
        return [Run("dp1", 1, TINY_CPU + ("train.global_batch_size=4",) + train),
                Run("dp2", 2, TINY_CPU + ("train.global_batch_size=8", "checkpoint.save_interval=4",
                                          "checkpoint.keep_last=0") + train),
                Run("dp1_resumed", 1, TINY_CPU + ("train.global_batch_size=8",) + train, compare_to="dp2",
                    resume_from=("dp2", 4))]
    raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")


# -- running ----------------------------------------------------------------------------------------------
def command(run: Run, work_dir: str, resume_step: Optional[int] = None) -> List[str]:
    """The launch command of ``run`` with its checkpoint folder under ``work_dir``."""
    cmd = [sys.executable, TRAIN, f"--nproc-per-node={run.gpus}", *run.args,
           f"name=bench_{run.name}", f"checkpoint.dir={os.path.join(work_dir, run.name)}"]
    if run.start_from:
        cmd.append(f"checkpoint.pretrained_checkpoint={os.path.join(work_dir, run.start_from)}")
    if run.resume_from:
        cmd.append("checkpoint.resume=true")
        if run.steps_after_resume is not None:
            steps = "<resumed step + %d>" % run.steps_after_resume if resume_step is None or resume_step < 0 \
                else str(resume_step + run.steps_after_resume)
            cmd = [a for a in cmd if not a.startswith("train.train_steps=")] + [f"train.train_steps={steps}"]
    return cmd


def worker_pid(launcher_pid: int, rank: int) -> int:
    """The process id of the launcher's worker with ``RANK=rank`` (Linux /proc)."""
    for task in os.listdir(f"/proc/{launcher_pid}/task"):
        with open(f"/proc/{launcher_pid}/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as env:
                        if f"RANK={rank}".encode() in env.read().split(b"\0"):
                            return int(pid)
                except OSError:
                    continue
    raise RuntimeError(f"no worker with RANK={rank} under launcher {launcher_pid}")


def _prepare_resume(run: Run, work_dir: str) -> int:
    """A fresh checkpoint folder for ``run`` holding (a link to) the step it resumes; returns that step."""
    source_run, step = run.resume_from
    source = os.path.join(work_dir, source_run)
    if step < 0:  # the newest complete checkpoint of the source run
        from bridge.training.checkpointing import newest_verified

        newest = newest_verified(source)
        if newest is None:
            raise RuntimeError(f"run {source_run} left no complete checkpoint in {source} to resume")
        step = int(os.path.basename(newest).split("_")[1])
    name = f"step_{step:07d}"
    target = os.path.join(work_dir, run.name)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    os.symlink(os.path.join(source, name), os.path.join(target, name))
    with open(os.path.join(target, "latest"), "w") as f:
        f.write(name + "\n")
    return step


def launch(run: Run, work_dir: str, env: Dict[str, str]) -> Dict:
    """Run ``run`` to its end (or kill one of its workers); returns its command, exit status and log text."""
    resume_step = _prepare_resume(run, work_dir) if run.resume_from else None
    if not run.resume_from:
        shutil.rmtree(os.path.join(work_dir, run.name), ignore_errors=True)
    cmd = command(run, work_dir, resume_step)
    log_path = os.path.join(work_dir, f"{run.name}.log")
    start = time.time()
    killed = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if run.kill_rank is not None:
            latest = os.path.join(work_dir, run.name, "latest")
            while not os.path.exists(latest) and proc.poll() is None:
                time.sleep(1)
            if proc.poll() is None:
                killed = {"rank": run.kill_rank, "pid": worker_pid(proc.pid, run.kill_rank), "at_s": time.time() - start}
                os.kill(killed["pid"], signal.SIGKILL)
        status = proc.wait()
    text = open(log_path).read()
    result = {"command": " ".join(cmd), "exit_status": status, "wall_s": round(time.time() - start, 1)}
    if killed:
        result["killed"] = killed
        result["stopped_s_after_kill"] = round(time.time() - start - killed["at_s"], 1)
        result["last_line"] = text.strip().splitlines()[-1] if text.strip() else ""
    if resume_step is not None:
        result["resumed_from_step"] = resume_step
    return {**result, **parse_log(text)}


# -- the log -----------------------------------------------------------------------------------------------
_STEP = re.compile(r"^step (\d+)/\d+ \| loss ([0-9.]+)(.*)$", re.M)
_FIELD = re.compile(r"\| (tokens/s|TFLOP/s|mfu|peak_mem_GiB) ([0-9.,]+)%?")
_MODEL = re.compile(r"^model: (.*)$", re.M)
_VALID = re.compile(r"^step \d+/\d+ \| valid loss ([0-9.]+)", re.M)


def parse_log(text: str) -> Dict:
    """The trainer's own figures from a run's log: loss per logged step, throughput averaged over the windows
    after the first (None when there is only one), the layout line and the final validation loss."""
    losses, windows = {}, []
    for step, loss, rest in _STEP.findall(text):
        losses[int(step)] = float(loss)
        fields = {k: float(v.replace(",", "")) for k, v in _FIELD.findall(rest)}
        if "tokens/s" in fields:
            windows.append(fields)
    later = windows[1:]
    mean = (lambda key, scale=1.0: round(sum(w[key] for w in later) / len(later) * scale, 4)
            if later and all(key in w for w in later) else None)
    model, valid = _MODEL.search(text), _VALID.findall(text)
    return {"layout": model.group(1) if model else None, "loss": {str(s): v for s, v in sorted(losses.items())},
            "valid_loss": float(valid[-1]) if valid else None, "tokens_per_s": mean("tokens/s"),
            "tflops_per_gpu": mean("TFLOP/s"), "mfu": mean("mfu", 0.01), "peak_mem_gib": mean("peak_mem_GiB"),
            "log": [line for line in text.splitlines() if line.startswith("step ")]}


def compare(results: Dict[str, Dict], runs: Sequence[Run], suite: str) -> Dict:
    """Derived figures: loss differences against each run's reference, data-parallel scaling efficiency."""
    out = {}
    for run in runs:
        if run.compare_to and run.name in results and run.compare_to in results:
            mine, theirs = results[run.name]["loss"], results[run.compare_to]["loss"]
            common = [s for s in mine if s in theirs]
            out[f"{run.name}_vs_{run.compare_to}_max_abs_loss_diff"] = (
                max(abs(mine[s] - theirs[s]) for s in common) if common else None)
    if suite == "dp" and results.get("dp1", {}).get("tokens_per_s"):
        one = results["dp1"]["tokens_per_s"]
        for run in runs:
            tps = results.get(run.name, {}).get("tokens_per_s")
            if tps:
                out[f"{run.name}_scaling_efficiency"] = round(tps / (run.gpus * one), 4)
    return out


def machine() -> str:
    import torch

    try:
        import megatron.core as mcore
        megatron = getattr(mcore, "__version__", "?")
    except ImportError:
        megatron = "not installed"
    if torch.cuda.is_available():
        gpus = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    else:
        gpus = f"CPU only ({os.cpu_count()} cores)"
    return f"{gpus}, torch {torch.__version__}, megatron-core {megatron}"


def commit() -> Optional[str]:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def select(runs: List[Run], suite: str, max_gpus: Optional[int], gpus_here: int) -> List[Run]:
    """The runs this machine can launch; one error when the suite needs more GPUs than there are."""
    if suite == "smoke":
        return runs
    limit = gpus_here if max_gpus is None else min(max_gpus, gpus_here)
    needed = max(run.gpus for run in runs)
    if gpus_here == 0:
        raise SystemExit(f"error: suite {suite} runs on CUDA GPUs and this machine has none; the smoke suite runs "
                         "on the CPU")
    if max_gpus is None and needed > gpus_here:
        raise SystemExit(f"error: suite {suite} needs {needed} GPUs and this machine has {gpus_here}; run it on a "
                         f"larger machine or pass --max-gpus {gpus_here} for the layouts that fit")
    chosen = [run for run in runs if run.gpus <= limit]
    names = {run.name for run in chosen}
    # a run that starts from, resumes or compares to a left-out run cannot run either
    return [run for run in chosen if all(dep is None or dep in names for dep in
                                         (run.start_from, run.resume_from and run.resume_from[0]))]


def table(path: str) -> str:
    """A Markdown table of a results file: one row per run."""
    data = json.load(open(path))
    rows = ["| run | GPUs | exit | final loss | tokens/s | TFLOP/s per GPU | MFU |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in data["runs"].items():
        losses = run.get("loss") or {}
        final = losses[max(losses, key=int)] if losses else None
        cells = [name, str(run.get("gpus")), str(run.get("exit_status")), f"{final:.4f}" if final is not None else "-",
                 f"{run['tokens_per_s']:,.0f}" if run.get("tokens_per_s") else "-",
                 f"{run['tflops_per_gpu']:.1f}" if run.get("tflops_per_gpu") else "-",
                 f"{100 * run['mfu']:.1f}%" if run.get("mfu") else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", choices=SUITES)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--max-gpus", type=int, default=None, help="run only the layouts with at most this many GPUs")
    parser.add_argument("--only", nargs="*", default=None, help="run only these runs of the suite (by name)")
    parser.add_argument("--work-dir", default=None, help="checkpoints and logs (default /tmp/bench_scaling/<suite>)")
    parser.add_argument("--out", default=None, help="the JSON (default benchmarks/results/scaling_<suite>.json)")
    parser.add_argument("--table", metavar="RESULTS_JSON", help="print a Markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.suite is None:
        parser.error("give a suite (" + ", ".join(SUITES) + ") or --table RESULTS_JSON")
    if args.max_gpus is not None and args.max_gpus < 1:
        parser.error(f"--max-gpus must be at least 1, got {args.max_gpus}")
    runs = suite_runs(args.suite)
    if args.only:
        unknown = sorted(set(args.only) - {run.name for run in runs})
        if unknown:
            parser.error(f"--only: {', '.join(unknown)} not in suite {args.suite} (its runs: "
                         f"{', '.join(run.name for run in runs)})")
        runs = [run for run in runs if run.name in args.only]
    work_dir = os.path.abspath(args.work_dir or os.path.join("/tmp/bench_scaling", args.suite))
    if args.dry_run:
        for run in runs:
            step = run.resume_from[1] if run.resume_from else None
            unit = "CPU process(es)" if args.suite == "smoke" else "GPU(s)"
            print(f"# {run.name} ({run.gpus} {unit})")
            print(" ".join(command(run, work_dir, step)))
        return 0
    runs = select(runs, args.suite, args.max_gpus, available_gpus())
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"scaling_{args.suite}.json")
    os.makedirs(work_dir, exist_ok=True)
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    results: Dict[str, Dict] = {}
    for run in runs:
        print(f"=== {run.name} ({run.gpus})", flush=True)
        results[run.name] = {"gpus": run.gpus, **launch(run, work_dir, env)}
        summary = {k: results[run.name].get(k) for k in ("exit_status", "tokens_per_s", "tflops_per_gpu", "mfu")}
        print(f"    {summary}", flush=True)
    report = {"suite": args.suite, "machine": machine(), "commit": commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "scripts/bench_scaling.py", *(argv if argv is not None else sys.argv[1:])]),
              "runs": results, "derived": compare(results, runs, args.suite)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")
    return 0 if all(r["exit_status"] == 0 or "killed" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
