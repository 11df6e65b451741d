"""The training loop: epochs of steps, validation, metrics.csv, checkpoints, and the final test evaluation."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import TrainConfig
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import ImageTensors, Preprocessing
    from cnnctl.engine.evaluate import EvalResult

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


@dataclass
class FitResult:
    """What a training run produced. It is path-like (its run folder), so ``cnnctl.load(run)`` works."""

    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] | None = None

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


def build_optimizer(config: TrainConfig, parameters: Any) -> torch.optim.Optimizer:
    import torch

    lr = config.resolved_lr()
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise UsageError(f"unknown optimizer {config.optimizer!r}")


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
    return PreparedData(train, val, test, spec.classes, preprocessing, spec.name)


class Trainer:
    """One training run. ``run()`` returns the run folder's paths, the per-epoch history and the test result."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None):
        config.validate()
        self.config = config
        self.reporter = reporter or SilentReporter()

    def run(self) -> FitResult:
        import torch

        from cnnctl.data.loader import BatchLoader
        from cnnctl.engine.device import resolve_device, seed_everything
        from cnnctl.models import build_model
        from cnnctl.registry import get_dataset_spec, get_model_spec

        config = self.config
        device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        model_spec = get_model_spec(config.arch)
        config.arch = model_spec.name
        data = prepare_data(config, self.reporter)
        self.data = data
        augment_name = config.augment or get_dataset_spec(data.dataset_label).augment  # None: the dataset's default
        from cnnctl.data.augment import make_augmentation

        augment = make_augmentation(augment_name, data.preprocessing.image_size)
        model = build_model(config.arch, num_classes=len(data.classes), in_channels=data.preprocessing.channels,
                            **config.arch_args).to(device)
        if config.pretrained:
            from cnnctl.models.pretrained import load_pretrained

            load_pretrained(model, model_spec, config.pretrained, log=self.reporter.message)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        from cnnctl.engine.freeze import HeadOnlyPhase

        head_only = HeadOnlyPhase(model, model_spec.classifier, config.freeze_epochs)
        optimizer = build_optimizer(config, model.parameters())

        def loader(split: ImageTensors, shuffle: bool, seed: int = config.seed) -> BatchLoader:
            return BatchLoader(split, data.preprocessing, batch_size=config.batch_size, device=device,
                               shuffle=shuffle, seed=seed, augment=augment if shuffle else None,
                               channels_last=config.channels_last)

        train_batches = loader(data.train, shuffle=True)
        from cnnctl.engine.schedules import build_schedule

        schedule = build_schedule(config.scheduler, optimizer, epochs=config.epochs,
                                  steps_per_epoch=len(train_batches), lr=config.resolved_lr())
        val_batches = loader(data.val, shuffle=False) if data.val is not None else None
        run_dir = create_run_dir(config.out, config.name or f"{model_spec.name}-{data.dataset_label}")
        config.save(run_dir / "config.json")
        best_path, last_path = run_dir / "best.safetensors", run_dir / "last.safetensors"
        parameters = sum(p.numel() for p in model.parameters())
        self.reporter.start({
            "arch": model_spec.name, "dataset": data.dataset_label, "device": str(device), "parameters": parameters,
            "train": len(data.train), "val": len(data.val) if data.val is not None else 0,
            "test": len(data.test) if data.test is not None else 0, "run_dir": str(run_dir),
            "epochs": config.epochs, "batch_size": config.batch_size,
        })
        if val_batches is not None:
            from cnnctl.engine.evaluate import evaluate

            sanity = evaluate(model, val_batches, len(data.classes), max_batches=2)
            self.reporter.message(f"sanity check on 2 validation batches: loss {sanity.loss:.3f} "
                                  f"(chance ≈ {_chance_loss(len(data.classes)):.3f})")

        history: list[dict[str, float]] = []
        best_value: float | None = None
        for epoch in range(1, config.epochs + 1):
            head_only.begin_epoch(epoch, self.reporter.message)
            row = self._train_epoch(model, optimizer, schedule, train_batches, epoch)
            if val_batches is not None:
                from cnnctl.engine.evaluate import evaluate

                val = evaluate(model, val_batches, len(data.classes))
                row["val_loss"], row["val_acc"] = val.loss, val.top1
            schedule.step_epoch(row)
            history.append(row)
            self._append_metrics(run_dir / "metrics.csv", row)
            monitored = row.get("val_acc", row["train_acc"])
            meta = self._meta(data, epoch, row)
            from cnnctl import checkpoint

            checkpoint.save(last_path, model, meta)
            if best_value is None or monitored > best_value:
                best_value = monitored
                checkpoint.save(best_path, model, meta)
            self.reporter.epoch_end(row, config.epochs)

        result = FitResult(run_dir, best_path, last_path, history)
        if data.test is not None:
            result.test = self._final_test(best_path, data, device)
        return result

    def _train_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, batches: Any,
                     epoch: int) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        model.train()
        steps = len(batches)
        self.reporter.epoch_start(epoch, self.config.epochs, steps)
        loss_sum = torch.zeros((), device=batches.device)
        correct = torch.zeros((), dtype=torch.int64, device=batches.device)
        seen = 0
        lr_at_start = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        for step, (inputs, labels) in enumerate(batches, start=1):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step_batch()
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += int(labels.shape[0])
            self.reporter.step(step, loss)
        seconds = time.perf_counter() - started
        train_loss = float(loss_sum) / max(seen, 1)
        if not torch.isfinite(torch.tensor(train_loss)):
            raise CnnctlError(f"training diverged in epoch {epoch}: the loss is {train_loss}",
                              hint="lower --lr; the last good checkpoint is kept")
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": float(correct) / max(seen, 1),
            "lr": lr_at_start,
            "epoch_time_s": seconds,
            "images_per_s": seen / seconds if seconds > 0 else 0.0,
        }

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
    def _append_metrics(path: Path, row: dict[str, float]) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({key: row.get(key, "") for key in METRIC_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())

    def _final_test(self, best_path: Path, data: PreparedData, device: torch.device) -> dict[str, Any]:
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
        meta.metrics = {**(meta.metrics or {}), **{k: v for k, v in summary.items() if k.startswith("test_")}}
        checkpoint.save(best_path, model, meta)
        from cnnctl.fsutil import atomic_write_text

        atomic_write_text(best_path.parent / "results.json", json.dumps(summary, indent=2) + "\n")
        self.reporter.end(summary)
        return summary


def _chance_loss(num_classes: int) -> float:
    import math

    return math.log(num_classes)


def train(config: TrainConfig | None = None, *, reporter: Reporter | None = None, **options: Any) -> FitResult:
    """Python API: ``cnnctl.train(arch="lenet5", dataset="mnist", epochs=2)`` mirrors ``cnnctl train``."""
    config = config or TrainConfig(**options)
    return Trainer(config, reporter).run()
