"""The training loop: epochs of steps, validation, metrics.csv, checkpoints, resume, and the final test evaluation.

A run folder holds ``last.safetensors`` (weights after the last finished epoch), ``best.safetensors`` (best by
the monitored metric), ``state.safetensors`` (everything ``--resume`` needs), ``metrics.csv``, the resolved
configuration and, at the end, ``results.json`` and the plots. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import TrainConfig
from cnnctl.engine.optim import build_optimizer  # noqa: F401 - part of this module's API
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import ImageTensors, Preprocessing
    from cnnctl.engine.evaluate import EvalResult

# metrics.csv, one row per epoch: ``lr`` is the learning rate of the epoch's first optimizer step and ``lr_end``
# of its last; train_* are averaged over the epoch's batches as they were trained (with label smoothing, if on).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "lr_end", "epoch_time_s",
                  "images_per_s")
STOP_CHECK_EVERY = 8  # distributed: batches between the ranks' checks for a Ctrl-C/SIGTERM (one all-reduce each)


@dataclass
class FitResult:
    """What a training run produced. It is path-like (its run folder), so ``cnnctl.load(run)`` works."""

    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    stopped_early: bool = False
    plots: list[Path] = field(default_factory=list)

    def __fspath__(self) -> str:
        return os.fspath(self.run_dir)


def create_run_dir(out: str | Path, name: str) -> Path:
    """``out/name/<n>`` with the next free n, created exclusively: two runs never share a folder."""
    parent = Path(out) / name
    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
    number = max(numbers, default=0) + 1
    while True:
        candidate = parent / str(number)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


@dataclass
class PreparedData:
    train: ImageTensors
    val: ImageTensors | None
    test: ImageTensors | None
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    dataset_label: str


def prepare_data(config: TrainConfig, reporter: Reporter) -> PreparedData:
    """Load (downloading if needed) the splits that ``config`` names and fit them to its architecture."""
    from cnnctl.data.splits import limit_training, load_split, resolve_preprocessing, split_train_val
    from cnnctl.registry import get_dataset_spec, get_model_spec

    model_spec = get_model_spec(config.arch)
    if config.data_dir or config.dataset == "folder":  # your own images (datasets area)
        from cnnctl.data.folder import prepare_folder

        return PreparedData(*prepare_folder(config, model_spec, reporter.message))
    spec = get_dataset_spec(config.dataset)
    train = load_split(spec, "train", root=config.root, mirror=config.mirror, log=reporter.message)
    test = load_split(spec, "test", root=config.root, mirror=config.mirror, log=reporter.message)
    val_split = spec.default_val_split if config.val_split is None else config.val_split
    train, val = split_train_val(train, val_split, config.seed)
    train = limit_training(train, config.limit, config.seed)
    preprocessing = resolve_preprocessing(model_spec, spec.image_shape, spec.mean, spec.std, config.img_size)
    from cnnctl.models.weights import in_memory_preprocessing  # --pretrained imagenet: the weights' mean/std

    preprocessing = in_memory_preprocessing(config, preprocessing)
    return PreparedData(train, val, test, spec.classes, preprocessing, spec.name)


class Trainer:
    """One training run (new, or resumed from a run folder). ``run()`` returns the run folder's paths, the
    per-epoch history and the test result.

    The steps are methods so that other parts of cnnctl can extend one without touching the loop:
    ``setup`` → ``build_model`` / ``build_optimizer`` / ``build_loaders`` → per epoch ``on_epoch_start``,
    ``train_epoch``, ``validate``, ``save_epoch`` → ``finish``.
    """

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None, *,
                 resume: str | Path | None = None):
        config.validate()
        self.config = config
        self.reporter = reporter or SilentReporter()
        self.resume_dir: Path | None = None
        if resume is not None:
            from cnnctl.engine.state import resolve_run_dir

            self.resume_dir = resolve_run_dir(resume)
        self.stopped_early = False
        from cnnctl.engine.distributed import from_environment

        self.dist = from_environment()  # one process, or this rank among torchrun's (engine/distributed.py)
        self.rank_fingerprints: list[str] = []

    @classmethod
    def resuming(cls, path: str | Path, overrides: dict[str, Any] | None = None,
                 reporter: Reporter | None = None) -> Trainer:
        """Continue the run in ``path`` with its saved configuration; ``overrides`` may extend ``epochs``, change
        ``patience``, ``device``, ... (anything else that differs is an error, raised here, before any work)."""
        from cnnctl.engine.state import resolve_run_dir, resume_config

        run_dir = resolve_run_dir(path)
        config = resume_config(run_dir, dict(overrides or {}))
        return cls(config, reporter, resume=run_dir)

    # ------------------------------------------------------------------------------------------------ the run
    def run(self) -> FitResult:
        from cnnctl.engine.determinism import deterministic_mode
        from cnnctl.engine.interrupt import InterruptGuard, interrupted_error
        from cnnctl.engine.state import STATE_FILE, read_state, run_lock

        config = self.config
        config.resolve_defaults()
        loaded = read_state(self.resume_dir) if self.resume_dir is not None else None
        if loaded is not None:
            from cnnctl.engine.distributed import check_resume_world

            check_resume_world(self.resume_dir, int(loaded.state.extra.get("world_size", 1)), self.dist.world_size)
        with deterministic_mode(config.deterministic):
            self.setup()
            if self.resume_dir is None:
                self.run_dir = self._new_run_dir()
            else:
                self.run_dir = self.resume_dir
            with run_lock(self.run_dir) if self.dist.is_main else contextlib.nullcontext():
                if loaded is not None:
                    self.restore(loaded)
                elif self.dist.is_main:
                    from cnnctl.config_file import save_run_config

                    save_run_config(config, self.run_dir)
                self.report_start()
                try:
                    with InterruptGuard() as guard:
                        self.fit(guard)
                except KeyboardInterrupt:
                    if not (self.run_dir / STATE_FILE).is_file():
                        raise
                    raise interrupted_error(self.run_dir, "before the current epoch ended (its progress is lost)",
                                            None, self.dist.world_size) from None
                result = self.finish()
        if self._owns_process_group:
            from cnnctl.engine.distributed import shutdown

            shutdown()
        return result

    def _new_run_dir(self) -> Path:
        """A fresh run folder, created by rank 0 alone; its name reaches the other ranks by broadcast."""
        from cnnctl.engine.distributed import broadcast_object

        run_dir = None
        if self.dist.is_main:
            run_dir = create_run_dir(self.config.out, self.config.name or
                                     f"{self.model_spec.name}-{self.data.dataset_label}")
        return Path(broadcast_object(run_dir, self.dist))

    def setup(self) -> None:
        """Device, seeds, data, model, optimizer, batches, schedule, precision: everything before the first step."""
        import torch

        from cnnctl.engine.device import resolve_device, seed_everything
        from cnnctl.engine.precision import resolve_precision
        from cnnctl.engine.schedules import build_schedule
        from cnnctl.engine.tracking import MetricTracker
        from cnnctl.registry import get_model_spec

        config = self.config
        self.device = self.join_processes(resolve_device(config.device))
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.model_spec = get_model_spec(config.arch)
        config.arch = self.model_spec.name
        self.precision = resolve_precision(config.amp, config.amp_dtype, self.device)
        if self.precision.note:
            self.reporter.message(self.precision.note)
        self.data = self._prepare_data_in_turn()
        needs = config.needs_validation()
        if needs and self.data.val is None:
            raise UsageError(f"{needs} needs a validation split, but this run holds none out",
                             hint="pass --val-split N (images) or a fraction")
        self.monitor = config.monitor if self.data.val is not None else config.monitor.replace("val_", "train_")
        if self.monitor != config.monitor:
            self.reporter.message(f"no validation split: best.safetensors is chosen by {self.monitor}")
        self.model = self.distribute(self.build_model())
        from cnnctl.engine.freeze import HeadOnlyPhase

        self.head_only = HeadOnlyPhase(self._bare_model(), self.model_spec.classifier, config.freeze_epochs)
        self.optimizer = self.build_optimizer(self._bare_model())
        self.train_batches, self.val_batches = self.build_loaders()
        self.schedule = build_schedule(config, self.optimizer, steps_per_epoch=len(self.train_batches),
                                       monitor=self.monitor)
        self.scaler = self.precision.make_scaler()
        self.tracker = MetricTracker(monitor=self.monitor, keep=config.keep)
        self.history: list[dict[str, float]] = []
        self.start_epoch, self.start_batch = 0, 0
        self.partial: dict[str, Any] = {}
        self.state_extra: dict[str, Any] = {"world_size": self.dist.world_size} if self.dist.enabled else {}

    # ------------------------------------------------------------------------------------------------ processes
    def join_processes(self, device: torch.device) -> torch.device:
        """Under torchrun: check that the processes fit this machine and the batch, join the process group
        (gloo on CPU, nccl on CUDA with cuda:LOCAL_RANK) and silence every rank but 0. Alone: ``device``."""
        self._owns_process_group = False
        if not self.dist.enabled:
            return device
        from cnnctl.engine.distributed import check_world, init_process_group

        self.per_rank_batch = check_world(self.config.batch_size, device, self.dist.world_size,
                                          self.dist.local_world_size, sync_bn=self.config.sync_bn)
        device, self._owns_process_group = init_process_group(self.dist, device)
        if not self.dist.is_main:
            self.reporter = SilentReporter()
        return device

    def _prepare_data_in_turn(self) -> PreparedData:
        """Load the data; with several processes, each machine's local rank 0 first (it downloads what is
        missing), then the others, which find the files in place and write nothing."""
        from cnnctl.engine.distributed import barrier

        first = self.dist.local_rank == 0
        if not first:
            barrier(self.dist)
        data = prepare_data(self.config, self.reporter)
        if first:
            barrier(self.dist)
        return data

    def distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around the model when several processes train (with SyncBatchNorm for
        --sync-bn); the model itself in a single process. ``_bare_model()`` gives the model back."""
        from cnnctl.engine.distributed import wrap_model

        return wrap_model(model, self.dist, self.device, sync_bn=self.config.sync_bn,
                          find_unused=self.config.freeze_epochs > 0)

    def _sum_over_ranks(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
                        ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Training sums of all ranks together (each trained on its own shard). Every rank also takes rank 0's
        BatchNorm statistics, so all of them hold the model that rank 0 validates and saves."""
        if not self.dist.enabled:
            return loss_sum, correct, seen
        import torch

        from cnnctl.engine.distributed import all_reduce_sum, broadcast_buffers

        totals = torch.stack([loss_sum.double(), correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
        all_reduce_sum(totals, self.dist)
        broadcast_buffers(self._bare_model(), self.dist)
        return totals[0], totals[1].long(), int(totals[2])

    def _stop_requested(self, guard: Any, batches_done: int | None = None) -> bool:
        """Whether to stop for a signal. Alone: whether one came. With several processes every rank must stop
        after the same batch: the ranks agree (all-reduce) every STOP_CHECK_EVERY batches and at each epoch's end."""
        if not self.dist.enabled:
            return bool(guard.requested)
        if batches_done is not None and batches_done % STOP_CHECK_EVERY:
            return False
        from cnnctl.engine.distributed import any_rank

        return any_rank(bool(guard.requested), self.dist, self.device)

    def build_model(self) -> torch.nn.Module:
        import torch

        from cnnctl.models import build_model

        config, data = self.config, self.data
        model = build_model(config.arch, num_classes=len(data.classes), in_channels=data.preprocessing.channels,
                            **config.arch_args).to(self.device)
        if config.pretrained:
            from cnnctl.models.pretrained import load_pretrained

            load_pretrained(model, self.model_spec, config.pretrained, log=self.reporter.message, config=config)
        if config.channels_last is None:
            config.channels_last = not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                           for m in model.modules())
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        from cnnctl.engine import optim
        from cnnctl.models.pretrained import parameter_groups  # --backbone-lr-scale

        return optim.build_optimizer(self.config, parameter_groups(model, self.model_spec.classifier, self.config))

    def build_loaders(self) -> tuple[Any, Any]:
        from cnnctl.data.augment import make_augmentation
        from cnnctl.data.loader import BatchLoader

        config, data = self.config, self.data
        from cnnctl.registry import get_dataset_spec

        augment_name = config.augment or get_dataset_spec(data.dataset_label).augment  # the dataset's default
        augment = make_augmentation(augment_name, data.preprocessing.image_size)

        def loader(split: ImageTensors, shuffle: bool) -> BatchLoader:
            return BatchLoader(split, data.preprocessing, batch_size=config.batch_size, device=self.device,
                               shuffle=shuffle, seed=config.seed, augment=augment if shuffle else None,
                               channels_last=config.channels_last)

        train = loader(data.train, True)
        if self.dist.enabled and len(data.train) < self.dist.world_size:
            raise UsageError(f"{len(data.train)} training image(s) cannot be shared by {self.dist.world_size} "
                             "processes", hint="use fewer processes or more data")
        if self.dist.enabled:  # each rank trains on its part of every global batch (data/loader.py shard_order)
            train.batch_size, train.shard = self.per_rank_batch, (self.dist.rank, self.dist.world_size)
        validate_here = data.val is not None and self.dist.is_main  # see validate()
        return train, (loader(data.val, False) if validate_here else None)

    def restore(self, loaded: Any) -> None:
        """Put model, optimizer, schedule, scaler, counters and every random-number state back as saved."""
        from cnnctl.checkpoint import load_weights_strict
        from cnnctl.engine.state import STATE_FILE, restore_rng, unflatten_optimizer
        from cnnctl.engine.tracking import MetricTracker

        source = str(self.run_dir / STATE_FILE)
        state = loaded.state
        load_weights_strict(self._bare_model(), loaded.model_tensors(), source=source)
        try:
            self.optimizer.load_state_dict(unflatten_optimizer(loaded.tensors, loaded.optimizer))
        except (ValueError, KeyError, RuntimeError) as error:
            raise CnnctlError(f"{source}: its optimizer state does not fit this model ({error})") from error
        self.schedule.load_state_dict(state.schedule)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.tracker = MetricTracker.from_dict(state.tracker)
        self.tracker.keep = self.config.keep
        self.history = list(state.history)
        self.start_epoch, self.start_batch = state.epoch, state.batch
        self.state_extra = dict(state.extra)
        if state.batch:
            self.partial = {**state.partial, "loss_sum": loaded.tensors["partial.loss_sum"].to(self.device),
                            "correct": loaded.tensors["partial.correct"].to(self.device)}
            if not self.dist.is_main:  # the saved sums are all ranks' together: rank 0 carries them on
                self.partial.update(loss_sum=self.partial["loss_sum"] * 0, correct=self.partial["correct"] * 0,
                                    seen=0)
        restore_rng(loaded.tensors, loaded.rng)
        self.train_batches.generator.set_state(loaded.tensors["rng.loader"])
        if self.dist.is_main:
            self._remove_orphan_top_checkpoints()
        where = f"epoch {state.epoch}" + (f", batch {state.batch}" if state.batch else "")
        self.reporter.message(f"resuming {self.run_dir} after {where}, to {self.config.epochs} epochs")

    def report_start(self) -> None:
        data, config = self.data, self.config
        parameters = sum(p.numel() for p in self.model.parameters())
        self.reporter.start({
            "arch": self.model_spec.name, "dataset": data.dataset_label, "device": str(self.device),
            "parameters": parameters, "train": len(data.train), "val": len(data.val) if data.val is not None else 0,
            "test": len(data.test) if data.test is not None else 0, "run_dir": str(self.run_dir),
            "epochs": config.epochs, "batch_size": config.batch_size,
        })
        if self.dist.enabled:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            self.reporter.message(f"distributed: {self.dist.world_size} processes ({backend}), each trains on "
                                  f"{self.per_rank_batch} of every {config.batch_size} images per step"
                                  + (", SyncBatchNorm" if config.sync_bn else ""))
        if self.val_batches is not None and self.resume_dir is None:
            from cnnctl.engine.evaluate import evaluate

            sanity = evaluate(self._eval_model(), self.val_batches, len(data.classes), max_batches=2)
            self.reporter.message(f"sanity check on 2 validation batches: loss {sanity.loss:.3f} "
                                  f"(chance ≈ {_chance_loss(len(data.classes)):.3f})")

    # ------------------------------------------------------------------------------------------------ epochs
    def fit(self, guard: Any) -> None:
        from cnnctl.engine.interrupt import interrupted_error

        config = self.config
        for epoch in range(self.start_epoch + 1, config.epochs + 1):
            skip = self.start_batch if epoch == self.start_epoch + 1 else 0
            self.on_epoch_start(epoch)
            row = self.train_epoch(epoch, guard, skip)
            row.update(self.validate())
            if self.schedule.epoch_end(row.get(self.monitor)):
                self.reporter.message(f"plateau: {self.monitor} has not improved for "
                                      f"{config.plateau_patience + 1} epochs; learning rate × {config.gamma:g}")
            self.history.append(row)
            improved, in_top, dropped = self.tracker.update(epoch, row[self.monitor])
            self.stopped_early = epoch < config.epochs and self.tracker.should_stop(config.patience)
            self.save_epoch(epoch, row, improved, in_top, dropped)
            self.reporter.epoch_end(row, config.epochs)
            if self.stopped_early:
                self.reporter.message(
                    f"early stopping: {self.monitor} has not improved for {self.tracker.bad_epochs} epochs "
                    f"(best {self.tracker.best_value:.4f} in epoch {self.tracker.best_epoch})")
                break
            if self._stop_requested(guard) and epoch < config.epochs:
                raise interrupted_error(self.run_dir, f"after epoch {epoch}", guard.requested, self.dist.world_size)

    def on_epoch_start(self, epoch: int) -> None:
        """Schedules of the model itself: --freeze-epochs trains only the classifier for the first epochs."""
        self.head_only.begin_epoch(epoch, self.reporter.message)

    def train_epoch(self, epoch: int, guard: Any, skip: int = 0) -> dict[str, float]:
        """One epoch of optimizer steps. ``skip`` batches were already trained before an interruption: they are
        drawn again (same order and augmentation) but not trained on."""
        import torch
        import torch.nn.functional as F

        from cnnctl.engine.interrupt import interrupted_error

        config, model, optimizer, batches = self.config, self.model, self.optimizer, self.train_batches
        model.train()
        steps = len(batches)
        first_step = (epoch - 1) * steps
        self.reporter.epoch_start(epoch, config.epochs, steps)
        epoch_rng = batches.generator.get_state()  # replaying from here reproduces this epoch's batches
        partial = self.partial if skip else {}
        self.partial = {}
        loss_sum = partial.get("loss_sum", torch.zeros((), device=batches.device))
        correct = partial.get("correct", torch.zeros((), dtype=torch.int64, device=batches.device))
        seen = int(partial.get("seen", 0))
        earlier_seconds = float(partial.get("seconds", 0.0))
        first_bad = torch.full((), -1, dtype=torch.int64, device=batches.device)
        check_every = 1 if batches.device.type == "cpu" else 32  # reading a CUDA value waits for the GPU
        started = time.perf_counter()
        for index, (inputs, labels) in enumerate(batches):
            if index < skip:
                continue
            self.schedule.apply(first_step + index)
            try:
                with self.precision.autocast():
                    logits = model(inputs)
                    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if config.grad_clip:
                    self.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                self.scaler.step(optimizer)
                self.scaler.update()
            except torch.OutOfMemoryError as error:
                raise self._out_of_memory(epoch, index + 1, steps) from error
            detached = loss.detach().float()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), index, first_bad)
            loss_sum += detached * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += int(labels.shape[0])
            if (index + 1) % check_every == 0 or index + 1 == steps:
                self._check_finite(first_bad, detached, epoch, steps)
            self.reporter.step(index + 1, loss)
            if index + 1 < steps and self._stop_requested(guard, index + 1):
                self._check_finite(first_bad, detached, epoch, steps)
                seconds = earlier_seconds + time.perf_counter() - started
                loss_sum, correct, seen = self._sum_over_ranks(loss_sum, correct, seen)
                self.save_state(epoch - 1, index + 1, epoch_rng,
                                {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds})
                raise interrupted_error(self.run_dir, f"in epoch {epoch} after batch {index + 1} of {steps}",
                                        guard.requested, self.dist.world_size)
        seconds = earlier_seconds + time.perf_counter() - started
        loss_sum, correct, seen = self._sum_over_ranks(loss_sum, correct, seen)
        return {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": float(correct) / max(seen, 1),
            "lr": self.schedule.lr_at(first_step),
            "lr_end": self.schedule.lr_at(first_step + steps - 1),
            "epoch_time_s": seconds,
            "images_per_s": seen / seconds if seconds > 0 else 0.0,
        }

    def validate(self) -> dict[str, float]:
        """Validation loss and accuracy. With several processes rank 0 evaluates the whole split and broadcasts
        the numbers: simpler than sharding the split and reducing sums (no uneven shards to pad), exactly the
        numbers a single process computes, and validation is a small part of an epoch's time."""
        if self.data.val is None:
            return {}
        from cnnctl.engine.distributed import broadcast_object
        from cnnctl.engine.evaluate import evaluate

        row = {}
        if self.val_batches is not None:
            val = evaluate(self._eval_model(), self.val_batches, len(self.data.classes),
                           autocast=self.precision.autocast())
            row = {"val_loss": val.loss, "val_acc": val.top1}
        return broadcast_object(row, self.dist)

    def _check_finite(self, first_bad: torch.Tensor, loss: torch.Tensor, epoch: int, steps: int) -> None:
        bad = int(first_bad)
        if bad < 0:
            return
        from cnnctl.engine.state import STATE_FILE

        kept = (f"last.safetensors and the training state of epoch {self.history[-1]['epoch']} are kept"
                if (self.run_dir / STATE_FILE).is_file() and self.history else "nothing was saved")
        raise CnnctlError(f"training diverged: the loss is not finite in epoch {epoch} at batch {bad + 1} of "
                          f"{steps}; stopped, {kept}",
                          hint=f"lower --lr (it was {self.config.resolved_lr():g}) or add --grad-clip 1.0")

    def _out_of_memory(self, epoch: int, batch: int, steps: int) -> CnnctlError:
        smaller = max(1, self.config.batch_size // 2)
        amp = "" if self.config.amp else " or add --amp"
        return CnnctlError(f"out of memory on {self.device} in epoch {epoch} at batch {batch} of {steps} with "
                           f"--batch-size {self.config.batch_size}",
                           hint=f"try --batch-size {smaller}{amp}; the last finished epoch is saved")

    # ------------------------------------------------------------------------------------------------ saving
    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.safetensors"

    def _top_path(self, epoch: int) -> Path:
        return self.run_dir / "checkpoints" / f"epoch-{epoch:03d}.safetensors"

    def _eval_model(self) -> torch.nn.Module:
        """The model to evaluate: without DistributedDataParallel, whose forward would join the other ranks
        (only rank 0 evaluates), but as trained otherwise."""
        return getattr(self.model, "module", self.model) if self.dist.enabled else self.model

    def _bare_model(self) -> torch.nn.Module:
        model = getattr(self.model, "module", self.model)
        return getattr(model, "_orig_mod", model)

    def save_epoch(self, epoch: int, row: dict[str, float], improved: bool, in_top: bool, dropped: list[int]) -> None:
        """End of an epoch: last, best and top-K checkpoints, then the training state (the commit point), then
        metrics.csv. A crash before the state is written only repeats this epoch on resume. Rank 0 only."""
        if not self.dist.is_main:
            return
        from cnnctl import checkpoint
        from cnnctl.fsutil import atomic_copy

        checkpoint.save(self.last_path, self.model, self._meta(self.data, epoch, row))
        if improved:  # the same weights and metadata: copy the file rather than serialise the model again
            atomic_copy(self.last_path, self.best_path)
        if self.config.keep > 1 and in_top:
            atomic_copy(self.last_path, self._top_path(epoch))
        self.save_state(epoch, 0, self.train_batches.generator.get_state())
        for old in dropped:
            self._top_path(old).unlink(missing_ok=True)
        self._write_metrics(self.run_dir / "metrics.csv", self.history)

    def save_state(self, epoch: int, batch: int, loader_state: torch.Tensor,
                   partial: dict[str, Any] | None = None) -> None:
        """``state.safetensors``: ``epoch`` finished epochs plus ``batch`` batches of the next (with its sums, all
        ranks' together). Rank 0 only."""
        if not self.dist.is_main:
            return
        from cnnctl.checkpoint import state_tensors
        from cnnctl.engine.state import TrainingState, capture_rng, flatten_optimizer, write_state

        tensors = {f"model.{name}": tensor for name, tensor in state_tensors(self.model).items()}
        optimizer_tensors, optimizer_document = flatten_optimizer(self.optimizer)
        rng_tensors, rng_document = capture_rng(loader_state)
        tensors.update(optimizer_tensors)
        tensors.update(rng_tensors)
        partial_document: dict[str, float] = {}
        if partial:
            tensors["partial.loss_sum"] = partial["loss_sum"].detach().to("cpu").clone()
            tensors["partial.correct"] = partial["correct"].detach().to("cpu").clone()
            partial_document = {"seen": partial["seen"], "seconds": partial["seconds"]}
        state = TrainingState(epoch=epoch, batch=batch, history=self.history, tracker=self.tracker.to_dict(),
                              schedule=self.schedule.state_dict(), scaler=self.scaler.state_dict(),
                              partial=partial_document, stopped_early=self.stopped_early,
                              config=self.config.to_dict(), extra=self.state_extra)
        write_state(self.run_dir, tensors, state, rng_document, optimizer_document)

    def _remove_orphan_top_checkpoints(self) -> None:
        """Top-K files a crash left behind (written, but not recorded in the state)."""
        folder = self.run_dir / "checkpoints"
        if not folder.is_dir():
            return
        kept = {self._top_path(int(item["epoch"])).name for item in self.tracker.top}
        for path in folder.glob("epoch-*.safetensors"):
            if path.name not in kept:
                path.unlink(missing_ok=True)

    def _meta(self, data: PreparedData, epoch: int, row: dict[str, float]) -> Any:
        from cnnctl.checkpoint import CheckpointMeta

        return CheckpointMeta(
            arch=self.config.arch,
            arch_args=dict(self.config.arch_args),
            classes=list(data.classes),
            preprocessing=data.preprocessing,
            dataset=data.dataset_label,
            data_dir=self.config.data_dir,
            epoch=epoch,
            metrics={k: float(v) for k, v in row.items() if k != "epoch"},
            config=self.config.to_dict(),
        )

    @staticmethod
    def _write_metrics(path: Path, history: list[dict[str, float]]) -> None:
        """Rewrite metrics.csv from the history (atomically): a known column order, then any other keys."""
        from cnnctl.fsutil import atomic_write_text

        columns = [c for c in METRIC_COLUMNS if any(c in row for row in history)]
        for row in history:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({key: row.get(key, "") for key in columns})
        atomic_write_text(path, buffer.getvalue())

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self) -> FitResult:
        """The final test and plots. With several processes rank 0 alone evaluates and writes (see validate());
        every rank returns its numbers, and results.json records each rank's weights fingerprint."""
        from cnnctl.engine.distributed import broadcast_object, gather_object, weights_fingerprint

        if self.dist.enabled:
            self.rank_fingerprints = gather_object(weights_fingerprint(self.model), self.dist)
            same = len(set(self.rank_fingerprints)) == 1
            self.reporter.message(f"all {self.dist.world_size} processes end with the same weights" if same else
                                  f"warning: the processes ended with different weights: {self.rank_fingerprints}")
        result = FitResult(self.run_dir, self.best_path, self.last_path, self.history,
                           stopped_early=self.stopped_early)
        evaluation = None
        if self.data.test is not None:
            if self.dist.is_main:
                result.test, evaluation = self._final_test(self.best_path, self.data, self.device)
            result.test = broadcast_object(result.test, self.dist)
        if self.config.plots and self.dist.is_main:
            result.plots = self._plots(evaluation)
        return result

    def _final_test(self, best_path: Path, data: PreparedData, device: torch.device) -> tuple[dict[str, Any], Any]:
        """Evaluate the best checkpoint, reloaded from disk, on the test split (the number eval reproduces)."""
        from cnnctl import checkpoint
        from cnnctl.data.loader import BatchLoader
        from cnnctl.engine.evaluate import evaluate

        model, meta = checkpoint.load(best_path, device=device)
        batches = BatchLoader(data.test, data.preprocessing, batch_size=max(self.config.batch_size, 512),
                              device=device)
        test: EvalResult = evaluate(model, batches, len(data.classes))
        summary = {"test_loss": test.loss, "test_acc": test.top1, "test_top5": test.top5, "test_count": test.count,
                   "best_epoch": meta.epoch}
        if self.rank_fingerprints:  # distributed: one sha256 of the final weights per rank (all equal)
            summary.update(processes=len(self.rank_fingerprints), weights_sha256=self.rank_fingerprints)
        meta.metrics = {**(meta.metrics or {}), **{k: v for k, v in summary.items() if k.startswith("test_")}}
        checkpoint.save(best_path, model, meta)
        from cnnctl.fsutil import atomic_write_text

        atomic_write_text(best_path.parent / "results.json", json.dumps(summary, indent=2) + "\n")
        self.reporter.end(summary)
        return summary, (model, test)

    def _plots(self, evaluation: tuple[Any, EvalResult] | None) -> list[Path]:
        """curves.png, and from the final test evaluation confusion.png and predictions.png."""
        from cnnctl import plots

        missing = plots.available()
        if missing:
            self.reporter.message(missing)
            return []
        written = [plots.plot_curves(self.history, self.run_dir / "curves.png")]
        if evaluation is not None:
            model, test = evaluation
            written += plots.evaluation_plots(self.run_dir, model, self.data.test, self.data.preprocessing,
                                              list(self.data.classes), test.confusion, split="test")
        return written


def _chance_loss(num_classes: int) -> float:
    import math

    return math.log(num_classes)
