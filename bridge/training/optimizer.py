"""Optimizer and learning-rate schedule.

On CUDA the optimizer is megatron-core's (``get_megatron_optimizer``: fp32 main weights for bf16/fp16
models, loss scaling for fp16, optional distributed optimizer). megatron-core's optimizers allocate their
bookkeeping tensors and compute the gradient norm on CUDA unconditionally, so on the CPU a small
:class:`LocalOptimizer` with the same interface (``step() -> (ok, grad_norm, num_zeros)``,
``zero_grad``, ``sharded_state_dict``, ``load_state_dict``, ``param_groups``) wraps a torch optimizer
instead; its checkpoint state uses megatron-core's own sharding helpers, so both save the same format.
The schedule is megatron-core's ``OptimizerParamScheduler`` in both cases.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from megatron.core.dist_checkpointing.optimizer import (get_param_id_to_sharded_param_map,
                                                         optim_state_to_sharding_state)
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from bridge.training.config import OptimizerConfig, OptimizerType, SchedulerConfig


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and 1-D parameters (norm weights) get no weight decay, as megatron-core does by default."""
    return name.endswith(".bias") or param.ndim == 1


class LocalOptimizer:
    """A torch optimizer behind megatron-core's optimizer interface, for CPU runs (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, cfg: OptimizerConfig) -> None:
        decay, no_decay = [], []
        for name, param in module.named_parameters():
            if param.requires_grad:
                (no_decay if _no_weight_decay(name, param) else decay).append(param)
        groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]
        groups = [g for g in groups if g["params"]]
        self.cfg = cfg
        if cfg.optimizer is OptimizerType.sgd:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.sgd_momentum,
                                             weight_decay=cfg.weight_decay)
        else:
            cls = torch.optim.AdamW if cfg.optimizer is OptimizerType.adamw else torch.optim.Adam
            self.optimizer = cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)

    @property
    def param_groups(self) -> List[dict]:
        return self.optimizer.param_groups

    def parameters(self) -> List[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> Tuple[bool, Optional[float], None]:
        """Clip, then step; a non-finite gradient norm skips the update (returns ``ok=False``)."""
        params = [p for p in self.parameters() if p.grad is not None]
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            return False, grad_norm, None
        self.optimizer.step()
        return True, grad_norm, None

    def _init_state(self) -> None:
        """Create every state tensor (torch creates them lazily) so a checkpoint can be loaded into them."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state[p]
                if isinstance(self.optimizer, torch.optim.SGD):
                    state.setdefault("momentum_buffer", torch.zeros_like(p))
                else:
                    state.setdefault("step", torch.tensor(0.0))
                    state.setdefault("exp_avg", torch.zeros_like(p))
                    state.setdefault("exp_avg_sq", torch.zeros_like(p))

    def sharded_state_dict(self, model_sharded_state_dict: Dict, is_loading: bool = False) -> Dict:
        """The optimizer state keyed like the model's sharded tensors (``optimizer.state.<key>.<param>``)."""
        if is_loading:
            self._init_state()
        state_dict = self.optimizer.state_dict()
        steps = {float(s["step"]) for s in state_dict["state"].values() if "step" in s}
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self.parameters())
        optim_state_to_sharding_state(state_dict, id_map, exclude_keys=("step",))
        if steps:  # one step count shared by all parameters, as megatron-core saves it
            state_dict["common_step"] = steps.pop()
        return state_dict

    def load_state_dict(self, state_dict: Dict) -> None:
        step = state_dict.pop("common_step", None)
        if step is not None:
            for param_state in state_dict["state"].values():
                param_state["step"] = torch.tensor(float(step))
        self.optimizer.load_state_dict(state_dict)


def build_optimizer(model, cfg: OptimizerConfig, dtype: torch.dtype, device: torch.device):
    """megatron-core's optimizer for ``model`` (a megatron-core DDP module, or a list of them: virtual pipeline
    chunks) on CUDA, :class:`LocalOptimizer` on CPU."""
    if device.type != "cuda":
        if cfg.use_distributed_optimizer:
            raise ValueError("optimizer.use_distributed_optimizer=true needs CUDA (megatron-core's distributed "
                             "optimizer keeps its buffers on the GPU); set it to false for CPU runs")
        return LocalOptimizer(model, cfg)
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    megatron_cfg = MegatronOptimizerConfig(
        optimizer="sgd" if cfg.optimizer is OptimizerType.sgd else "adam",
        decoupled_weight_decay=cfg.optimizer is not OptimizerType.adam,
        lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        adam_beta1=float(cfg.betas[0]), adam_beta2=float(cfg.betas[1]), adam_eps=cfg.eps,
        sgd_momentum=cfg.sgd_momentum, clip_grad=cfg.clip_grad,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
    )
    return get_megatron_optimizer(megatron_cfg, model if isinstance(model, list) else [model])


def build_scheduler(optimizer, opt_cfg: OptimizerConfig, sched_cfg: SchedulerConfig,
                    train_steps: int) -> OptimizerParamScheduler:
    """Linear warmup to ``lr``, then ``decay_style`` down to ``min_lr`` at ``decay_steps``; stepped once per step.

    On resume the values of this run win over the checkpoint's (megatron-core's
    ``override_opt_param_scheduler``; its default keeps the checkpoint's): a lower ``optimizer.lr`` after a
    divergence, another decay style or a longer ``train.train_steps`` take effect. Only the step count comes
    from the checkpoint; the checkpointer logs what changed."""
    decay_steps = sched_cfg.decay_steps or train_steps
    warmup_steps = decay_steps // 10 if sched_cfg.warmup_steps is None else sched_cfg.warmup_steps
    if decay_steps <= warmup_steps:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be below the decay end "
                         f"({decay_steps} steps = scheduler.decay_steps or train.train_steps); lower it or set it to "
                         "null (a tenth of the decay)")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=opt_cfg.lr,
        min_lr=opt_cfg.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=sched_cfg.decay_style.value,
        start_wd=opt_cfg.weight_decay,
        end_wd=opt_cfg.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True,
    )
