"""``generate`` and ``scripts/generate.py`` on a GPT checkpoint written by ``train``."""

from __future__ import annotations

import importlib.util
import os

import pytest

from runs import tiny_run
from bridge.data import TokenizerConfig, build_tokenizer
from bridge.models import get_preset
from bridge.training import CheckpointConfig, generate, load_weights, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("generate_script", os.path.join(ROOT, "scripts", "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(data_cache, tmp_path_factory):
    run = tiny_run("gpt", steps=4, cache_dir=data_cache, generate_sample=True)
    run.checkpoint = CheckpointConfig(dir=str(tmp_path_factory.mktemp("gen") / "ckpt"))
    result = train(run)
    assert result.sample is not None  # the end-of-run sample
    return run.checkpoint.dir


def test_generate_is_greedy_or_seeded(checkpoint):
    tokenizer = build_tokenizer(TokenizerConfig())
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=tokenizer.vocab_size).provide()
    load_weights(checkpoint, model)
    greedy = generate(model, tokenizer, "The ", max_new_tokens=12, stop_at_eos=False)
    assert greedy == generate(model, tokenizer, "The ", max_new_tokens=12, stop_at_eos=False)
    assert len(tokenizer.encode(greedy)) == 12
    sampled = [generate(model, tokenizer, "The ", max_new_tokens=12, top_k=20, seed=s, stop_at_eos=False)
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert generate(model, tokenizer, "The ", max_new_tokens=0) == ""
    with pytest.raises(ValueError, match="temperature > 0"):
        generate(model, tokenizer, "The ", temperature=0.0)


def test_generate_script_prints_the_continuation(checkpoint, capsys):
    assert _script().main(["--checkpoint", checkpoint, "--prompt", "The ", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The ")


def test_generate_script_reports_a_missing_checkpoint(tmp_path, capsys):
    assert _script().main(["--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_generate_script_output_is_the_text_and_one_path_line(checkpoint, tmp_path):
    """No megatron / Apex / Transformer Engine notices before the output (issue 9, item 17)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "generate.py"), "--checkpoint", checkpoint,
                           "--max-new-tokens", "8"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"# {os.path.join(checkpoint, 'step_0000004')}"], proc.stderr
    assert proc.stdout.startswith("The ")
