"""The monitored metric: which epoch is best, which K epochs are kept, and when early stopping ends a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MetricTracker:
    """``monitor`` is a metrics.csv column (``val_acc`` is maximised, any ``*_loss`` minimised).

    An epoch improves only when strictly better than the best so far, so among equal values the earliest is
    best. ``top`` holds the ``keep`` best epochs as ``{"epoch", "value"}``, best first.
    """

    monitor: str = "val_acc"
    keep: int = 1
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        return not self.monitor.endswith("loss")

    def better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value > than if self.maximize else value < than

    def update(self, epoch: int, value: float) -> tuple[bool, bool, list[int]]:
        """Record an epoch. Returns (new best?, among the kept top K?, epochs that dropped out of the top K)."""
        improved = self.better(value, self.best_value)
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        ranked = [*self.top, {"epoch": epoch, "value": value}]
        ranked.sort(key=lambda item: (-item["value"] if self.maximize else item["value"], item["epoch"]))
        kept, dropped = ranked[: self.keep], ranked[self.keep:]
        self.top = kept
        return improved, any(item["epoch"] == epoch for item in kept), [item["epoch"] for item in dropped]

    def should_stop(self, patience: int | None) -> bool:
        return patience is not None and self.bad_epochs >= patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricTracker:
        return cls(**data)
