"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel, started by
torchrun (``torchrun --nproc-per-node N -m cnnctl train ...`` or ``cnnctl train ... --nproc N``).

Every rank loads the in-memory dataset, draws the same per-epoch permutation (same seed, same generator) and
trains on its own part of each global batch (:func:`cnnctl.data.loader.shard_order`), so each rank sees a
different shard every epoch, all ranks run the same number of equal steps, and one step of all ranks trains on
the batch a single process would. ``--batch-size`` is the global batch: each rank takes ``batch_size / world``.
Only rank 0 prints, writes the run folder and evaluates; the other ranks use a SilentReporter and write nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import state_tensors
from cnnctl.engine.device import resolve_device
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.recipe.resume import read_state_document

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_environment() -> DistContext:
    """The context torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or a
    single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return SINGLE
        return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                           int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    except (KeyError, ValueError) as error:
        raise UsageError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but RANK/LOCAL_RANK are missing or not "
                         "numbers", hint="start distributed runs with torchrun or cnnctl train --nproc N") from error


# ------------------------------------------------------------------------------------------------ checks
def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_world(batch_size: int | None, device: torch.device, world_size: int, local_processes: int, *,
                sync_bn: bool = False) -> int | None:
    """Reject a process count that cannot work here; return the per-rank batch size. ``local_processes`` are the
    ranks on this machine (each needs its own GPU on CUDA)."""
    import torch.distributed as dist

    if world_size < 1:
        raise UsageError(f"--nproc must be at least 1, got {world_size}")
    if world_size == 1:
        return batch_size
    per_rank = per_rank_batch(batch_size, world_size)
    if not dist.is_available():
        raise UsageError("distributed training needs torch.distributed, which this PyTorch build lacks",
                         hint="install a PyTorch build with distributed support, or leave out --nproc")
    if device.type == "mps":
        raise UsageError("distributed training does not run on MPS", hint="pass --device cpu, or leave out --nproc")
    if device.type == "cuda":
        import torch

        if device.index is not None:
            raise UsageError(f"--device {device} picks one GPU, but each of the {local_processes} processes uses "
                             "its own (cuda:LOCAL_RANK)", hint="pass --device cuda or auto")
        gpus = torch.cuda.device_count()
        if local_processes > gpus:
            raise UsageError(f"{local_processes} processes on this machine need {local_processes} GPUs, but it has "
                             f"{gpus}", hint=f"pass --nproc {gpus} or fewer")
    elif sync_bn:
        raise UsageError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPU",
                         hint="leave out --sync-bn (each process then normalises over its own part of the batch)")
    elif local_processes > cpu_count():
        raise UsageError(f"--nproc {local_processes} is more than the {cpu_count()} CPU cores this process may use",
                         hint=f"pass --nproc {cpu_count()} or fewer")
    return per_rank


def per_rank_batch(batch_size: int | None, world_size: int) -> int | None:
    """Each rank's share of the global batch; None while the default batch size is not chosen yet (it depends on
    the training set, data/loader.py default_batch_size)."""
    if batch_size is None:
        return None
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise UsageError(f"--batch-size {batch_size} is the global batch and must divide evenly over {world_size} "
                         "processes", hint=f"pass --batch-size {lower or world_size} or "
                                           f"{lower + world_size}")
    return batch_size // world_size


def saved_world_size(run_dir: Path) -> int:
    """How many processes trained the run in ``run_dir`` (1 for runs from before distributed training). Reads
    only the state file's JSON header, not its tensors."""
    try:
        return int(read_state_document(run_dir)["state"].get("extra", {}).get("world_size", 1))
    except CnnctlError:  # an unreadable state is reported by the resume itself, with its own message
        return 1


def check_resume_world(run_dir: Path, saved: int, world_size: int) -> None:
    """A run resumes with as many processes as it was trained by (``saved``): the steps per epoch (and so the
    learning-rate schedule) and each rank's share of the data depend on it."""
    if saved != world_size:
        how = f"--nproc {saved}" if saved > 1 else "a single process (without --nproc)"
        raise UsageError(f"{run_dir} was trained by {saved} process(es), not {world_size}; the steps per epoch "
                         "and the schedule depend on it", hint=f"resume it with {how}")


# ------------------------------------------------------------------------------------------------ the group
def init_process_group(context: DistContext, device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group (nccl on CUDA, gloo on CPU). Returns this rank's device (cuda:LOCAL_RANK on CUDA)
    and whether this call created the group (then :func:`shutdown` ends it)."""
    import torch
    import torch.distributed as dist

    if not context.enabled:
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return device, True


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: DistContext, device: torch.device, *, sync_bn: bool,
               find_unused: bool = False) -> Any:
    """DistributedDataParallel around ``model`` (BatchNorm made SyncBatchNorm first with ``sync_bn``); the model
    itself in a single process. ``find_unused`` is for phases that freeze parameters (--freeze-epochs)."""
    if not context.enabled:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process)."""
    if context.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a Ctrl-C that reached only some of them)."""
    if not context.enabled:
        return flag
    import torch

    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device), context).item())


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` (anything picklable: a path, a metrics dict) on every rank. Pickle here only carries
    objects between this run's own processes, never from a file."""
    if not context.enabled:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_buffers(model: torch.nn.Module, context: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before each training
    forward, but every rank then updates them with its own batch, so after the last step they differ; this makes
    the model every rank holds the one rank 0 evaluates and saves."""
    if not context.enabled:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(context: DistContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def gather_object(value: Any, context: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not context.enabled:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the parameters and buffers, to check that every rank ends with the same weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state_tensors(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ the loop's rules
STOP_CHECK_EVERY = 8  # batches between the ranks' checks for a Ctrl-C/SIGTERM (one all-reduce each)


def join(context: DistContext, device: torch.device, batch_size: int, *, sync_bn: bool
         ) -> tuple[torch.device, int, bool]:
    """Under torchrun: check that the processes fit this machine and the batch, and join the process group
    (gloo on CPU, nccl on CUDA with cuda:LOCAL_RANK). Returns this rank's device, its share of each global
    batch, and whether this call created the group (then :func:`shutdown` ends it). Alone: ``device``."""
    if not context.enabled:
        return device, batch_size, False
    per_rank = check_world(batch_size, device, context.world_size, context.local_world_size, sync_bn=sync_bn)
    try:
        device, owns_group = init_process_group(context, device)
        barrier(context)  # every process is here: one that stopped before (say, refused its run folder) shows now
    except RuntimeError as error:
        lost = peer_lost(error, context, None)
        if lost is None:
            raise
        raise lost from None
    return device, per_rank, owns_group


def in_turn(context: DistContext, work: Any) -> Any:
    """``work()`` on each machine's local rank 0 first (it downloads what is missing), then on the others,
    which find the files in place and write nothing."""
    first = context.local_rank == 0
    if not first:
        barrier(context)
    result = work()
    if first:
        barrier(context)
    return result


def sum_over_ranks(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, context: DistContext,
                   model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training sums of all ranks together (each trained on its own shard). Every rank also takes rank 0's
    BatchNorm statistics, so all of them hold the model that rank 0 validates and saves."""
    if not context.enabled:
        return loss_sum, correct, seen
    import torch

    totals = torch.stack([loss_sum.double(), correct.double(),
                          torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
    all_reduce_sum(totals, context)
    broadcast_buffers(model, context)
    return totals[0], totals[1].long(), int(totals[2])


def stop_agreed(flag: bool, context: DistContext, device: torch.device, batches_done: int | None = None) -> bool:
    """Whether to stop (a signal came, or a callback asked). Alone: ``flag``. With several processes every rank
    must stop after the same batch: the ranks agree (all-reduce) every STOP_CHECK_EVERY batches and at each
    epoch's end (``batches_done`` None)."""
    if not context.enabled:
        return bool(flag)
    if batches_done is not None and batches_done % STOP_CHECK_EVERY:
        return False
    return any_rank(bool(flag), context, device)


def peer_lost(error: BaseException, context: DistContext, run_dir: Path | None) -> CnnctlError | None:
    """The one-line error for a collective that failed because another process of the run is gone (its machine
    was lost, it was killed, its network went away): gloo's and NCCL's errors, torch.distributed's DistError.
    None for any other error. The last finished epoch is in the run folder; the same launch with ``--resume``
    continues it."""
    if not context.enabled or not isinstance(error, RuntimeError):
        return None
    import torch.distributed as dist

    text = str(error)
    if not (isinstance(error, getattr(dist, "DistError", ())) or "gloo" in text or "NCCL" in text
            or "Connection reset by peer" in text or "Connection closed by peer" in text):
        return None
    reason = " ".join(text.split("] ", 1)[-1].split()).split(". ")[0][:160]  # gloo: "[file.cc:545] Read error..."
    if run_dir is None:
        return CnnctlError(f"another training process is gone before training started ({reason})",
                           hint="the other processes' messages say why")
    return CnnctlError(f"another training process is gone ({reason}); the last finished epoch is saved in {run_dir}",
                       hint=f"start the same launch on every node with `train --resume {run_dir}` in place of the "
                            "train options")


# ------------------------------------------------------------------------------------------------ the launcher
def worker_program() -> list[str]:
    """How each rank starts cnnctl: ``-m cnnctl``, or the same Python script when one was run as this process's
    main program (a script that registers its own datasets or models and then calls ``cnnctl.cli.main`` keeps
    them in every rank)."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if main is not None and getattr(main, "__spec__", None) is None and script and script.endswith(".py"):
        return [str(Path(script).resolve())]
    return ["-m", "cnnctl"]


def launch(args: list[str], nproc: int, *, program: list[str] | None = None, debug: bool = False) -> int:
    """``cnnctl train ... --nproc N``: what ``python -m torch.distributed.run --standalone --nproc-per-node N -m
    cnnctl <args>`` does, run in this process so that a failure ends in the ranks' own one-line messages and
    their exit code rather than torchrun's report. Ctrl-C or SIGTERM reach torchrun's agent here, which passes
    the signal on to every rank (they stop after the same batch and rank 0 saves)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set 1 thread per rank (and warn); share the cores instead (--threads overrides it per rank)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // nproc)))
    if debug:
        os.environ["CNNCTL_DEBUG"] = "1"
    else:  # the agent's own log lines repeat what the ranks already said
        quiet = logging.getLogger("torch.distributed.elastic")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", *(program or ["-m", "cnnctl"]), *args]))
    except SignalException as error:
        return 128 + int(error.sigval)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode  # the rank printed its own message
        raise CnnctlError(f"training process {rank} was killed by {failure.signal_name()}",
                          hint="out of memory? the last finished epoch is saved in the run folder") from None
    return 0


def start_processes(config: Any, nproc: int, args: list[str], *, resume_dir: Path | None = None,
                    debug: bool = False) -> int | None:
    """``cnnctl train ... --nproc N`` (``args``: that command without --nproc). Returns None when this process
    should train itself (N = 1, or it already is one of torchrun's N ranks), else the exit code of the N ranks it
    launched, after checking everything that would make each of them fail (a bad value is one line, not N)."""
    context = from_environment()
    if context.enabled:
        if nproc != context.world_size:
            raise UsageError(f"--nproc {nproc} contradicts the {context.world_size} processes torchrun started",
                             hint="leave out --nproc under torchrun")
        return None
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1:
        return None
    check_world(config.batch_size, resolve_device(config.device), nproc, nproc, sync_bn=config.sync_bn)
    if resume_dir is not None:
        check_resume_world(resume_dir, saved_world_size(resume_dir), nproc)
    return launch(args, nproc, program=worker_program(), debug=debug)
