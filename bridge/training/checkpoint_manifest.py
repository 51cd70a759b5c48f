"""``manifest.json`` of a checkpoint: every file's size and SHA-256, the step, its loss and the run config.

Written last into the temporary folder of a save (after every rank's data, ``metadata.json`` and
``run_config.yaml``), so a folder with a manifest is complete. On load the files are checked against it:
a flipped byte or a truncated shard is one error naming the file instead of a model that quietly trains from
damaged weights. The run config in the manifest is compared with the run that loads it
(:func:`compare_run_configs`): fields that change what the weights mean must match; the optimizer, schedule
and step count may change on resume and the differences are listed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from bridge.training.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = 1

WEIGHT_MEANING_FIELDS = (
    "num_layers", "encoder_num_layers", "decoder_num_layers", "hidden_size", "ffn_hidden_size",
    "num_attention_heads", "num_query_groups", "kv_channels", "vocab_size",
    "position_embedding_type", "rotary_percent", "rotary_base", "rotary_interleaved", "normalization",
    "layernorm_epsilon", "activation", "activation_func", "gated_linear_unit", "add_bias_linear", "add_qkv_bias",
    "qk_layernorm", "share_embeddings_and_output_weights", "num_moe_experts",
)
"""Model fields whose change makes the saved weights mean something else (heads split differently, another
activation or normalisation, another vocabulary): a checkpoint loads only into a model with the same values.
Everything else (dropout, attention backend, precision, parallel sizes, recompute) may differ. The vocabulary
padding (``make_vocab_size_divisible_by``) may differ too: it is a multiple of the tensor-parallel size, so a
resharded resume adjusts it to keep the same number of rows (the shape check of the load names the count)."""

RESUME_TUNABLE_NODES = ("optimizer", "scheduler", "train")
"""Run-config nodes that may change on resume; their changes take effect and are logged."""

_CHUNK = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: str) -> List[str]:
    names = []
    for base, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(base, name), folder)
            if rel != MANIFEST:
                names.append(rel)
    return sorted(names)


def write_manifest(folder: str, step: int, run_config: Dict[str, Any], loss: Optional[float]) -> None:
    """Describe every file in ``folder`` (written atomically; call after everything else is on disk)."""
    manifest = {
        "format": FORMAT, "step": step, "loss": loss,
        "files": {rel: {"bytes": os.path.getsize(os.path.join(folder, rel)),
                        "sha256": file_digest(os.path.join(folder, rel))} for rel in _files(folder)},
        "run_config": run_config,
    }
    tmp = os.path.join(folder, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST))


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
    """The manifest of ``folder``; None when it has none (a checkpoint of an older bridge, or an unfinished save)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); the checkpoint cannot be verified: use another "
                              "step folder") from None
    return manifest


def verify_files(folder: str, manifest: Dict[str, Any]) -> None:
    """Every file the manifest lists exists with its size and checksum; else one error naming the file."""
    for rel, expected in manifest["files"].items():
        path = os.path.join(folder, rel)
        hint = "the checkpoint is damaged: use another step folder (or the run's previous checkpoint)"
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing; {hint}")
        size = os.path.getsize(path)
        if size != expected.get("bytes"):
            raise CheckpointError(f"{path} has {size} bytes, the manifest records {expected.get('bytes')}; {hint}")
        if file_digest(path) != expected.get("sha256"):
            raise CheckpointError(f"{path} does not match its checksum in {MANIFEST}; {hint}")


def verified(folder: str) -> bool:
    """Whether ``folder`` has a manifest and every file matches it (recovery and resume without ``latest``)."""
    try:
        manifest = read_manifest(folder)
        if manifest is None:
            return False
        verify_files(folder, manifest)
        return True
    except CheckpointError:
        return False


def _effective(model: Dict[str, Any], name: str) -> Any:
    """A model field as the model is built (None defaults filled in), so equal models compare equal."""
    value = model.get(name)
    if value is not None:
        return value
    heads, hidden = model.get("num_attention_heads"), model.get("hidden_size")
    if name == "num_query_groups":
        return heads
    if name == "kv_channels" and heads and hidden:
        return hidden // heads
    if name in ("encoder_num_layers", "decoder_num_layers"):
        return model.get("num_layers")
    return value


def architecture_mismatch(saved: Dict[str, Any], current: Dict[str, Any]) -> Optional[Tuple[str, Any, Any]]:
    """The first ``(key, saved value, current value)`` that makes the checkpoint's weights mean something else."""
    if saved.get("family") is not None and current.get("family") is not None \
            and str(saved["family"]).lower() != str(current["family"]).lower():
        return "family", saved["family"], current["family"]
    saved_model, model = saved.get("model") or {}, current.get("model") or {}
    for name in WEIGHT_MEANING_FIELDS:
        if name not in saved_model or name not in model:
            continue
        old, new = _effective(saved_model, name), _effective(model, name)
        if old is not None and new is not None and old != new:
            return f"model.{name}", old, new
    old_tok, new_tok = (saved.get("tokenizer") or {}).get("type"), (current.get("tokenizer") or {}).get("type")
    if old_tok is not None and new_tok is not None and old_tok != new_tok:
        return "tokenizer.type", old_tok, new_tok
    return None


def check_architecture(checkpoint: str, saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """One error naming the field when the checkpoint was saved from a model that means something else."""
    mismatch = architecture_mismatch(saved, current)
    if mismatch:
        key, old, new = mismatch
        raise CheckpointError(
            f"checkpoint {checkpoint} was saved with {key}={old!r} but this run has {key}={new!r}, which changes "
            f"what its weights mean; set {key}={old!r} (see its run_config.yaml) or use another checkpoint.dir")


def resume_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``node.key: old -> new`` for each optimizer / scheduler / train value that differs from the checkpoint's."""
    changes = []
    for node in RESUME_TUNABLE_NODES:
        old_node, new_node = saved.get(node) or {}, current.get(node) or {}
        for key in sorted(set(old_node) | set(new_node)):
            if key in old_node and key in new_node and old_node[key] != new_node[key]:
                changes.append(f"{node}.{key}: {old_node[key]!r} -> {new_node[key]!r}")
    return changes
