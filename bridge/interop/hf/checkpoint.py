"""Save an imported model as a weights-only checkpoint of this project (what ``convert.py import`` writes).

The folder has the layout of a training checkpoint (``step_0000000/`` + ``latest``) and its run config
(``family``, ``model``, ``tokenizer``), so ``scripts/generate.py``, ``convert.py export`` and
``checkpoint.pretrained_checkpoint`` read it; it holds no optimizer state, so it cannot be resumed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional

from bridge.interop.hf.errors import HFConversionError

_TOKENIZER_KINDS = (("tokenizer.json", "huggingface"), ("tokenizer.model", "sentencepiece"),
                    ("spiece.model", "sentencepiece"))


def tokenizer_node(hf_dir: str, target: str) -> Optional[Dict[str, Any]]:
    """Copy ``hf_dir``'s tokenizer file into ``target`` and return the run-config node that reads it."""
    for name, kind in _TOKENIZER_KINDS:
        source = os.path.join(hf_dir, name)
        if os.path.isfile(source):
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(source, os.path.join(target, name))
            return {"type": kind, "path": os.path.abspath(os.path.join(target, name))}
    return None


def save_imported(model, provider, hf_dir: str, output: str) -> str:
    """Write ``model`` (imported from ``hf_dir``) under ``output``; returns the checkpoint folder."""
    from megatron.core import dist_checkpointing

    from bridge.training.checkpointing import LATEST, SyncTorchDistSaveStrategy, step_dir_name
    from bridge.training.snapshot import to_plain

    if os.path.exists(output) and os.listdir(output):
        raise HFConversionError(f"{output} exists and is not empty; pass a new directory (nothing was written)")
    os.makedirs(output, exist_ok=True)
    name = step_dir_name(0)
    tmp = os.path.join(output, f".tmp_{name}")
    family = "t5" if type(provider).__name__.startswith("T5") else "gpt"
    run_config: Dict[str, Any] = {"family": family, "model": to_plain(provider)}
    tokenizer = tokenizer_node(hf_dir, os.path.join(output, "tokenizer"))
    if tokenizer is not None:
        run_config["tokenizer"] = tokenizer
    state = {"model": model.sharded_state_dict(), "step": 0, "consumed_samples": 0, "world_size": 1,
             "run_config": run_config}
    os.makedirs(tmp)
    dist_checkpointing.save(state, tmp, sharded_strategy=SyncTorchDistSaveStrategy())
    os.replace(tmp, os.path.join(output, name))
    with open(os.path.join(output, LATEST + ".tmp"), "w") as f:
        f.write(name + "\n")
    os.replace(os.path.join(output, LATEST + ".tmp"), os.path.join(output, LATEST))
    return os.path.join(output, name)
