"""Data-parallel wrapping of the model.

On CUDA: megatron-core's ``DistributedDataParallel`` (contiguous fp32 gradient buffers, bucketed
all-reduce or reduce-scatter for the distributed optimizer). Its buffers are allocated on the current CUDA
device unconditionally, so on the CPU (gloo) :class:`AllReduceDataParallel` does the same job more simply:
gradients accumulate in ``param.grad`` and are averaged over the data-parallel group once per step. Both
expose what the trainer and megatron-core's ``finalize_model_grads`` use: ``module``, ``ddp_config``,
``no_sync()``, ``finish_grad_sync()``, ``zero_grad_buffer()``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class AllReduceDataParallel(torch.nn.Module):
    """Averages gradients over the data-parallel ranks in ``finish_grad_sync`` (one flat all-reduce); sums them
    when the model's config has ``calculate_per_token_loss`` (the loss is already divided by the global batch's
    tokens), as megatron-core's ``DistributedDataParallel`` does."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        from megatron.core.distributed import DistributedDataParallelConfig

        self.module = module
        self.ddp_config = DistributedDataParallelConfig()  # read by megatron-core's finalize_model_grads
        self.group = parallel_state.get_data_parallel_group()
        self.size = parallel_state.get_data_parallel_world_size()
        self.average = not getattr(getattr(module, "config", None), "calculate_per_token_loss", False)
        if self.size > 1:  # identical starting weights on every rank (each initialised from the same seed)
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=dist.get_global_rank(self.group, 0), group=self.group)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Gradients are only reduced in ``finish_grad_sync``, so accumulation needs nothing here."""
        yield

    @torch.no_grad()
    def finish_grad_sync(self, force_all_reduce: bool = False) -> None:
        """Average the gradients over the data-parallel group (``force_all_reduce``: megatron-core's hook
        argument; this wrapper always all-reduces)."""
        if self.size == 1:
            return
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.group)
        if self.average:
            flat /= self.size
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    def zero_grad_buffer(self) -> None:
        for p in self.module.parameters():
            p.grad = None

    def sharded_state_dict(self, *args, **kwargs):
        return self.module.sharded_state_dict(*args, **kwargs)


def wrap_data_parallel(model: torch.nn.Module, device: torch.device, use_distributed_optimizer: bool,
                       bucketed: bool = True, overlap_grad_reduce: bool = False):
    """``model`` wrapped for data parallelism on ``device`` (see the module docstring). ``bucketed=False``
    (virtual pipeline chunks after the first, as megatron-core's training does) reduces the chunk's gradients
    in one bucket."""
    if device.type != "cuda":
        if overlap_grad_reduce:
            raise ValueError("optimizer.overlap_grad_reduce=true needs CUDA (megatron-core's DDP buckets); set it "
                             "to false for CPU runs")
        return AllReduceDataParallel(model)
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,  # the trainer checks the loss itself and stops with its own message
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model,
                                   disable_bucketing=not bucketed)
