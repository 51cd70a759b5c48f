"""torchrun helper of test_tensor_parallel_gpu.py: import a Hugging Face directory with tensor parallelism
and save the full (gathered) logits on rank 0.

    torchrun --nproc-per-node=2 tests/interop/tensor_parallel_logits.py <hf_dir> <out.pt>
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main(hf_dir: str, out_file: str) -> None:
    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from bridge.interop.hf import import_hf

    provider, model = import_hf(hf_dir, attention_backend="local", dtype="fp32",
                                tensor_model_parallel_size=dist.get_world_size())
    model = model.cuda().eval()
    ids = torch.randint(0, 359, (2, 16), generator=torch.Generator().manual_seed(1)).cuda()
    positions = torch.arange(16, device="cuda").unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(ids, positions, None))  # vocab split over ranks
    if dist.get_rank() == 0:
        torch.save({"ids": ids.cpu(), "logits": logits.float().cpu()}, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
