"""bridge.failure_report: one ``error:`` line per failure under torch elastic, in torch's error-file layout
(issue 9, item 13). The real two-process torchrun run is in tests/recipes/test_train_script_errors.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.multiprocessing.errors.error_handler import ErrorHandler

from bridge import failure_report

LINE = "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"


def _attempt(tmp_path, ranks):
    """torch elastic's layout: <log dir>/<run>/attempt_0/<local rank>/error.json."""
    files = []
    for rank in range(ranks):
        folder = tmp_path / "run" / "attempt_0" / str(rank)
        folder.mkdir(parents=True)
        files.append(folder / "error.json")
    return files


def test_two_ranks_failing_alike_print_the_line_once(tmp_path, monkeypatch, capsys):
    files = _attempt(tmp_path, 2)
    for rank, error_file in enumerate(files):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv(failure_report.ERROR_FILE_ENV, str(error_file))
        failure_report.report(LINE)
    assert capsys.readouterr().err == f"error: {LINE}\n"
    failure_report.report("another failure")  # a different line is printed, once
    assert capsys.readouterr().err == "error: another failure\n"


def test_torchrun_report_quotes_the_line_without_format_warnings(tmp_path, monkeypatch, caplog):
    (error_file,) = _attempt(tmp_path, 1)
    monkeypatch.setenv(failure_report.ERROR_FILE_ENV, str(error_file))
    failure_report.report(LINE)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    report = ChildFailedError("scripts/train.py", {0: failure}).format_msg()
    assert f"traceback : error: {LINE}" in report and "exitcode  : 2" in report
    with caplog.at_level(logging.WARNING):  # what torchrun's own process does with the file
        ErrorHandler().dump_error_file(str(error_file), 2)
    assert "message format" not in caplog.text
    assert json.loads(error_file.read_text())["message"]["message"] == f"error: {LINE}"


@pytest.mark.parametrize("every_rank, expected", [(False, ""), (True, f"[rank 1] error: {LINE}\n")])
def test_without_torch_elastic_rank_0_or_every_rank_prints(monkeypatch, capsys, every_rank, expected):
    monkeypatch.delenv(failure_report.ERROR_FILE_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    failure_report.report(LINE, every_rank)
    assert capsys.readouterr().err == expected
    monkeypatch.setenv("RANK", "0")
    failure_report.report(LINE)
    assert capsys.readouterr().err == f"error: {LINE}\n"


def test_one_line_names_the_path_of_a_file_system_error():
    assert failure_report.one_line(FileNotFoundError(2, "No such file or directory", "/data/x.bin")) == \
        "/data/x.bin: No such file or directory"
    assert failure_report.one_line(ValueError("first\nsecond")) == "first"


def _worker(error_file, local_rank, line, timeout=30.0):
    """A process like a torchrun worker failing with ``line`` before any process group exists."""
    code = (f"import sys; from bridge import failure_report as f; f.report({line!r}); "
            f"sys.exit(f.worker_status({line!r}, 2, timeout={timeout}))")
    env = {**os.environ, failure_report.ERROR_FILE_ENV: str(error_file), "LOCAL_RANK": str(local_rank),
           "RANK": str(local_rank), "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)


def test_ranks_failing_alike_before_the_group_leave_one_failure(tmp_path):
    files = _attempt(tmp_path, 2)
    procs = [_worker(files[rank], rank, LINE) for rank in (1, 0)]
    statuses = [p.wait(timeout=120) for p in procs]
    errors = "".join(p.stderr.read() for p in procs)
    assert statuses == [0, 2]  # local rank 1 stands down, local rank 0 carries the failure
    assert errors.count(f"error: {LINE}") == 1


def test_a_rank_failing_alone_keeps_its_status(tmp_path):
    files = _attempt(tmp_path, 2)
    procs = [_worker(files[0], 0, LINE, timeout=1.0), _worker(files[1], 1, "another failure", timeout=1.0)]
    assert [p.wait(timeout=120) for p in procs] == [2, 2]
