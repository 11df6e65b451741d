"""The monitored metric: which epoch is best, which K epochs are kept, and when early stopping ends a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MetricTracker:
    """``monitor`` is a metrics.csv column (``val_acc`` is maximised, any ``*_loss`` minimised).

    An epoch improves when it is better than the best so far. A maximised metric breaks ties by ``val_loss``:
    on a small validation split accuracy saturates (80 images at 100% from epoch 2 on), and the earliest of
    equal accuracies is the least trained one, while the lowest loss among them is the most confident. Without a
    tie-break value, among equal values the earliest is best. ``top`` holds the ``keep`` best epochs as
    ``{"epoch", "value", "tiebreak"}``, best first.
    """

    monitor: str = "val_acc"
    keep: int = 1
    best_value: float | None = None
    best_epoch: int | None = None
    best_tiebreak: float | None = None
    bad_epochs: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        return not self.monitor.endswith("loss")

    @property
    def tiebreak(self) -> str | None:
        """The metrics.csv column that orders epochs of equal ``monitor`` values (lower is better)."""
        return "val_loss" if self.maximize else None

    def better(self, value: float, than: float | None, tiebreak: float | None = None,
               than_tiebreak: float | None = None) -> bool:
        if than is None:
            return True
        if value == than and tiebreak is not None and than_tiebreak is not None:
            return tiebreak < than_tiebreak
        return value > than if self.maximize else value < than

    def update(self, epoch: int, value: float, tiebreak: float | None = None) -> tuple[bool, bool, list[int]]:
        """Record an epoch (``tiebreak``: its value of :attr:`tiebreak`). Returns (new best?, among the kept top
        K?, epochs that dropped out of the top K)."""
        strictly = self.better(value, self.best_value)
        improved = strictly or self.better(value, self.best_value, tiebreak, self.best_tiebreak)
        if improved:
            self.best_value, self.best_epoch, self.best_tiebreak = value, epoch, tiebreak
        # patience counts epochs without a better monitored value: a tie-break picks a checkpoint, nothing more
        self.bad_epochs = 0 if strictly else self.bad_epochs + 1
        ranked = [*self.top, {"epoch": epoch, "value": value, "tiebreak": tiebreak}]
        ranked.sort(key=lambda item: (-item["value"] if self.maximize else item["value"],
                                      item.get("tiebreak") if item.get("tiebreak") is not None else float("inf"),
                                      item["epoch"]))
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
