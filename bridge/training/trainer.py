"""``train(run)``: build everything a run needs, loop, evaluate, checkpoint, report.

The loop per optimizer step: ``accumulation = global_batch / (micro_batch × data_parallel)`` micro-batches
forward + backward (loss = masked mean over ``loss_mask``, divided by the accumulation count), one
gradient all-reduce over the data-parallel ranks, clip + optimizer step, one LR-schedule step.
With pipeline stages (GPT on CUDA) the forward + backward of a step is megatron-core's 1F1B schedule
instead, interleaved over this rank's model chunks with virtual pipeline stages
(:mod:`bridge.training.pipeline`); everything around it is the same loop.
The data order is fixed by ``consumed_samples`` (see :class:`bridge.data.PretrainingSampler`), so a resumed
run draws the samples the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist

from bridge.data import DatasetKind, PretrainingSampler
from bridge.distributed import DistributedEnv, init_distributed, seed_everything
from bridge.models import FamilySpec
from bridge.models.distributed_model import build_model_chunks
from bridge.training.checkpointer import Checkpointer
from bridge.training.checkpointing import preserved_rng, restore_rng
from bridge.training.data_parallel import wrap_data_parallel
from bridge.training.errors import TrainingDivergedError
from bridge.training.finalize import finalize_run
from bridge.training.generation import generate
from bridge.training.hf_checkpoints import load_pretrained
from bridge.training.loss import batch_to_device, global_batch_tokens, masked_loss, sum_over_data_parallel
from bridge.training.memory import check_fits_on_cpu
from bridge.training.optimizer import build_optimizer, build_scheduler
from bridge.training.model_chunks import as_one_module
from bridge.training.pipeline import (as_chunks, check_interleaved_plan, configure_pipeline, pipeline_evaluate,
                                      pipeline_train_step)
from bridge.training.reporting import Reporter
from bridge.training.snapshot import run_snapshot
from bridge.training.throughput import count_parameters, peak_memory_gib, peak_tflops

logger = logging.getLogger("bridge.training")

SAMPLE_PROMPT = "The "
"""Prompt of the end-of-run sample (the embedded corpus is English prose about Python)."""


__all__ = ["TrainResult", "TrainingDivergedError", "batch_plan", "evaluate", "train"]


@dataclass
class TrainState:
    """Where the run is: advanced by the loop, recorded by every checkpoint, restored on resume."""

    step: int = 0
    """Optimizer steps done."""
    consumed_samples: int = 0
    """Samples drawn so far over all ranks (the sampler continues from here)."""
    loss: Optional[float] = None
    """Training loss of the latest step (recorded in the checkpoint's manifest)."""


@dataclass
class RunParts:
    """What ``train`` built for a run, handed to the loop and the evaluation as one object."""

    run: Any
    env: DistributedEnv
    family: FamilySpec
    core: Any
    """The megatron-core model (checkpoints, generation); with pipeline stages this rank's stage."""
    wrapped: Any
    """Its training wrapper (data parallel, fp16/bf16 cast)."""
    optimizer: Any
    scheduler: Any
    checkpointer: Checkpointer
    reporter: Reporter
    valid_ds: Any
    accumulation: int
    flops_per_sample: float
    peak: Optional[float]


@dataclass
class TrainResult:
    """What a run produced (on every rank; rank 0 is the one that logged it)."""

    steps: List[int] = field(default_factory=list)
    """The optimizer steps this call ran (1-based; a resumed run starts after its checkpoint's step)."""
    losses: List[float] = field(default_factory=list)
    """Training loss of each of those steps (mean over the global batch)."""
    valid_loss: Optional[float] = None
    """Validation loss at the end of the run."""
    checkpoint: Optional[str] = None
    """Folder of the final checkpoint (None when checkpoint.dir is not set)."""
    tokens_per_second: Optional[float] = None
    """Mean training throughput over the run (all ranks), first step excluded when there are several."""
    tflops_per_gpu: Optional[float] = None
    """Achieved model TFLOP/s per process, same window as tokens_per_second."""
    mfu: Optional[float] = None
    """tflops_per_gpu / the device's dense peak (None on CPU or an unknown GPU)."""
    sample: Optional[str] = None
    """GPT: the end-of-run greedy continuation of SAMPLE_PROMPT."""
    accuracy: Optional[float] = None
    """GPT fine-tuning on the embedded task: exact-match accuracy on validation examples."""
    attention_backends: List[str] = field(default_factory=list)
    """The attention backends the model's layers ran in their latest forward (``last_backend``)."""


def batch_plan(train_cfg, data_parallel_size: int) -> int:
    """Micro-batches accumulated per step; global batch must be micro × accumulation × data-parallel size.
    A null ``train.global_batch_size`` becomes micro × data-parallel size here (one micro-batch per rank)."""
    per_pass = train_cfg.micro_batch_size * data_parallel_size
    if train_cfg.global_batch_size is None:
        train_cfg.global_batch_size = per_pass
    if train_cfg.global_batch_size % per_pass != 0:
        raise ValueError(
            f"train.global_batch_size={train_cfg.global_batch_size} is not a multiple of train.micro_batch_size="
            f"{train_cfg.micro_batch_size} × data-parallel size {data_parallel_size} = {per_pass}; "
            f"use a multiple of {per_pass}")
    return train_cfg.global_batch_size // per_pass


def _build_model(run, env: DistributedEnv, precision: str):
    """``(core, wrapped)``: the megatron-core model (checkpoints, generation) and its training wrapper.

    With pipeline stages ``core`` is this rank's stage (``provide()`` reads its place from megatron's state);
    with virtual stages ``core`` holds this rank's chunks (:class:`ModelChunks`) and ``wrapped`` is a list of
    the wrapped chunks, as megatron-core's interleaved schedule takes them."""
    chunks = [chunk.to(env.device) for chunk in build_model_chunks(run.model)]
    wrapped = []
    for index, chunk in enumerate(chunks):
        module = chunk
        if precision != "fp32":
            from megatron.core.transformer.module import Float16Module

            module = Float16Module(chunk.config, chunk)  # casts to bf16/fp16 in, fp32 logits/loss out
        module = wrap_data_parallel(module, env.device, run.optimizer.use_distributed_optimizer,
                                    bucketed=index == 0, overlap_grad_reduce=run.optimizer.overlap_grad_reduce)
        if env.device.type == "cuda":
            module.broadcast_params()  # identical starting weights on every data-parallel rank
        wrapped.append(module)
    return as_one_module(chunks), wrapped[0] if len(wrapped) == 1 else wrapped


def _loader(dataset, total: int, consumed: int, micro: int, env: DistributedEnv,
            workers: int) -> Optional[Iterator[Dict]]:
    """This rank's micro-batches (the sampler splits over the data-parallel group only); None on middle stages."""
    if not env.loads_data:
        return None
    sampler = PretrainingSampler(total, consumed, micro, env.data_parallel_rank, env.data_parallel_size)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                            pin_memory=env.device.type == "cuda"))


def _finish_grads(wrapped, env: DistributedEnv) -> None:
    """Data-parallel reduction; on CUDA megatron's ``finalize_model_grads`` (also the sequence-parallel norms)."""
    if env.device.type == "cuda":
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([wrapped])
    else:
        wrapped.finish_grad_sync()


def _mean_over_ranks(value: torch.Tensor) -> float:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


@torch.no_grad()
def evaluate(wrapped, valid_ds, run, env: DistributedEnv, family: FamilySpec) -> float:
    """Mean validation loss over ``train.eval_steps`` micro-batches per rank (always the same samples).

    The training RNG is left as it was (the loader draws from it), so evaluating never changes the run's
    dropout masks and a checkpoint saved after an evaluation resumes exactly."""
    micro, steps = run.train.micro_batch_size, run.train.eval_steps
    with preserved_rng():
        batches = _loader(valid_ds, steps * micro * env.data_parallel_size, 0, micro, env, 0)
        if env.pipeline_parallel_size > 1:
            return pipeline_evaluate(wrapped, batches, steps, micro, run.model.seq_length, env.device)
        wrapped.eval()
        total = torch.zeros((), device=env.device)
        for batch in batches:
            total += masked_loss(wrapped, batch_to_device(batch, env.device), family)[0].detach()
        wrapped.train()
    return _mean_over_ranks(total / steps)


def _embedded_task_accuracy(core, tokenizer, run, limit: int) -> float:
    from bridge.data import embedded_task_paths, evaluate_accuracy, read_task_examples

    _, valid_path = embedded_task_paths(run.data.cache_dir)
    examples = read_task_examples(valid_path)[:limit]
    longest = max(len(tokenizer.encode(e.answer)) for e in examples)
    return evaluate_accuracy(lambda p: generate(core, tokenizer, p, max_new_tokens=longest + 1), examples)


def train(run) -> TrainResult:
    """Run ``run`` (a :class:`bridge.training.RunConfig`) to ``train.train_steps``."""
    family = finalize_run(run)
    env = init_distributed(run)
    cfg = run.train
    checkpointer = Checkpointer(run.checkpoint, run_snapshot(run), cfg.train_steps)
    checkpointer.open()  # a folder that cannot be used fails here, before anything is built
    try:
        return _train(run, env, family, checkpointer)
    finally:
        checkpointer.close()


def _train(run, env: DistributedEnv, family: FamilySpec, checkpointer: Checkpointer) -> TrainResult:
    cfg = run.train
    precision = cfg.precision.value
    seed_everything(cfg.seed, env.device)
    tokenizer = run.built_tokenizer
    accumulation = batch_plan(cfg, env.data_parallel_size)
    check_interleaved_plan(accumulation, cfg.eval_steps, env.pipeline_parallel_size,
                           run.model.virtual_pipeline_model_parallel_size)
    checkpointer.run_config = run_snapshot(run)  # with the global batch now settled
    core, wrapped = _build_model(run, env, precision)
    optimizer = build_optimizer(wrapped if env.device.type == "cuda" else core, run.optimizer,
                                core.config.params_dtype, env.device)
    scheduler = build_scheduler(optimizer, run.optimizer, run.scheduler, cfg.train_steps)
    if env.pipeline_parallel_size > 1:
        configure_pipeline(wrapped, optimizer)

    state, rng_state = TrainState(), None
    loaded = checkpointer.restore(core, optimizer, scheduler,
                                  lambda reference: load_pretrained(reference, core, run.model, checkpointer.run_config))
    if loaded is not None:
        state.step, state.consumed_samples, rng_state = loaded.step, loaded.consumed_samples, loaded.rng_state
    # Weights, optimizer state and RNG are restored; the loop continues with the data the sampler dictates.

    train_ds, valid_ds = family.build_datasets(run.data, tokenizer, run.model)
    total_samples = cfg.train_steps * cfg.global_batch_size
    result = TrainResult()
    reporter = Reporter(run.logging, cfg.train_steps, state.step, env.is_main)
    num_params = count_parameters(core, env.tensor_parallel_size, env.pipeline_parallel_size > 1)
    if env.device.type == "cpu":  # a CPU run that does not fit is killed minutes later without a word
        check_fits_on_cpu(run.model, cfg.micro_batch_size, num_params, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    parts = RunParts(run=run, env=env, family=family, core=core, wrapped=wrapped, optimizer=optimizer,
                     scheduler=scheduler, checkpointer=checkpointer, reporter=reporter, valid_ds=valid_ds,
                     accumulation=accumulation, flops_per_sample=family.flops_per_sample(run.model, num_params),
                     peak=peak_tflops(env.device, core.config.params_dtype))
    reporter.line(f"model: {family.name} {num_params / 1e6:.2f}M parameters, {precision} on {env.device.type}, "
                  f"{env.world_size} process(es) (data parallel {env.data_parallel_size}, tensor parallel "
                  f"{env.tensor_parallel_size}, pipeline parallel {env.pipeline_parallel_size}), global batch "
                  f"{cfg.global_batch_size} = {cfg.micro_batch_size} × {accumulation} × {env.data_parallel_size}")
    score_task = (family.generates_text and run.data.kind is DatasetKind.finetune and not run.data.paths
                  and cfg.task_accuracy_examples)
    pipelined = env.pipeline_parallel_size > 1
    if pipelined and (score_task or (family.generates_text and cfg.generate_sample)):
        # generate() runs the whole model in one process; a stage holds only part of it
        reporter.line(f"pipeline parallel {env.pipeline_parallel_size}: end-of-run sample and embedded task "
                      "accuracy are skipped (generate from the checkpoint with pipeline size 1)")
        score_task = False
    try:
        if score_task and state.step == 0:  # the "before" of the before/after a fine-tune should show
            before = _embedded_task_accuracy(core, tokenizer, run, cfg.task_accuracy_examples)
            reporter.line(f"embedded task accuracy before fine-tuning: {100 * before:.1f}%")
        if state.step < cfg.train_steps:
            batches = _loader(train_ds, total_samples, state.consumed_samples, cfg.micro_batch_size, env,
                              run.data.num_workers)
            restore_rng(rng_state)  # after the loader: building it draws from torch's RNG
            _loop(parts, state, batches, result)
        result.attention_backends = sorted({str(getattr(m.last_backend, "value", m.last_backend))
                                            for m in core.modules() if getattr(m, "last_backend", None)})
        result.valid_loss = evaluate(wrapped, valid_ds, run, env, family)  # leaves the RNG the checkpoint records
        reporter.metrics(cfg.train_steps, {"loss": result.valid_loss}, prefix="valid")
        result.checkpoint = checkpointer.save_final(state.step, state.consumed_samples, state.loss, core,
                                                    optimizer, scheduler)
        if result.checkpoint:
            reporter.line(f"checkpoint {result.checkpoint}")
        if family.generates_text and cfg.generate_sample and not pipelined:
            result.sample = generate(core, tokenizer, SAMPLE_PROMPT, max_new_tokens=64)
            reporter.line(f"sample: {SAMPLE_PROMPT}{result.sample!r}")
        if score_task:
            result.accuracy = _embedded_task_accuracy(core, tokenizer, run, cfg.task_accuracy_examples)
            reporter.line(f"embedded task accuracy: {100 * result.accuracy:.1f}%")
    finally:
        reporter.close()
    return result


def _train_step(parts: RunParts, batches) -> tuple:
    """Forward + backward of one optimizer step's micro-batches: ``(mean loss over ranks, tokens per sample)``."""
    env, cfg = parts.env, parts.run.train
    wrapped = parts.wrapped
    for chunk in as_chunks(wrapped):
        chunk.zero_grad_buffer()
    parts.optimizer.zero_grad()
    if env.pipeline_parallel_size > 1:  # GPT only: every sample is seq_length tokens
        loss = pipeline_train_step(wrapped, batches, parts.accumulation, cfg.micro_batch_size,
                                   parts.run.model.seq_length, env.device)
        return loss, parts.run.model.seq_length
    loss_scale = getattr(parts.optimizer, "get_loss_scale", None)  # megatron-core fp16: dynamic loss scale
    step_loss = torch.zeros((), device=env.device)
    sample_tokens = 0
    micro_batches = [batch_to_device(next(batches), env.device) for _ in range(parts.accumulation)]
    # Each micro-batch's mean loss weighs 1/accumulation, or, with megatron-core's calculate_per_token_loss,
    # its share of the loss tokens of the whole global batch (the data-parallel wrappers then sum gradients).
    per_token = parts.run.model.calculate_per_token_loss
    total_tokens = global_batch_tokens(micro_batches) if per_token else None
    for i, batch in enumerate(micro_batches):
        sample_tokens = parts.family.tokens_per_sample(batch)
        with wrapped.no_sync() if i < parts.accumulation - 1 else nullcontext():
            loss, tokens = masked_loss(wrapped, batch, parts.family)
            weight = tokens / total_tokens if per_token else 1.0 / parts.accumulation
            scale = loss_scale() if callable(loss_scale) else 1.0
            (loss * scale * weight).backward()
        step_loss += loss.detach() * weight
    _finish_grads(wrapped, env)
    return (sum_over_data_parallel(step_loss) if per_token else _mean_over_ranks(step_loss)), sample_tokens


def _loop(parts: RunParts, state: TrainState, batches, result: TrainResult) -> None:
    run, env, reporter, checkpointer = parts.run, parts.env, parts.reporter, parts.checkpointer
    cfg = run.train
    first_step = state.step
    window_time, window_steps, window_tokens = 0.0, 0, 0  # step time only: evaluation and saving excluded
    run_time, run_tokens, run_flops = 0.0, 0, 0.0
    while state.step < cfg.train_steps:
        step_start = time.perf_counter()
        mean_loss, sample_tokens = _train_step(parts, batches)
        if not math.isfinite(mean_loss) and cfg.exit_on_nan:
            raise TrainingDivergedError(
                f"loss is {mean_loss} at step {state.step + 1}: stopping; lower optimizer.lr, raise "
                f"scheduler.warmup_steps or check the data.{checkpointer.divergence_note()}")
        ok, grad_norm, _ = parts.optimizer.step()
        if ok:
            parts.scheduler.step(increment=1)
        state.step += 1
        state.consumed_samples += cfg.global_batch_size
        state.loss = mean_loss
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        step_time = time.perf_counter() - step_start
        tokens = cfg.global_batch_size * sample_tokens
        if state.step > first_step + 1 or cfg.train_steps - first_step == 1:  # the first step pays for warm-up
            run_time, run_tokens = run_time + step_time, run_tokens + tokens
            run_flops += cfg.global_batch_size * parts.flops_per_sample
        window_time, window_steps, window_tokens = window_time + step_time, window_steps + 1, window_tokens + tokens
        result.steps.append(state.step)
        result.losses.append(mean_loss)
        reporter.advance(mean_loss)
        if state.step % cfg.log_interval == 0 or state.step == cfg.train_steps:
            tflops = window_steps * cfg.global_batch_size * parts.flops_per_sample / window_time / env.world_size / 1e12
            reporter.metrics(state.step, {
                "loss": mean_loss, "lr": parts.optimizer.param_groups[0]["lr"],
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens/s": window_tokens / window_time, "TFLOP/s": tflops,
                "mfu": tflops / parts.peak if parts.peak else None, "peak_mem_GiB": peak_memory_gib(env.device),
            })
            window_time, window_steps, window_tokens = 0.0, 0, 0
        if cfg.eval_interval and state.step % cfg.eval_interval == 0 and state.step < cfg.train_steps:
            reporter.metrics(state.step, {"loss": evaluate(parts.wrapped, parts.valid_ds, run, env, parts.family)},
                             prefix="valid")
        if checkpointer.due(state.step):
            path = checkpointer.save(state.step, state.consumed_samples, state.loss, parts.core, parts.optimizer,
                                     parts.scheduler)
            reporter.line(f"saved checkpoint {path}")
    if run_time > 0:
        result.tokens_per_second = run_tokens / run_time
        result.tflops_per_gpu = run_flops / run_time / env.world_size / 1e12
        result.mfu = result.tflops_per_gpu / parts.peak if parts.peak else None
