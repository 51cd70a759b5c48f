"""What a run shows: a tqdm progress bar, log lines (console and an optional file), TensorBoard scalars.

Only the main process (global rank 0) reports; the other ranks get a reporter that does nothing.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, Optional

from bridge.training.config import LoggingConfig

logger = logging.getLogger("bridge.training")


def format_metrics(step: int, total: int, metrics: Dict[str, Optional[float]]) -> str:
    """``step 10/50 | loss 4.1234 | lr 3.00e-04 | ...``; None values print as n/a."""
    def fmt(key: str, value: Optional[float]) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value) and key == "mfu"):
            return f"{key} n/a"
        if key in ("lr",):
            return f"{key} {value:.2e}"
        if key == "mfu":
            return f"{key} {100 * value:.1f}%"
        if key in ("tokens/s",):
            return f"{key} {value:,.0f}"
        if key.endswith("GiB") or key in ("grad_norm", "TFLOP/s"):
            return f"{key} {value:.2f}"
        return f"{key} {value:.4f}"

    return " | ".join([f"step {step}/{total}"] + [fmt(k, v) for k, v in metrics.items()])


class Reporter:
    """Progress bar + log lines + TensorBoard for the main process."""

    def __init__(self, cfg: LoggingConfig, total_steps: int, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.bar = None
        self.tb = None
        self.log_file = None
        if not enabled:
            return
        if cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if cfg.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(cfg.tensorboard_dir)
        if cfg.log_file:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.log_file)), exist_ok=True)
            self.log_file = open(cfg.log_file, "a")

    def line(self, text: str) -> None:
        """A log line on the console (above the progress bar) and in the log file."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)
        if self.log_file is not None:
            self.log_file.write(text + "\n")
            self.log_file.flush()

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def metrics(self, step: int, metrics: Dict[str, Optional[float]], prefix: str = "train") -> None:
        """A log line for ``step`` and one TensorBoard scalar per metric that has a value."""
        if not self.enabled:
            return
        self.line(format_metrics(step, self.total, metrics) if prefix == "train"
                  else f"step {step}/{self.total} | " + " | ".join(f"{prefix} {k} {v:.4f}" for k, v in metrics.items()))
        if self.tb is not None:
            for key, value in metrics.items():
                if value is not None and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.log_file is not None:
            self.log_file.close()
