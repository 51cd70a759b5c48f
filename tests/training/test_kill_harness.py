"""A few kills of ``scripts/kill_at_random.py`` (one in each phase): the folder stays sound, resume stays exact.
The full harness (20+ kills) is run by hand: ``python scripts/kill_at_random.py --kills 24``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_kills_in_every_phase_lose_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "kill_at_random.py"), "--kills", "4",
                           "--steps", "8", "--cycle-phases", "--slow-fs-ms", "30", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "summary: 4 kills" in proc.stdout and ", 0 differ; 0 problem(s)" in proc.stdout, proc.stdout
