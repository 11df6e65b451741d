"""The training loop: setup, then per epoch train_epoch → validate → callbacks, then the callbacks' end of run.

What happens around the loop lives in callbacks (``cnnctl/engine/callbacks/``, one small file each: progress
display, early stopping, checkpoints and state, metrics.csv, final test and results.json, plots), the run
folder's files in :mod:`cnnctl.engine.run_folder`, the rules of several processes in
:mod:`cnnctl.engine.distributed` and the resume state in :mod:`cnnctl.engine.state`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import unwrap
from cnnctl.data.image_stats import training_image_stats
from cnnctl.data.loader import default_batch_size
from cnnctl.data.splits import PreparedData
from cnnctl.data.splits import prepare_data as prepare
from cnnctl.engine import components, distributed
from cnnctl.engine.callbacks import Callback, CallbackList, default_callbacks
from cnnctl.engine.callbacks.ema import build_average
from cnnctl.engine.components import check_finite, out_of_memory_error
from cnnctl.engine.configure import check_config, complete_config
from cnnctl.engine.determinism import deterministic_mode
from cnnctl.engine.device import resolve_device, seed_everything
from cnnctl.engine.distill import Distillation
from cnnctl.engine.distributed import (
    broadcast_object,
    check_resume_world,
    from_environment,
    shutdown,
    stop_agreed,
    sum_over_ranks,
)
from cnnctl.engine.freeze import HeadOnlyPhase
from cnnctl.engine.host_memory import reuse_freed_host_memory
from cnnctl.engine.imbalance import loss_weights
from cnnctl.engine.interrupt import InterruptGuard, TrainingInterrupted, interrupted_error
from cnnctl.engine.linear_probe import check_probe_head, probe_epoch
from cnnctl.engine.loggers import build_loggers
from cnnctl.engine.lr_sweep import resolve_auto_lr
from cnnctl.engine.multilabel import correct_count, resolve_task, task_settings, training_label_count
from cnnctl.engine.optim import build_optimizer
from cnnctl.engine.precision import resolve_precision
from cnnctl.engine.run_folder import RunFolder, default_run_name
from cnnctl.engine.schedules import build_schedule
from cnnctl.engine.state import read_state, restore_training_state, save_training_state
from cnnctl.engine.threads import threads_for_this_process
from cnnctl.engine.tracking import MetricTracker
from cnnctl.errors import UsageError
from cnnctl.models import build_model as build_architecture
from cnnctl.models.pretrained import parameter_groups
from cnnctl.progress import Reporter, SilentReporter
from cnnctl.recipe.config import TrainConfig
from cnnctl.recipe.config_file import save_run_config
from cnnctl.recipe.resume import resolve_run_dir, resume_settings
from cnnctl.registry import get_model_spec

if TYPE_CHECKING:
    import torch


@dataclass
class FitResult:
    """What a training run produced. It is path-like (its run folder), so ``cnnctl.load(run)`` works."""

    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    results: dict[str, Any] = field(default_factory=dict)  # results.json: ``test`` or, without a test split,
    # the best epoch evaluated on the validation split ("split": "val")
    stopped_early: bool = False
    plots: list[Path] = field(default_factory=list)

    def __fspath__(self) -> str:
        return os.fspath(self.run_dir)


def prepare_data(config: TrainConfig, reporter: Reporter) -> PreparedData:
    """Load (downloading if needed) the splits that ``config`` names and fit them to its architecture; what the
    data settled (:attr:`PreparedData.resolved`) completes ``config``."""
    data = prepare(config, get_model_spec(config.arch), reporter.message)
    for name, value in data.resolved.items():
        setattr(config, name, value)
    return data


def measure_training_images(data: PreparedData) -> dict[str, float] | None:
    """How the training images look (cnnctl/data/image_stats.py), for the checkpoints: from the training split, or
    the validation split when the training images stream from disk (not held in memory)."""
    import torch

    for split in (data.train, data.val):
        images = getattr(split, "images", None)
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] > 0:
            return training_image_stats(images)
    return None


class Trainer:
    """One training run (new, or resumed from a run folder); ``run()`` returns a :class:`FitResult`.
    ``callbacks`` are added to the built-in ones (see :mod:`cnnctl.engine.callbacks.base` for the hooks)."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None, *,
                 callbacks: list[Callback] | None = None, resume: str | Path | None = None):
        check_config(config)
        self.config = config
        self.reporter = reporter or SilentReporter()
        self.callbacks = CallbackList([*default_callbacks(), *build_loggers(config), *(callbacks or [])])
        self.resume_dir = resolve_run_dir(resume) if resume is not None else None
        self.dist = from_environment()  # one process, or this rank among torchrun's (engine/distributed.py)
        self.should_stop, self.stop_reason = False, ""  # a callback ends training after this epoch
        self.folder: RunFolder = RunFolder(self.resume_dir or ".")
        self.history: list[dict[str, float]] = []
        self.start_epoch, self.start_batch = 0, 0
        self.partial: dict[str, Any] = {}  # sums of an epoch interrupted mid-way, carried into its resume
        self.state_extra: dict[str, Any] = {"world_size": self.dist.world_size} if self.dist.enabled else {}
        self.improvement: tuple[bool, bool, list[int]] = (False, False, [])  # MetricTracker.update of this epoch
        self.device = self.data = self.model = None  # set by setup(), with the optimizer, schedule, batches
        self.image_stats: dict[str, float] | None = None  # of the training images, for the checkpoints
        self.lr_sweep: Any = None  # --lr auto: the sweep's LrFindResult, drawn into the run folder
        self.thread_choice: Any = None  # the CPU threads setup() chose, when --threads was left to cnnctl
        self.averaged: Any = None  # --ema: the AveragedModel that validation and checkpoints use
        self.pretrained: Any = None  # --pretrained: the PretrainedReport the checkpoints' metadata keeps
        self.distillation: Distillation | None = None  # --teacher: the teacher and the mixed loss (engine/distill.py)
        self.per_rank_batch, self.owns_process_group = config.batch_size, False
        self.task, self.thresholds, self.label_count = "single", None, None  # multilabel: see engine/multilabel.py

    @classmethod
    def resuming(cls, path: str | Path, overrides: dict[str, Any] | None = None, reporter: Reporter | None = None,
                 *, callbacks: list[Callback] | None = None) -> Trainer:
        """Continue the run in ``path`` with its saved configuration; ``overrides`` may extend ``epochs``, change
        ``patience``, ``device``, ... (anything else that differs is an error, raised here, before any work). A
        run killed during its final test resumes to run it."""
        run_dir = resolve_run_dir(path)
        config = resume_settings(run_dir, dict(overrides or {}), (reporter or SilentReporter()).message)
        return cls(config, reporter, callbacks=callbacks, resume=run_dir)

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def default_name(self) -> str:
        """The run's folder name when --name is left out (after setup): ARCH-DATASET, or ARCH-FOLDER."""
        return default_run_name(self.model_spec.name, self.data.dataset_label, self.config.data_dir)

    # ------------------------------------------------------------------------------------------------ the run
    def run(self) -> FitResult:
        self.lr_sweep = resolve_auto_lr(type(self), self.config, self.reporter.message)  # --lr auto: a sweep first
        complete_config(self.config)
        with deterministic_mode(self.config.deterministic), contextlib.ExitStack() as locked:
            loaded = None
            if self.resume_dir is not None:  # the lock first: the state read under it is the one continued
                self._lock(locked)
                loaded = read_state(self.resume_dir)
                check_resume_world(self.resume_dir, int(loaded.state.extra.get("world_size", 1)),
                                   self.dist.world_size)
                if self.dist.is_main:
                    self.folder.remove_stale_temp_files()
                    self.folder.interrupted.unlink(missing_ok=True)
            self.setup(loaded)
            if loaded is None:
                self.folder = new_run_folder(self.config, self.default_name, self.dist)
                self._lock(locked)
            try:
                with InterruptGuard() as guard:
                    self.fit(guard)
            except (KeyboardInterrupt, TrainingInterrupted) as error:
                if self.dist.is_main:
                    self.folder.mark_interrupted(str(error) or "KeyboardInterrupt")
                if isinstance(error, TrainingInterrupted) or not self.folder.state.is_file():
                    raise
                raise interrupted_error(self.run_dir, "before the current epoch ended (its progress is lost)",
                                        None, self.dist.world_size) from None
            except RuntimeError as error:  # a collective whose other side is gone: one line, not gloo's report
                lost = distributed.peer_lost(error, self.dist, self.run_dir if self.folder.state.is_file() else None)
                if lost is None:
                    raise
                raise lost from None
            result = FitResult(self.run_dir, self.folder.best, self.folder.last, self.history,
                               stopped_early=self.should_stop)
            self.callbacks.on_fit_end(self, result)
        if self.owns_process_group:
            shutdown()
        return result

    def _lock(self, stack: contextlib.ExitStack) -> None:
        if self.dist.is_main:  # rank 0 alone writes the run folder
            stack.enter_context(self.folder.lock())

    def setup(self, loaded: Any = None) -> None:
        """Device, seeds, data, model, optimizer, batches, schedule, precision: everything before the first step
        (and, resuming, the saved state put back)."""
        import torch

        config = self.config
        self.device, self.per_rank_batch, self.owns_process_group = distributed.join(
            self.dist, resolve_device(config.device), config.batch_size, sync_bn=config.sync_bn)
        if not self.dist.is_main:
            self.reporter = SilentReporter()
        if config.threads:
            torch.set_num_threads(config.threads)
        elif self.device.type == "cpu" and not self.dist.enabled:  # ranks share the cores as launch() set them
            self.thread_choice = threads_for_this_process()
            torch.set_num_threads(self.thread_choice.threads)
        if self.device.type == "cpu":
            reuse_freed_host_memory()
        seed_everything(config.seed)
        self.model_spec = get_model_spec(config.arch)
        config.arch = self.model_spec.name
        if config.linear_probe:  # the classifier must be a linear layer: said before the data is read
            check_probe_head(self, build_architecture(config.arch, num_classes=2, in_channels=3, **config.arch_args))
        self.precision = resolve_precision(config.amp, config.amp_dtype, self.device)
        if self.precision.note:
            self.reporter.message(self.precision.note)
        self.data = distributed.in_turn(self.dist, lambda: prepare_data(config, self.reporter))
        self.image_stats = measure_training_images(self.data)
        self.task = config.task = task_settings(config, resolve_task(config.task, self.data, self.reporter.message))
        self.label_count = training_label_count(self.data, self.task)
        if config.batch_size is None:  # the default depends on the training set (data/loader.py)
            config.batch_size = default_batch_size(len(self.data.train))
            if self.dist.enabled:
                self.per_rank_batch = distributed.per_rank_batch(config.batch_size, self.dist.world_size)
        self.class_weights = loss_weights(config.class_weights, self.data, self.device, self.reporter.message)
        needs = config.needs_validation()
        if needs and self.data.val is None:
            raise UsageError(f"{needs} needs a validation split, but this run holds none out",
                             hint="pass --val-split N (images) or a fraction")
        self.monitor = config.monitor if self.data.val is not None else config.monitor.replace("val_", "train_")
        if self.monitor != config.monitor:
            self.reporter.message(f"no validation split: best.safetensors is chosen by {self.monitor}")
        model, self.pretrained = components.build_model(config, self.model_spec, self.data, self.device,
                                                        self.reporter.message)
        self.model = distributed.wrap_model(model, self.dist, self.device, sync_bn=config.sync_bn,
                                            find_unused=config.freeze_epochs > 0)
        self.head_only = HeadOnlyPhase(unwrap(self.model), self.model_spec.classifier, config.freeze_epochs)
        self.optimizer = build_optimizer(config, parameter_groups(unwrap(self.model), self.model_spec.classifier,
                                                                  config))
        self.averaged = build_average(unwrap(self.model), config.ema)  # --ema, else None
        self.train_batches, self.val_batches = components.build_loaders(config, self.data, self.device, self.dist,
                                                                        self.per_rank_batch)
        self.distillation = Distillation.start(config, self.data, self.device, self.train_batches,
                                               self.reporter.message)
        self.schedule = build_schedule(config, self.optimizer, steps_per_epoch=len(self.train_batches),
                                       monitor=self.monitor)
        self.scaler, self.tracker = self.precision.make_scaler(), MetricTracker(monitor=self.monitor, keep=config.keep)
        if loaded is not None:
            restore_training_state(self, loaded)

    # ------------------------------------------------------------------------------------------------ epochs
    def fit(self, guard: Any) -> None:
        config, callbacks = self.config, self.callbacks
        callbacks.on_fit_start(self)
        for epoch in range(self.start_epoch + 1, config.epochs + 1):
            skip = self.start_batch if epoch == self.start_epoch + 1 else 0
            self.head_only.begin_epoch(epoch, self.reporter.message)
            callbacks.on_epoch_start(self, epoch)
            row = probe_epoch(self, epoch) if config.linear_probe else self.train_epoch(epoch, guard, skip)
            row.update(components.validation_metrics(self))
            if self.schedule.epoch_end(row.get(self.monitor)):
                self.reporter.message(f"plateau: {self.monitor} has not improved for "
                                      f"{config.plateau_patience + 1} epochs; learning rate × {config.gamma:g}")
            self.history.append(row)
            self.improvement = self.tracker.update(epoch, row[self.monitor], row.get(self.tracker.tiebreak))
            callbacks.on_validation_end(self, epoch, row)  # the checkpoint saver, last, writes the epoch
            callbacks.on_epoch_end(self, epoch, row)
            self.should_stop = stop_agreed(self.should_stop, self.dist, self.device)
            if self.should_stop:
                break
            if stop_agreed(guard.requested is not None, self.dist, self.device) and epoch < config.epochs:
                raise interrupted_error(self.run_dir, f"after epoch {epoch}", guard.requested, self.dist.world_size)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss, defined once: the epochs and the learning-rate sweep both use it. ``weights``: each
        image's weight (a label file's ``weight`` column), a weighted mean like the class weights'. With
        --teacher (and the batch's ``inputs``) it mixes in the teacher's softened outputs (engine/distill.py)."""
        hard = components.training_loss(logits, labels, self.task, self.class_weights, self.config.label_smoothing,
                                        weights)
        if self.distillation is None or inputs is None:
            return hard
        teacher = self.distillation.teacher_logits(inputs, self.train_batches.last_index)
        return self.distillation.loss(logits, teacher, hard)

    def train_epoch(self, epoch: int, guard: Any, skip: int = 0) -> dict[str, float]:
        """One epoch of optimizer steps. ``skip`` batches were already trained before an interruption: they are
        drawn again (same order and augmentation) but not trained on."""
        import torch

        config, model, optimizer, batches = self.config, self.model, self.optimizer, self.train_batches
        model.train()
        steps = len(batches)
        first_step = (epoch - 1) * steps
        epoch_rng = batches.generator.get_state()  # replaying from here reproduces this epoch's batches
        partial, self.partial = (self.partial if skip else {}), {}
        loss_sum = partial.get("loss_sum", torch.zeros((), device=batches.device))
        correct = partial.get("correct", torch.zeros((), dtype=torch.int64, device=batches.device))
        seen, earlier_seconds = int(partial.get("seen", 0)), float(partial.get("seconds", 0.0))
        first_bad = torch.full((), -1, dtype=torch.int64, device=batches.device)
        check_every = 1 if batches.device.type == "cpu" else 32  # reading a CUDA value waits for the GPU
        started, skipped = time.perf_counter(), batches.skipped  # unreadable streamed images, counted
        for index, (inputs, labels) in enumerate(batches):
            if index < skip:
                continue
            self.schedule.apply(first_step + index)
            try:
                with self.precision.autocast():
                    logits = model(inputs)
                    loss = self.loss(logits, labels, inputs, batches.batch_weights)
                optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if config.grad_clip:
                    self.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                self.scaler.step(optimizer)
                self.scaler.update()
            except torch.OutOfMemoryError as error:
                raise out_of_memory_error(config, self.device, epoch, index + 1, steps) from error
            detached = loss.detach().float()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), index, first_bad)
            loss_sum += detached * labels.shape[0]
            correct += correct_count(logits.detach(), labels, self.task, self.label_count)  # mixup: the dominant label
            seen += int(labels.shape[0])
            if (index + 1) % check_every == 0 or index + 1 == steps:
                check_finite(self, first_bad, epoch, steps)
            self.callbacks.on_train_batch_end(self, index + 1, detached)  # no autograd graph kept alive
            if index + 1 < steps and stop_agreed(guard.requested is not None, self.dist, self.device, index + 1):
                check_finite(self, first_bad, epoch, steps)
                seconds = earlier_seconds + time.perf_counter() - started
                loss_sum, correct, seen = sum_over_ranks(loss_sum, correct, seen, self.dist, unwrap(model))
                save_training_state(self, epoch - 1, index + 1, epoch_rng,
                                    {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds})
                raise interrupted_error(self.run_dir, f"in epoch {epoch} after batch {index + 1} of {steps}",
                                        guard.requested, self.dist.world_size)
        components.report_skipped(self, epoch, batches.skipped - skipped)
        seconds = earlier_seconds + time.perf_counter() - started
        loss_sum, correct, seen = sum_over_ranks(loss_sum, correct, seen, self.dist, unwrap(model))
        return {"epoch": epoch, "train_loss": float(loss_sum) / max(seen, 1),
                "train_acc": float(correct) / max(seen, 1), "lr": self.schedule.lr_at(first_step),
                "lr_end": self.schedule.lr_at(first_step + steps - 1), "epoch_time_s": seconds,
                "images_per_s": seen / seconds if seconds > 0 else 0.0}

    def eval_model(self) -> torch.nn.Module:
        """The model to evaluate: without DistributedDataParallel, whose forward would join the other ranks
        (only rank 0 evaluates), but as trained otherwise; with --ema, the average."""
        if self.averaged is not None:
            return self.averaged.module
        return getattr(self.model, "module", self.model) if self.dist.enabled else self.model


def new_run_folder(config: Any, default_name: str, dist: Any) -> RunFolder:
    """A fresh run folder for ``config`` (``--out``/``--name``), created by rank 0 alone with the resolved
    configuration in it; its name reaches the other ranks by broadcast."""
    path = None
    if dist.is_main:
        path = RunFolder.create(config.out, config.name or default_name).path
        save_run_config(config, path)
    return RunFolder(broadcast_object(path, dist))
