"""Pipeline-parallel steps (GPT on CUDA GPUs) through megatron-core's schedules.

Each rank holds one stage: ``provide()`` builds the layers of this pipeline rank, with the embedding on the
first stage (``pre_process``) and the output layer + loss on the last (``post_process``). With virtual
pipeline stages (``virtual_pipeline_model_parallel_size``) a rank holds one model chunk per virtual stage
and the schedule is megatron-core's interleaved one, which shrinks the pipeline bubble by that factor.
One optimizer step is one call of megatron-core's ``get_forward_backward_func()`` (1F1B, or interleaved 1F1B,
over ``accumulation`` micro-batches); activations [s, b, h] travel between stages by NCCL p2p, which is why
this runs on CUDA only.

Data: the chunk that holds the embedding reads tokens / position ids, the one that holds the output layer
labels / loss mask; both draw the same micro-batches (same data-parallel rank, same sampler), the others
read nothing. The loss exists on the last
stage only: it is averaged over the data-parallel group there and broadcast over the pipeline group, so every
rank (rank 0 logs) holds the same number and stops together on a NaN.

The schedule's hooks are set as megatron's own pretraining sets them with its DDP wrapper:
``no_sync_func`` (no gradient reduction before the last micro-batch), ``finalize_model_grads_func``
(data-parallel reduction, then the all-reduce of the tied embedding between first and last stage) and
``grad_scale_func`` (the optimizer's loss scale; 1 for bf16).
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_attr_wrapped_model, get_model_config

from bridge.training.loss import batch_to_device, masked_mean


def as_chunks(wrapped) -> List[torch.nn.Module]:
    """This rank's wrapped model chunks: a list with virtual pipeline stages, else the one module in a list."""
    return list(wrapped) if isinstance(wrapped, (list, tuple)) else [wrapped]


def check_interleaved_plan(accumulation: int, eval_steps: int, pipeline_size: int, virtual_size) -> None:
    """megatron-core's interleaved schedule runs the micro-batches in groups of ``pipeline_size`` per virtual
    stage: a step's micro-batches (and the evaluation's) must fill whole groups."""
    if not virtual_size or virtual_size <= 1:
        return
    for what, count, setting in (("step", accumulation, "train.global_batch_size / (train.micro_batch_size × "
                                  "data-parallel size)"), ("evaluation", eval_steps, "train.eval_steps")):
        if count % pipeline_size:
            raise ValueError(
                f"virtual pipeline stages need a multiple of pipeline_model_parallel_size={pipeline_size} "
                f"micro-batches per {what}, got {count} ({setting}); raise it to a multiple of {pipeline_size}")


def configure_pipeline(wrapped, optimizer) -> None:
    """Point the schedule's hooks at ``wrapped`` (megatron-core DDP, one per chunk) and ``optimizer``."""
    chunks = as_chunks(wrapped)
    config = get_model_config(chunks[0])
    no_sync = [chunk.no_sync for chunk in chunks]
    config.no_sync_func = no_sync if len(no_sync) > 1 else no_sync[0]
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss


def _loss_func(loss_mask: torch.Tensor, per_token: bool, output_tensor: torch.Tensor):
    """Last stage: per-token losses [b, s] -> the masked mean (the schedule divides it by the micro-batch count);
    with ``calculate_per_token_loss``, the masked sum and its token count (the schedule divides the gradients by
    the global batch's tokens in ``finalize_model_grads``)."""
    loss, tokens = masked_mean(output_tensor, loss_mask)
    if per_token:
        total = loss * tokens
        return total, tokens.int(), {"loss_sum": total.detach().clone(), "tokens": tokens.detach().clone()}
    return loss, {"loss": loss.detach().clone()}  # a copy: the schedule divides ``loss`` in place


def _reads(chunk) -> tuple:
    """``(first, last)``: whether ``chunk`` holds the embedding (reads tokens) / the output layer (labels)."""
    return bool(get_attr_wrapped_model(chunk, "pre_process")), bool(get_attr_wrapped_model(chunk, "post_process"))


def _forward_step(device: torch.device, data_iterator: Optional[Iterator[Dict]], model):
    first, last = _reads(model)
    batch = batch_to_device(next(data_iterator), device) if first or last else {}
    output = model(batch["tokens"] if first else None, batch["position_ids"] if first else None, None,
                   labels=batch["labels"] if last else None)  # last: losses [b, s]; others: hidden [s, b, h]
    per_token = bool(get_model_config(model).calculate_per_token_loss)
    return output, partial(_loss_func, batch["loss_mask"] if last else None, per_token)


def _broadcast_last_stage_mean(losses: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean of the last stage's micro-batch losses over the data-parallel group, on every rank."""
    value = torch.zeros((), dtype=torch.float32, device=device)
    if parallel_state.is_pipeline_last_stage():
        dp_size = parallel_state.get_data_parallel_world_size()
        if losses and "tokens" in losses[0]:  # per-token loss: the global batch's token-weighted mean
            pair = torch.stack([torch.stack([item["loss_sum"].float(), item["tokens"].float()]) for item in losses])
            pair = pair.sum(dim=0)
            if dp_size > 1:
                dist.all_reduce(pair, group=parallel_state.get_data_parallel_group())
            value = pair[0] / pair[1].clamp(min=1.0)
        else:
            value = torch.stack([item["loss"].float() for item in losses]).mean()
            if dp_size > 1:
                dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
                value /= dp_size
    dist.broadcast(value, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return float(value)


def _run_schedule(wrapped, batches, num_microbatches: int, micro_batch_size: int, seq_length: int,
                  device: torch.device, forward_only: bool) -> float:
    chunks = as_chunks(wrapped)
    if len(chunks) > 1:  # the interleaved schedule takes one iterator per chunk
        batches = [batches if any(_reads(chunk)) else None for chunk in chunks]
    losses = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, device), data_iterator=batches, model=chunks,
        num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
        forward_only=forward_only)
    return _broadcast_last_stage_mean(losses, device)


def pipeline_train_step(wrapped, batches: Optional[Iterator[Dict]], accumulation: int, micro_batch_size: int,
                        seq_length: int, device: torch.device) -> float:
    """Forward + backward of one global batch on this stage; gradients reduced; returns the mean loss."""
    return _run_schedule(wrapped, batches, accumulation, micro_batch_size, seq_length, device, forward_only=False)


@torch.no_grad()
def pipeline_evaluate(wrapped, batches: Optional[Iterator[Dict]], steps: int, micro_batch_size: int,
                      seq_length: int, device: torch.device) -> float:
    """Mean loss of ``steps`` micro-batches per data-parallel rank, forward only."""
    for chunk in as_chunks(wrapped):
        chunk.eval()
    try:
        return _run_schedule(wrapped, batches, steps, micro_batch_size, seq_length, device, forward_only=True)
    finally:
        for chunk in as_chunks(wrapped):
            chunk.train()
