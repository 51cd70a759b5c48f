"""Turn the logs of ``parallel_gpu_runs.sh`` into the JSON of ``benchmarks/results/parallel_gpu.json``.

    python tests/training/summarize_parallel_logs.py LOG_DIR [--machine TEXT] > benchmarks/results/parallel_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

RUNS = ("single", "dp2", "tp2", "pp2", "pp2_resume")
_STEP = re.compile(r"^step (\d+)/\d+ \| loss ([0-9.]+) .*\| tokens/s ([0-9,]+) \| TFLOP/s ([0-9.]+)", re.M)
_VALID = re.compile(r"^step \d+/\d+ \| valid loss ([0-9.]+)", re.M)
_MODEL = re.compile(r"^model: (.*)$", re.M)
_EXIT = re.compile(r"^exit (\d+)$", re.M)


def summarize(text: str) -> dict:
    """Losses and throughput at each logged step of one run's log, its validation loss and exit status."""
    steps = {int(s): {"loss": float(loss), "tokens_per_s": float(tps.replace(",", "")), "tflops_per_gpu": float(tf)}
             for s, loss, tps, tf in _STEP.findall(text)}
    valid, model, status = _VALID.findall(text), _MODEL.search(text), _EXIT.findall(text)
    later = [v["tokens_per_s"] for s, v in steps.items() if s > 10]  # the first window pays for warm-up
    return {
        "exit_status": int(status[-1]) if status else None,
        "layout": model.group(1) if model else None,
        "loss": {str(s): v["loss"] for s, v in sorted(steps.items())},
        "tokens_per_s": {str(s): v["tokens_per_s"] for s, v in sorted(steps.items())},
        "mean_tokens_per_s_after_step_10": sum(later) / len(later) if later else None,
        "valid_loss": float(valid[-1]) if valid else None,
        "resumed": "resumed from" in text,
        "sample_skipped": "end-of-run sample and embedded task accuracy are skipped" in text,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir")
    parser.add_argument("--machine", default=None)
    args = parser.parse_args()
    runs = {}
    for name in RUNS:
        path = os.path.join(args.log_dir, f"{name}.log")
        if os.path.isfile(path):
            runs[name] = summarize(open(path).read())
    result = {"machine": args.machine, "command": "tests/training/parallel_gpu_runs.sh", "runs": runs}
    if "pp2" in runs and "pp2_resume" in runs:  # a resume should continue the uninterrupted run exactly
        a, b = runs["pp2"]["loss"], runs["pp2_resume"]["loss"]
        result["pp2_resume_max_abs_loss_diff"] = max((abs(a[s] - b[s]) for s in b if s in a), default=None)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
