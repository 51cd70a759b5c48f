"""Failures that used to be tracebacks or silence are one line naming the file or key (issue 9, items 10-12)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch.distributed.checkpoint as dcp

from runs import tiny_run
from bridge.data import TokenizerConfig, build_tokenizer, open_indexed_dataset
from bridge.data.indexed import load_indexed_dataset_module, sidecar_path, write_indexed_dataset
from bridge.data.jsonl import read_jsonl_records
from bridge.models import get_preset
from bridge.training import CheckpointConfig, CheckpointError, train
from bridge.training.checkpointing import LATEST
from bridge.training.memory import check_fits_on_cpu

GIB = 2**30


@pytest.fixture(scope="module")
def checkpoint(data_cache, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("one_line") / "ckpt")
    run = tiny_run("gpt", steps=3, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=root)
    train(run)
    return root


def _resume(data_cache, root, steps=6):
    run = tiny_run("gpt", steps=steps, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=root, resume=True)
    return run


# -- item 10: paths, damaged files, a full disk ---------------------------------------------------------------
def test_checkpoint_dir_that_is_a_file_fails_before_training(data_cache, tmp_path):
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a folder")
    run = tiny_run("gpt", steps=3, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=str(blocker))
    with pytest.raises(CheckpointError, match=f"checkpoint.dir={blocker} is a file, not a folder"):
        train(run)


def test_missing_pretrained_checkpoint_names_the_path(data_cache, tmp_path):
    run = tiny_run("gpt", steps=3, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(pretrained_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match=f"checkpoint.pretrained_checkpoint={tmp_path / 'nowhere'} does not exist"):
        train(run)


def test_garbled_latest_names_the_file(checkpoint, data_cache, tmp_path):
    root = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (root / LATEST).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=rf"{root / LATEST} is not a checkpoint name"):
        train(_resume(data_cache, str(root)))


def test_garbled_metadata_names_the_checkpoint(checkpoint, data_cache, tmp_path):
    root = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (root / "step_0000003" / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"step_0000003/metadata.json has 9 bytes, the manifest records \d+; the checkpoint is damaged"):
        train(_resume(data_cache, str(root)))
    os.remove(root / "step_0000003" / "manifest.json")  # a checkpoint of an older bridge: no manifest to check
    with pytest.raises(CheckpointError, match=r"step_0000003 cannot be read \(.*\); it is damaged"):
        train(_resume(data_cache, str(root)))


def test_full_disk_is_named_and_the_partial_copy_removed(data_cache, tmp_path, monkeypatch):
    def no_space(self, plan, planner):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", no_space)
    run = tiny_run("gpt", steps=3, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match=r"failed: the disk holding .* is full \(\d+ MiB free\); the partial "
                                              r"copy was removed"):
        train(run)
    assert [n for n in os.listdir(tmp_path / "ckpt") if n.startswith(".tmp_")] == []


@pytest.fixture
def tokenizer():
    return build_tokenizer(TokenizerConfig())


def test_damaged_index_names_the_dataset(tokenizer, tmp_path):
    prefix = str(tmp_path / "docs")
    write_indexed_dataset(["some text", "more text"], tokenizer, prefix)
    with open(prefix + ".idx", "r+b") as f:
        f.write(b"garbage!!")
    with pytest.raises(ValueError, match=f"indexed dataset '{prefix}' cannot be read .*make it again"):
        open_indexed_dataset(prefix, tokenizer)


def test_truncated_bin_names_the_file(tokenizer, tmp_path):
    prefix = str(tmp_path / "docs")
    write_indexed_dataset(["some text " * 20, "more text " * 20], tokenizer, prefix)
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=rf"{prefix}.bin has 10 bytes but its .idx points up to byte \d+"):
        open_indexed_dataset(prefix, tokenizer)


def test_token_ids_beyond_the_vocabulary_are_named(tokenizer, tmp_path):
    """Data made by another tool (no sidecar) with ids the byte tokenizer (359 ids) does not have."""
    import torch

    prefix = str(tmp_path / "foreign")
    indexed = load_indexed_dataset_module()
    builder = indexed.IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    builder.add_item(torch.tensor([5, 17, 50000, 3]))
    builder.end_document()
    builder.finalize(prefix + ".idx")
    assert not os.path.exists(sidecar_path(prefix))
    with pytest.raises(ValueError, match="holds token id 50000, beyond the tokenizer's vocabulary \\(359 ids\\)"):
        open_indexed_dataset(prefix, tokenizer)


# -- item 11: JSONL values that are not text --------------------------------------------------------------------
@pytest.mark.parametrize("value, shown", [(None, "null"), ({"a": 1}, '{"a": 1}'), ([1, 2], "[1, 2]"), (True, "true")])
def test_jsonl_value_that_is_not_text_is_named(value, shown, tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" +
                    json.dumps({"prompt": "ok", "response": value}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: 'response' is {__import__('re').escape(shown)}, not text"):
        list(read_jsonl_records(str(path), ("prompt", "response")))


# -- item 12: memory estimate before the first step -------------------------------------------------------------
def test_a_run_that_cannot_fit_says_so_before_the_first_step():
    model = get_preset("gpt_126m", seq_length=4096, vocab_size=50257)
    with pytest.raises(MemoryError, match=r"needs at least \d+\.\d GiB on the CPU but 24.0 GiB is free: .*attention "
                                          r"probabilities .* at train.micro_batch_size=8, seq_length=4096"):
        check_fits_on_cpu(model, 8, 125_000_000, processes_here=1, available=24 * GIB)


def test_the_quick_start_fits():
    model = get_preset("gpt_tiny", vocab_size=359)
    estimate = check_fits_on_cpu(model, 8, 840_000, processes_here=1, available=2 * GIB)
    assert 0 < estimate.total_bytes < GIB
