"""The one place that settles what a run's config leaves open; every other module reads the result.

* family: ``run.family`` names a registered :class:`bridge.models.FamilySpec` and matches the provider's class;
* architecture: with ``checkpoint.pretrained_checkpoint=hf:<dir>`` the directory's config.json replaces the
  model's architecture (its context length becomes ``max_position_embeddings``), keeping the run's choices
  (backend, dtype, layout, ``seq_length``);
* device: ``train.device=auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``;
* precision: ``train.precision=auto`` becomes ``model.dtype`` when that was set to something other than the fp32
  default, else bf16 on CUDA and fp32 on the CPU; an explicit precision sets ``model.dtype`` (a different explicit
  ``model.dtype`` next to it is a contradiction); fp16 needs CUDA;
* vocabulary: ``model.vocab_size`` from the tokenizer (an explicit size too small for it is an error);
* sequence lengths: owned by the model (``seq_length``, T5's ``decoder_seq_length``); the datasets read them
  there.

:func:`bridge.recipes.build_run_config` calls :func:`finalize_run` on the run it builds, and
:func:`bridge.training.train` calls it again for runs built in Python: a finalised run comes back unchanged.
"""

from __future__ import annotations

import torch

from bridge.interop.hf.finetune import adopt_hf_architecture
from bridge.models import FamilySpec, family_of_provider, family_spec, list_presets
from bridge.models.fields import parse_dtype
from bridge.training.config import Device, Precision, RunConfig, parse_choice


def settled_device(device) -> Device:
    """``cpu`` or ``cuda`` for ``train.device`` (auto: CUDA when a GPU is visible)."""
    choice = parse_choice(Device, device, "train.device")
    if choice is Device.auto:
        return Device.cuda if torch.cuda.is_available() else Device.cpu
    return choice


def settled_precision(precision, model_dtype, device: Device) -> Precision:
    """The concrete precision of a run (see the module docstring for the rule)."""
    choice = parse_choice(Precision, precision, "train.precision")
    dtype = parse_dtype(model_dtype, "model.dtype")
    if choice is Precision.auto:
        resolved = dtype if dtype != "fp32" else ("bf16" if device is Device.cuda else "fp32")
    else:
        resolved = choice.value
        if dtype not in ("fp32", resolved):
            raise ValueError(f"train.precision={resolved} contradicts model.dtype={dtype}; set only train.precision")
    if resolved == "fp16" and device is not Device.cuda:
        raise ValueError("train.precision=fp16 needs CUDA (dynamic loss scaling lives in megatron-core's GPU "
                         "optimizer); use fp32 or bf16 on the CPU")
    return Precision(resolved)


def _fill_vocab_size(run: RunConfig) -> None:
    try:
        vocab = run.built_tokenizer.vocab_size
    except (ValueError, OSError, RuntimeError) as exc:
        raise ValueError(f"tokenizer: {str(exc).strip().splitlines()[0]}") from exc
    given = run.model.vocab_size
    if given is None:
        run.model.vocab_size = vocab
    elif given < vocab:
        raise ValueError(
            f"model.vocab_size={given} is smaller than the tokenizer's vocabulary ({vocab} ids); "
            "leave model.vocab_size unset (null) to take it from the tokenizer")


def check_family(spec: FamilySpec, model_spec: FamilySpec, model_cls: type) -> None:
    """A model of family ``model_spec`` (class ``model_cls``) in a run of family ``spec`` is one ValueError."""
    if model_spec is not spec:
        raise ValueError(
            f"the model is a {model_spec.name.upper()} model ({model_cls.__name__}) but this recipe trains "
            f"family={spec.name}; use a {spec.name} preset ({', '.join(list_presets(spec.name))}) or a "
            f"{model_spec.name}_* recipe")


def finalize_run(run: RunConfig) -> FamilySpec:
    """Settle ``run`` in place (family, architecture, device, precision, vocabulary); return its family's spec.

    Every problem is one ``ValueError`` line naming the setting and what would be valid.
    """
    spec = family_spec(run.family)
    check_family(spec, family_of_provider(run.model), type(run.model))
    run.family = spec.name
    adopt_hf_architecture(run, run.built_tokenizer)
    run.train.device = settled_device(run.train.device)
    run.train.precision = settled_precision(run.train.precision, run.model.dtype, run.train.device)
    run.model.dtype = run.train.precision.value
    _fill_vocab_size(run)
    return spec
