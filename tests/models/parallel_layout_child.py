"""A few SGD steps of a tiny GPT / T5 at one tensor-parallel layout on the CPU (gloo); rank 0 writes the losses.

    torchrun --nproc-per-node=2 tests/models/parallel_layout_child.py --layouts gpt:1,gpt:2,gpt:2sp --dir DIR --out OUT

The trainer runs tensor parallelism on CUDA only: megatron-core's sequence-parallel and p2p helpers allocate
their buffers on ``torch.cuda.current_device()``. This harness points that at the CPU so that megatron-core's
own tensor-parallel and sequence-parallel code (mappings, norms, gradient reduction) runs under gloo, which
supports every collective it uses (all-reduce, all_gather_into_tensor, reduce_scatter_tensor).
Every layout starts from the same weights: the first layout of a family saves its initial weights (a
megatron-core distributed checkpoint, one global tensor per weight), the others load them, resharded to their
own tensor-parallel split. tensor parallel 1 in a 2-process world is data parallel 2 with identical batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import torch


def point_cuda_at_cpu() -> None:
    """megatron-core allocates communication buffers on ``torch.cuda.current_device()``; on a CPU-only test
    machine those go to the CPU instead (a device name is accepted wherever a device index is). Under sequence
    parallelism it also forks its CUDA RNG tracker around the embedding and the layers (for dropout, which is
    off here): the fork becomes a no-op."""
    from megatron.core import tensor_parallel

    torch.cuda.current_device = lambda: "cpu"
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *args, **kwargs: contextlib.nullcontext()


def provider(family: str, tp: int, sp: bool):
    from bridge.models import get_preset

    common = dict(num_layers=2, tensor_model_parallel_size=tp, sequence_parallel=sp, vocab_size=256,
                  use_cpu_initialization=True, attention_backend="local")
    if family == "gpt":
        return get_preset("gpt_tiny", seq_length=32, **common)
    return get_preset("t5_tiny", seq_length=32, decoder_seq_length=16, **common)


def batches(family: str, steps: int, micro: int = 2):
    """Fixed random token batches (the same on every rank and layout)."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        if family == "gpt":
            tokens = torch.randint(0, 256, (micro, 33), generator=gen)
            yield dict(tokens=tokens[:, :-1], labels=tokens[:, 1:], position_ids=torch.arange(32).expand(micro, 32))
        else:
            yield dict(enc=torch.randint(0, 256, (micro, 32), generator=gen),
                       dec=torch.randint(0, 256, (micro, 16), generator=gen),
                       labels=torch.randint(0, 256, (micro, 16), generator=gen))


def loss_of(model, family: str, batch) -> torch.Tensor:
    if family == "gpt":
        return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).mean()
    micro = batch["enc"].shape[0]
    enc_mask = torch.ones(micro, 1, 32, 32, dtype=torch.bool)
    dec_mask = torch.tril(torch.ones(16, 16, dtype=torch.bool)).expand(micro, 1, 16, 16)
    cross = torch.ones(micro, 1, 16, 32, dtype=torch.bool)
    return model(batch["enc"], batch["dec"], ~enc_mask, ~dec_mask, ~cross, lm_labels=batch["labels"]).mean()


def run_layout(family: str, tp: int, sp: bool, reduce: bool, steps: int, init: str, save: bool) -> dict:
    """Build the model at this layout (the first layout of a family saves its initial weights to ``folder``,
    the others load them, resharded), take ``steps`` SGD steps; returns the losses."""
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import _allreduce_non_tensor_model_parallel_grads

    from bridge.training.checkpointing import SyncTorchDistSaveStrategy, load_weights

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    torch.manual_seed(1234)
    model = provider(family, tp, sp).provide()
    if not save:
        load_weights(init, model)
    else:
        os.makedirs(init, exist_ok=True)
        dist_checkpointing.save({"model": model.sharded_state_dict()}, init, sharded_strategy=SyncTorchDistSaveStrategy())
    model.ddp_config = DistributedDataParallelConfig()  # what megatron's DDP wrapper carries; read by the reduction
    marked = sorted(name for name, p in model.named_parameters() if getattr(p, "sequence_parallel", False))
    losses = []
    for batch in batches(family, steps):
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, family, batch)
        loss.backward()
        if reduce:  # megatron-core's own step: sum the gradients of sequence-parallel parameters over the TP group
            _allreduce_non_tensor_model_parallel_grads([model], model.config)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        losses.append(float(loss))
    return {"losses": losses, "sequence_parallel_params": marked}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", required=True,
                        help="comma-separated family:tp[sp][-noreduce], e.g. gpt:1,gpt:2,gpt:2sp (the first of a "
                             "family saves the initial weights the others load)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dir", required=True, help="folder for the initial weights")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    point_cuda_at_cpu()
    import torch.distributed as dist

    from bridge.distributed import init_process_group

    init_process_group(use_cuda=False)
    results = {}
    for layout in args.layouts.split(","):
        family, spec = layout.split(":")
        tp = int(spec.split("sp")[0].split("-")[0])
        first = not any(done.startswith(family + ":") for done in results)
        results[layout] = run_layout(family, tp, "sp" in spec, not spec.endswith("-noreduce"), args.steps,
                                     os.path.join(args.dir, f"{family}_init"), save=first)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
