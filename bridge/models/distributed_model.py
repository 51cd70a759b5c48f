"""``provider.provide_distributed_model(...)``: the model chunks of this rank, wrapped for training.

Megatron Bridge's providers have this entry point; it takes the same arguments here and returns the same
thing: a list with one module per virtual pipeline stage of this rank (one module without virtual
pipelining), each cast to the provider's dtype (``Float16Module`` for bf16 / fp16) and wrapped for data
parallelism: megatron-core's ``DistributedDataParallel`` on CUDA, and on the CPU (where megatron-core's
DDP cannot allocate its buffers) PyTorch's ``DistributedDataParallel`` over megatron's data-parallel group,
which averages gradients the same way.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.transformer.module import Float16Module

Hook = Callable[[List[torch.nn.Module]], Optional[List[torch.nn.Module]]]


def _run_hooks(hooks: Union[None, Hook, Sequence[Hook]], model: List[torch.nn.Module]) -> List[torch.nn.Module]:
    if hooks is None:
        return model
    for hook in hooks if isinstance(hooks, (list, tuple)) else [hooks]:
        if not callable(hook):
            raise TypeError(f"wrap hooks must be callables taking the list of model chunks, got {hook!r}")
        result = hook(model)
        model = model if result is None else result
    return model


def build_model_chunks(provider) -> List[torch.nn.Module]:
    """This rank's model: one chunk per virtual pipeline stage (``provide(vp_stage=i)``), or one module."""
    vp = provider.virtual_pipeline_model_parallel_size
    if vp is not None and vp > 1:
        return [provider.provide(vp_stage=stage) for stage in range(vp)]
    return [provider.provide()]


def provide_distributed_model(
    provider,
    ddp_config: Any = None,
    model_type: ModelType = ModelType.encoder_or_decoder,
    overlap_param_gather_with_optimizer_step: bool = False,
    fp16: Optional[bool] = None,
    bf16: Optional[bool] = None,
    use_megatron_fsdp: bool = False,
    use_torch_fsdp2: bool = False,
    wrap_with_ddp: bool = True,
    data_parallel_random_init: bool = False,
    use_cpu_initialization: Optional[bool] = False,
    init_model_with_meta_device: Optional[bool] = None,
    pre_wrap_hook: Union[None, Hook, Sequence[Hook]] = None,
    post_wrap_hook: Optional[Hook] = None,
    mixed_precision_wrapper: Optional[Callable] = Float16Module,
    pg_collection: Any = None,
) -> List[torch.nn.Module]:
    """The provider's model for distributed training (see the module docstring)."""
    if wrap_with_ddp and ddp_config is None:
        raise ValueError("ddp_config is required when wrap_with_ddp is True "
                         "(megatron.core.distributed.DistributedDataParallelConfig)")
    for name, value in (("use_megatron_fsdp", use_megatron_fsdp), ("use_torch_fsdp2", use_torch_fsdp2),
                        ("init_model_with_meta_device", init_model_with_meta_device),
                        ("overlap_param_gather_with_optimizer_step", overlap_param_gather_with_optimizer_step)):
        if value:
            raise ValueError(f"provide_distributed_model({name}=True) is not supported by bridge; leave it off")
    if pg_collection is not None:
        raise ValueError("provide_distributed_model(pg_collection=...) is not supported: bridge uses megatron's "
                         "global parallel state (set up from the provider's parallel sizes)")
    if fp16 and bf16:
        raise ValueError("Only one of fp16 and bf16 can be enabled.")
    if fp16 is not None or bf16 is not None:
        provider.fp16, provider.bf16 = bool(fp16), bool(bf16)
    if use_cpu_initialization:
        provider.use_cpu_initialization = True
    provider.finalize()

    model = build_model_chunks(provider)
    for chunk in model:
        chunk.model_type = model_type
    model = _run_hooks(pre_wrap_hook, model)
    for chunk in model:
        for param in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    config = model[0].config
    if mixed_precision_wrapper is not None and (config.fp16 or config.bf16):
        model = [mixed_precision_wrapper(config, chunk) for chunk in model]
    if wrap_with_ddp:
        model = [_wrap_ddp(chunk, config, ddp_config, index, data_parallel_random_init) for index, chunk in enumerate(model)]
    if post_wrap_hook is not None:
        model = _run_hooks(post_wrap_hook, model)
    return model


def _wrap_ddp(chunk: torch.nn.Module, config, ddp_config, index: int, random_init: bool) -> torch.nn.Module:
    if torch.cuda.is_available() and next(chunk.parameters()).is_cuda:
        from megatron.core.distributed import DistributedDataParallel

        wrapped = DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                          disable_bucketing=index > 0)
        if not random_init:
            wrapped.broadcast_params()
        return wrapped
    from megatron.core import parallel_state

    return torch.nn.parallel.DistributedDataParallel(chunk, process_group=parallel_state.get_data_parallel_group())
