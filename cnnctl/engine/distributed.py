"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel, started by
torchrun (``torchrun --nproc-per-node N -m cnnctl train ...`` or ``cnnctl train ... --nproc N``).

Every rank holds the in-memory dataset, draws the same per-epoch permutation (same seed) and takes its own
equal slice of it, so each rank sees a different shard every epoch and all ranks run the same number of steps.
``--batch-size`` is the global batch: each rank takes ``batch_size / world_size``. Only rank 0 prints and writes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_environment() -> DistContext:
    """The context torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(context: DistContext, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU) and return this rank's device."""
    import torch
    import torch.distributed as dist

    if not context.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown(context: DistContext) -> None:
    import torch.distributed as dist

    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: DistContext, device: torch.device, sync_bn: bool) -> Any:
    """DistributedDataParallel around ``model`` (with SyncBatchNorm if asked); the model itself when alone."""
    if not context.enabled:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process)."""
    if context.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_text(text: str | None, context: DistContext) -> str:
    """Rank 0's ``text`` on every rank (e.g. the run folder it created)."""
    if not context.enabled:
        return text or ""
    import torch.distributed as dist

    holder = [text]
    dist.broadcast_object_list(holder, src=0)
    return holder[0] or ""


def barrier(context: DistContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the parameters and buffers, to check that every rank ends with the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_text(text: str, context: DistContext) -> list[str]:
    if not context.enabled:
        return [text]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, text)
    return [str(item) for item in gathered]


def per_rank_batch(batch_size: int, context: DistContext) -> int:
    if batch_size % context.world_size:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                         f"{context.world_size} processes")
    return batch_size // context.world_size


def launch(train_args: list[str], nproc: int) -> int:
    """``cnnctl train ... --nproc N``: run the same command under torchrun on this machine; return its exit code."""
    import subprocess

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "cnnctl", "train", *train_args]
    return subprocess.call(command)
