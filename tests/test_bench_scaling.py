"""scripts/bench_scaling.py without running a job: the suites' layouts, argument handling, log parsing and the
derived figures. (Its smoke suite runs real CPU jobs: ``python scripts/bench_scaling.py smoke --out ...``.)"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_scaling", os.path.join(REPO, "scripts", "bench_scaling.py"))
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_scaling"] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)

LOG = """model: gpt 1.3B parameters, bf16 on cuda, 2 process(es) (data parallel 2, tensor parallel 1, pipeline parallel 1)
step 10/30 | loss 5.1000 | lr 3.00e-04 | grad_norm 1.00 | tokens/s 10,000 | TFLOP/s 100.00 | mfu 10.0% | peak_mem_GiB 9.00
step 20/30 | loss 4.0000 | lr 3.00e-04 | grad_norm 1.00 | tokens/s 30,000 | TFLOP/s 300.00 | mfu 30.0% | peak_mem_GiB 9.00
step 30/30 | loss 3.5000 | lr 3.00e-04 | grad_norm 1.00 | tokens/s 50,000 | TFLOP/s 500.00 | mfu 50.0% | peak_mem_GiB 9.50
step 30/30 | valid loss 3.4000
"""


@pytest.mark.parametrize("suite", bench.SUITES)
def test_every_suite_is_consistent(suite):
    runs = bench.suite_runs(suite)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    for i, run in enumerate(runs):  # references point at earlier runs of the suite
        for dep in (run.start_from, run.compare_to, run.resume_from and run.resume_from[0]):
            assert dep is None or dep in names[:i], (run.name, dep)
        overrides = dict(a.split("=", 1) for a in run.args if "=" in a)
        tp = int(overrides.get("model.tensor_model_parallel_size", 1))
        pp = int(overrides.get("model.pipeline_model_parallel_size", 1))
        assert run.gpus % (tp * pp) == 0, run
        if "model.make_vocab_size_divisible_by" in overrides:  # every layout pads the vocabulary to the same rows
            assert int(overrides["model.make_vocab_size_divisible_by"]) * tp == bench.VOCAB_ROWS
        if "model.virtual_pipeline_model_parallel_size" in overrides:
            micro, batch = int(overrides["train.micro_batch_size"]), int(overrides["train.global_batch_size"])
            assert (batch // (micro * run.gpus // (tp * pp))) % pp == 0, run


def test_issue_layouts_are_all_there():
    assert [r.gpus for r in bench.suite_runs("dp")] == [1, 2, 4, 8]
    assert {r.name for r in bench.suite_runs("tp")} >= {"llama_1b_tp2_sp", "llama_1b_tp4_sp", "llama_1b_tp8_sp",
                                                       "gpt_6p7b_tp4_sp", "gpt_6p7b_tp8_sp"}
    assert {r.name for r in bench.suite_runs("pp")} >= {"llama_1b_pp2_vp2", "llama_1b_pp4_vp2", "gpt_6p7b_pp4_vp2"}
    reshard = {r.name: r for r in bench.suite_runs("reshard")}
    assert reshard["resume_tp4"].resume_from == ("tp2_pp2", 20) and reshard["resume_dp4"].resume_from == ("tp2_pp2", 20)


def test_dry_run_prints_launcher_commands(capsys, tmp_path):
    assert bench.main(["reshard", "--dry-run", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--nproc-per-node=4" in out and "checkpoint.resume=true" in out
    assert f"checkpoint.dir={tmp_path}/resume_tp4" in out
    assert not (tmp_path / "resume_tp4").exists()  # a dry run writes nothing


def test_bad_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.main(["dp", "--only", "dp3"])
    assert "--only: dp3 not in suite dp (its runs: dp1, dp2, dp4, dp8)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="suite tp runs on CUDA GPUs and this machine has none"):
        bench.select(bench.suite_runs("tp"), "tp", None, 0)
    with pytest.raises(SystemExit, match="needs 8 GPUs and this machine has 4; .* --max-gpus 4"):
        bench.select(bench.suite_runs("tp"), "tp", None, 4)


def test_max_gpus_keeps_the_layouts_that_fit_and_what_they_need():
    chosen = [r.name for r in bench.select(bench.suite_runs("tp"), "tp", 2, 8)]
    assert chosen == ["llama_1b_init", "llama_1b_tp1", "llama_1b_tp2_sp", "gpt_6p7b_init", "gpt_6p7b_tp2"]


def test_log_parsing_skips_the_warm_up_window_and_derives_scaling():
    parsed = bench.parse_log(LOG)
    assert parsed["loss"] == {"10": 5.1, "20": 4.0, "30": 3.5} and parsed["valid_loss"] == 3.4
    assert parsed["tokens_per_s"] == 40000 and parsed["tflops_per_gpu"] == 400 and parsed["mfu"] == 0.4
    assert parsed["layout"].startswith("gpt 1.3B") and len(parsed["log"]) == 4
    runs = bench.suite_runs("dp")[:2]
    results = {"dp1": {"tokens_per_s": 20000.0, "loss": {}}, "dp2": {"tokens_per_s": 36000.0, "loss": {}}}
    assert bench.compare(results, runs, "dp") == {"dp1_scaling_efficiency": 1.0, "dp2_scaling_efficiency": 0.9}
