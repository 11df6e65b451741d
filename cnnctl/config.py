"""TrainConfig: every option of ``cnnctl train``, resolved. It is what config.json in a run folder holds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainConfig:
    arch: str
    dataset: str = "mnist"
    data_dir: str | None = None
    root: str | None = None
    mirror: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adam"
    scheduler: str = "onecycle"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    val_split: float | None = None
    augment: str | None = None
    out: str = "runs"
    name: str | None = None
    threads: int | None = None
    img_size: int | None = None
    channels_last: bool = False
    arch_args: dict[str, Any] = field(default_factory=dict)
    # architectures: start from local weights (--pretrained), train only the classifier first (--freeze-epochs)
    pretrained: str | None = None
    freeze_epochs: int = 0
    limit: int | None = None  # train on this many randomly chosen training images (after the validation split)

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        # OneCycle warms up to this peak and anneals from it, so it can be higher than a constant rate.
        if self.scheduler == "onecycle":
            return {"sgd": 0.1}.get(self.optimizer, 5e-3)
        return {"sgd": 0.05}.get(self.optimizer, 1e-3)

    def validate(self) -> None:
        """Reject contradictory or out-of-range options before any work starts."""
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            from cnnctl.registry import suggest

            raise suggest(self.optimizer, list(OPTIMIZERS), "optimizer")
        from cnnctl.engine.schedules import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            from cnnctl.registry import suggest

            raise suggest(self.scheduler, list(SCHEDULERS), "scheduler")
        if self.val_split is not None and self.val_split < 0:
            raise UsageError(f"--val-split must be >= 0, got {self.val_split}")
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; choose auto, cpu, cuda, cuda:N or mps")
        if self.freeze_epochs < 0:
            raise UsageError(f"--freeze-epochs must be >= 0, got {self.freeze_epochs}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.img_size is not None and self.img_size < 1:
            raise UsageError(f"--img-size must be at least 1, got {self.img_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            from cnnctl.registry import suggest

            raise suggest(unknown[0], sorted(known), f"option in {source}:")
        return cls(**data)

    def save(self, path: Path) -> None:
        from cnnctl.fsutil import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
