"""The CPU data-parallel wrapper: what megatron-core's finalize_model_grads reads, and the CUDA-only switches."""

from __future__ import annotations

import pytest
import torch

from bridge.distributed import ensure_model_parallel
from bridge.training.data_parallel import AllReduceDataParallel, wrap_data_parallel


def test_overlapping_the_gradient_reduction_needs_cuda():
    ensure_model_parallel()
    with pytest.raises(ValueError, match="optimizer.overlap_grad_reduce=true needs CUDA"):
        wrap_data_parallel(torch.nn.Linear(2, 2), torch.device("cpu"), False, overlap_grad_reduce=True)


def test_cpu_wrapper_answers_megatron_cores_gradient_hooks():
    ensure_model_parallel()
    wrapped = wrap_data_parallel(torch.nn.Linear(2, 2), torch.device("cpu"), False)
    assert isinstance(wrapped, AllReduceDataParallel)
    assert wrapped.ddp_config.use_megatron_fsdp is False  # read by finalize_model_grads
    wrapped(torch.ones(1, 2)).sum().backward()
    grad = wrapped.module.weight.grad.clone()
    wrapped.finish_grad_sync(force_all_reduce=True)  # one process: the gradient stays as it is
    assert torch.equal(wrapped.module.weight.grad, grad)
