"""A few SGD steps of a tiny GPT / T5 at one tensor-parallel layout on the CPU (gloo); rank 0 writes the losses.

    torchrun --nproc-per-node=2 tests/training/parallel_layout_child.py --layouts gpt:1,gpt:2,gpt:2sp --dir DIR --out OUT

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
    off here): the fork becomes a no-op. With pipeline stages it moves the last stage's copy of the tied
    embedding to CUDA, synchronises CUDA after its p2p transfers (both become no-ops) and counts tokens in a
    tensor made on "cuda" (made on the CPU instead)."""
    from megatron.core import tensor_parallel

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None  # megatron-core's p2p waits for its batched sends
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the tied embedding's copy on the last stage
    zeros = torch.zeros  # the pipeline schedules count tokens in a torch.zeros(..., device="cuda")
    torch.zeros = lambda *args, device=None, **kwargs: zeros(*args, device="cpu" if device == "cuda" else device,
                                                           **kwargs)
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *args, **kwargs: contextlib.nullcontext()


def provider(family: str, tp: int, sp: bool, pp: int = 1, vp=None):
    from bridge.models import get_preset

    common = dict(num_layers=2, tensor_model_parallel_size=tp, sequence_parallel=sp, vocab_size=256,
                  use_cpu_initialization=True, attention_backend="local")
    if family == "gpt":
        return get_preset("gpt_tiny", seq_length=32, **{**common, "num_layers": 4},
                          pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp)
    return get_preset("t5_tiny", seq_length=32, decoder_seq_length=16, **common)


def batches(family: str, steps: int, micro: int = 2):
    """Fixed random token batches (the same on every rank and layout)."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        if family == "gpt":
            tokens = torch.randint(0, 256, (micro, 33), generator=gen)
            yield dict(tokens=tokens[:, :-1], labels=tokens[:, 1:], position_ids=torch.arange(32).expand(micro, 32),
                       loss_mask=torch.ones(micro, 32))
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


def run_pipeline_layout(pp: int, vp, steps: int, init: str) -> dict:
    """GPT at pipeline ``pp`` × virtual ``vp`` from the saved initial weights, through bridge's pipeline step
    (megatron-core's interleaved schedule, p2p over gloo); each step's 2 samples are 2 micro-batches of 1."""
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from bridge.models.distributed_model import build_model_chunks
    from bridge.training.checkpointing import load_weights
    from bridge.training.data_parallel import AllReduceDataParallel
    from bridge.training.model_chunks import as_one_module
    from bridge.training.pipeline import pipeline_train_step

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    torch.manual_seed(1234)
    chunks = build_model_chunks(provider("gpt", 1, False, pp, vp))
    load_weights(init, as_one_module(chunks))
    wrapped = [AllReduceDataParallel(chunk) for chunk in chunks]
    config = chunks[0].config
    config.no_sync_func = [chunk.no_sync for chunk in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    layers = [[layer.layer_number for layer in chunk.decoder.layers] for chunk in chunks]
    losses = []
    for batch in batches("gpt", steps):
        for chunk in wrapped:
            chunk.zero_grad_buffer()
        micro = [{key: value[i:i + 1] for key, value in batch.items()} for i in range(2)]
        losses.append(pipeline_train_step(wrapped if len(wrapped) > 1 else wrapped[0], iter(micro), 2, 1, 32,
                                          torch.device("cpu")))
        with torch.no_grad():
            for chunk in chunks:
                for p in chunk.parameters():
                    if p.grad is not None:
                        p -= 0.1 * p.grad
    return {"losses": losses, "layers": layers, "sequence_parallel_params": [],
            "ends": [[bool(chunk.pre_process), bool(chunk.post_process)] for chunk in chunks]}


def gathered(result: dict) -> dict:
    """Every rank's chunk layout (``layers``, ``ends``) collected on rank 0; the losses are the same everywhere."""
    import torch.distributed as dist

    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, {"layers": result["layers"], "ends": result["ends"]})
    return {**result, "layers": [r["layers"] for r in per_rank], "ends": [r["ends"] for r in per_rank]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", required=True,
                        help="comma-separated family:tp[sp][-noreduce] or gpt:ppNvpM, e.g. gpt:1,gpt:2,gpt:2sp,"
                             "gpt:pp2vp2 (the first of a family saves the initial weights the others load)")
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
        first = not any(done.startswith(family + ":") for done in results)
        init = os.path.join(args.dir, f"{family}_init")
        if spec.startswith("pp"):  # ppNvpM: pipeline N × virtual M (GPT), from the family's saved weights
            pp, vp = (int(x) for x in spec[2:].split("vp"))
            results[layout] = gathered(run_pipeline_layout(pp, vp if vp > 1 else None, args.steps, init))
            continue
        tp = int(spec.split("sp")[0].split("-")[0])
        results[layout] = run_layout(family, tp, "sp" in spec, not spec.endswith("-noreduce"), args.steps,
                                     os.path.join(args.dir, f"{family}_init"), save=first)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
