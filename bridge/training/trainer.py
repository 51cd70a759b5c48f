"""``train(run)``: build everything a run needs, loop, evaluate, checkpoint, report.

The loop per optimizer step: ``accumulation = global_batch / (micro_batch × data_parallel)`` micro-batches
forward + backward (loss = masked mean over ``loss_mask``, divided by the accumulation count), one
gradient all-reduce over the data-parallel ranks, clip + optimizer step, one LR-schedule step.
With pipeline stages (GPT on CUDA) the forward + backward of a step is megatron-core's 1F1B schedule
instead (:mod:`bridge.training.pipeline`); everything around it is the same loop.
The data order is fixed by ``consumed_samples`` (see :class:`bridge.data.PretrainingSampler`), so a resumed
run draws the samples the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch
import torch.distributed as dist

from bridge.data import DatasetKind, PretrainingSampler
from bridge.models import FamilySpec
from bridge.training.checkpointing import load_checkpoint, resolve_checkpoint, restore_rng, save_checkpoint
from bridge.training.data_parallel import wrap_data_parallel
from bridge.training.distributed import DistributedEnv, init_distributed, seed_everything
from bridge.training.finalize import finalize_run
from bridge.training.generation import generate
from bridge.training.hf_checkpoints import load_pretrained
from bridge.training.loss import batch_to_device, masked_loss
from bridge.training.optimizer import build_optimizer, build_scheduler
from bridge.training.pipeline import configure_pipeline, pipeline_evaluate, pipeline_train_step
from bridge.training.reporting import Reporter
from bridge.training.snapshot import run_snapshot
from bridge.training.throughput import count_parameters, peak_memory_gib, peak_tflops

logger = logging.getLogger("bridge.training")

SAMPLE_PROMPT = "The "
"""Prompt of the end-of-run sample (the embedded corpus is English prose about Python)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


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
    """Micro-batches accumulated per step; global batch must be micro × accumulation × data-parallel size."""
    per_pass = train_cfg.micro_batch_size * data_parallel_size
    if train_cfg.global_batch_size % per_pass != 0:
        raise ValueError(
            f"train.global_batch_size={train_cfg.global_batch_size} is not a multiple of train.micro_batch_size="
            f"{train_cfg.micro_batch_size} × data-parallel size {data_parallel_size} = {per_pass}; "
            f"use a multiple of {per_pass}")
    return train_cfg.global_batch_size // per_pass


def _build_model(run, env: DistributedEnv, precision: str):
    """``(core, wrapped)``: the megatron-core model (checkpoints, generation) and its training wrapper.

    With pipeline stages ``core`` is this rank's stage (``provide()`` reads its place from megatron's state)."""
    core = run.model.provide().to(env.device)
    module = core
    if precision != "fp32":
        from megatron.core.transformer.module import Float16Module

        module = Float16Module(core.config, core)  # casts to bf16/fp16 in, fp32 logits/loss out
    wrapped = wrap_data_parallel(module, env.device, run.optimizer.use_distributed_optimizer)
    if env.device.type == "cuda":
        wrapped.broadcast_params()  # identical starting weights on every data-parallel rank
    return core, wrapped


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
    """Mean validation loss over ``train.eval_steps`` micro-batches per rank (always the same samples)."""
    micro, steps = run.train.micro_batch_size, run.train.eval_steps
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
    precision = run.train.precision.value
    seed_everything(run.train.seed, env.device)
    tokenizer = run.built_tokenizer
    accumulation = batch_plan(run.train, env.data_parallel_size)
    core, wrapped = _build_model(run, env, precision)
    optimizer = build_optimizer(wrapped if env.device.type == "cuda" else core, run.optimizer,
                                core.config.params_dtype, env.device)
    scheduler = build_scheduler(optimizer, run.optimizer, run.scheduler, run.train.train_steps)
    if env.pipeline_parallel_size > 1:
        configure_pipeline(wrapped, optimizer)
    snapshot = run_snapshot(run)

    step, consumed, rng_state = 0, 0, None
    ckpt = run.checkpoint
    if ckpt.resume and resolve_checkpoint(ckpt.dir) is not None:
        state = load_checkpoint(ckpt.dir, core, optimizer, scheduler)
        step, consumed, rng_state = state.step, state.consumed_samples, state.rng_state
        logger.info("resumed from %s at step %d", state.path, step)
    elif ckpt.pretrained_checkpoint:
        path = load_pretrained(ckpt.pretrained_checkpoint, core, run.model)
        logger.info("loaded pretrained weights from %s", path)
    # Weights, optimizer state and RNG are restored; the loop continues with the data the sampler dictates.

    train_ds, valid_ds = family.build_datasets(run.data, tokenizer, run.model)
    cfg = run.train
    total_samples = cfg.train_steps * cfg.global_batch_size
    result = TrainResult()
    reporter = Reporter(run.logging, cfg.train_steps, step, env.is_main)
    num_params = count_parameters(core, env.tensor_parallel_size, env.pipeline_parallel_size > 1)
    flops_per_sample = family.flops_per_sample(run.model, num_params)
    peak = peak_tflops(env.device, core.config.params_dtype)
    reporter.line(f"model: {family.name} {num_params / 1e6:.2f}M parameters, {precision} on {env.device.type}, "
                  f"{env.world_size} process(es) (data parallel {env.data_parallel_size}, tensor parallel "
                  f"{env.tensor_parallel_size}, pipeline parallel {env.pipeline_parallel_size}), global batch "
                  f"{cfg.global_batch_size} = {cfg.micro_batch_size} × {accumulation} × {env.data_parallel_size}")
    score_task = (family.generates_text and run.data.kind is DatasetKind.finetune and not run.data.paths and cfg.task_accuracy_examples)
    pipelined = env.pipeline_parallel_size > 1
    if pipelined and (score_task or (family.generates_text and cfg.generate_sample)):
        # generate() runs the whole model in one process; a stage holds only part of it
        reporter.line(f"pipeline parallel {env.pipeline_parallel_size}: end-of-run sample and embedded task "
                      "accuracy are skipped (generate from the checkpoint with pipeline size 1)")
        score_task = False
    try:
        if score_task and step == 0:  # the "before" of the before/after a fine-tune should show
            before = _embedded_task_accuracy(core, tokenizer, run, cfg.task_accuracy_examples)
            reporter.line(f"embedded task accuracy before fine-tuning: {100 * before:.1f}%")
        if step < cfg.train_steps:
            batches = _loader(train_ds, total_samples, consumed, cfg.micro_batch_size, env, run.data.num_workers)
            restore_rng(rng_state)  # after the loader: building it draws from torch's RNG
            _loop(run, env, family, wrapped, core, optimizer, scheduler, batches, valid_ds, accumulation, step,
                  snapshot, reporter, result, flops_per_sample, peak)
        result.attention_backends = sorted({str(getattr(m.last_backend, "value", m.last_backend))
                                            for m in core.modules() if getattr(m, "last_backend", None)})
        result.valid_loss = evaluate(wrapped, valid_ds, run, env, family)
        reporter.metrics(cfg.train_steps, {"loss": result.valid_loss}, prefix="valid")
        if ckpt.dir:
            result.checkpoint = save_checkpoint(ckpt.dir, cfg.train_steps, core, optimizer, scheduler,
                                                total_samples, snapshot, ckpt.keep_last)
            reporter.line(f"saved checkpoint {result.checkpoint}")
        if family.generates_text and cfg.generate_sample and not pipelined:
            result.sample = generate(core, tokenizer, SAMPLE_PROMPT, max_new_tokens=64)
            reporter.line(f"sample: {SAMPLE_PROMPT}{result.sample!r}")
        if score_task:
            result.accuracy = _embedded_task_accuracy(core, tokenizer, run, cfg.task_accuracy_examples)
            reporter.line(f"embedded task accuracy: {100 * result.accuracy:.1f}%")
    finally:
        reporter.close()
    return result


def _loop(run, env, family, wrapped, core, optimizer, scheduler, batches, valid_ds, accumulation, step,
          snapshot, reporter, result, flops_per_sample, peak) -> None:
    cfg, ckpt = run.train, run.checkpoint
    first_step = step
    window_time, window_steps, window_tokens = 0.0, 0, 0  # step time only: evaluation and saving excluded
    run_time, run_tokens, run_flops = 0.0, 0, 0.0
    loss_scale = getattr(optimizer, "get_loss_scale", None)  # megatron-core fp16: dynamic loss scale
    while step < cfg.train_steps:
        step_start = time.perf_counter()
        wrapped.zero_grad_buffer()
        optimizer.zero_grad()
        if env.pipeline_parallel_size > 1:  # GPT only: every sample is seq_length tokens
            sample_tokens = run.model.seq_length
            mean_loss = pipeline_train_step(wrapped, batches, accumulation, cfg.micro_batch_size, sample_tokens,
                                            env.device)
        else:
            step_loss = torch.zeros((), device=env.device)
            sample_tokens = 0
            for i in range(accumulation):
                batch = batch_to_device(next(batches), env.device)
                sample_tokens = family.tokens_per_sample(batch)
                with wrapped.no_sync() if i < accumulation - 1 else nullcontext():
                    loss, _ = masked_loss(wrapped, batch, family)
                    scale = loss_scale() if callable(loss_scale) else 1.0
                    (loss * scale / accumulation).backward()
                step_loss += loss.detach() / accumulation
            _finish_grads(wrapped, env)
            mean_loss = _mean_over_ranks(step_loss)
        if not math.isfinite(mean_loss) and cfg.exit_on_nan:
            raise TrainingDivergedError(
                f"loss is {mean_loss} at step {step + 1}: stopping. The last checkpoint"
                f"{' in ' + ckpt.dir if ckpt.dir else ''} is kept as it was; lower optimizer.lr, raise "
                "scheduler.warmup_steps or check the data")
        ok, grad_norm, _ = optimizer.step()
        if ok:
            scheduler.step(increment=1)
        step += 1
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        step_time = time.perf_counter() - step_start
        tokens = cfg.global_batch_size * sample_tokens
        if step > first_step + 1 or cfg.train_steps - first_step == 1:  # the first step pays for warm-up
            run_time, run_tokens = run_time + step_time, run_tokens + tokens
            run_flops += cfg.global_batch_size * flops_per_sample
        window_time, window_steps, window_tokens = window_time + step_time, window_steps + 1, window_tokens + tokens
        result.steps.append(step)
        result.losses.append(mean_loss)
        reporter.advance(mean_loss)
        if step % cfg.log_interval == 0 or step == cfg.train_steps:
            tflops = window_steps * cfg.global_batch_size * flops_per_sample / window_time / env.world_size / 1e12
            reporter.metrics(step, {
                "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens/s": window_tokens / window_time, "TFLOP/s": tflops,
                "mfu": tflops / peak if peak else None, "peak_mem_GiB": peak_memory_gib(env.device),
            })
            window_time, window_steps, window_tokens = 0.0, 0, 0
        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < cfg.train_steps:
            reporter.metrics(step, {"loss": evaluate(wrapped, valid_ds, run, env, family)}, prefix="valid")
        if ckpt.dir and ckpt.save_interval and step % ckpt.save_interval == 0 and step < cfg.train_steps:
            path = save_checkpoint(ckpt.dir, step, core, optimizer, scheduler, step * cfg.global_batch_size,
                                   snapshot, ckpt.keep_last)
            reporter.line(f"saved checkpoint {path}")
    if run_time > 0:
        result.tokens_per_second = run_tokens / run_time
        result.tflops_per_gpu = run_flops / run_time / env.world_size / 1e12
        result.mfu = result.tflops_per_gpu / peak if peak else None
