"""Evaluation: loss, top-1, top-k (k = min(5, classes)) and the confusion matrix over a whole split, in one pass;
balanced accuracy and macro-F1 come from the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl import plots
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.data.loader import BatchLoader
from cnnctl.data.splits import eval_split
from cnnctl.engine.device import resolve_device
from cnnctl.engine.metrics import balanced_accuracy, confusion_matrix, macro_f1, per_class_report, topk_k
from cnnctl.engine.tta import check_tta, tta_probabilities

if TYPE_CHECKING:
    import torch


@dataclass
class EvalResult:
    loss: float
    top1: float
    topk: float  # top-k accuracy, k = ``k``
    count: int
    confusion: Any  # torch.Tensor [true, predicted]
    k: int = 5

    @property
    def top5(self) -> float:
        """The top-k accuracy (k = ``k``: 5, or the number of classes when there are fewer)."""
        return self.topk

    @property
    def topk_name(self) -> str:
        """``top-5``, ``top-3``, ...: how text names the top-k accuracy."""
        return f"top-{self.k}"

    @property
    def topk_key(self) -> str:
        """``top5``, ``top3``, ...: how JSON (and results.json, as ``test_top3``) names it."""
        return f"top{self.k}"

    @property
    def balanced_accuracy(self) -> float:
        return balanced_accuracy(self.confusion)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.confusion)

    def as_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {"loss": self.loss, "accuracy": self.top1, self.topk_key: self.topk,
                                  "top_k": self.k, "balanced_accuracy": self.balanced_accuracy,
                                  "macro_f1": self.macro_f1, "count": self.count}
        if classes is not None:
            result.update(per_class_report(self.confusion, classes))
            result["confusion"] = self.confusion.tolist()
        return result


def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             *, max_batches: int | None = None, autocast: Any = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None, tta: str = "none") -> EvalResult:
    """Run ``model`` in eval mode over ``batches``; sums stay on the device until the end (one sync).
    ``on_batch(logits, labels)`` sees every batch's float logits (the evaluation report keeps them); ``tta``:
    average the softmax over views of each image (:mod:`cnnctl.engine.tta`; the logits are then log-probabilities)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    loss_sum = None
    topk_hits = None
    confusion = None
    count = 0
    k = topk_k(num_classes)
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for index, (inputs, labels) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            if tta == "none":
                logits = model(inputs).float()
                batch_loss = F.cross_entropy(logits, labels, reduction="sum")
            else:
                logits = tta_probabilities(model, inputs, tta).clamp_min(1e-12).log()  # log of the mean softmax
                batch_loss = F.nll_loss(logits, labels, reduction="sum")
            if on_batch is not None:
                on_batch(logits, labels)
            topk = logits.topk(k, dim=1).indices
            hits = (topk == labels.unsqueeze(1)).any(dim=1).sum()
            batch_confusion = confusion_matrix(labels, topk[:, 0], num_classes)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            topk_hits = hits if topk_hits is None else topk_hits + hits
            confusion = batch_confusion if confusion is None else confusion + batch_confusion
            count += int(labels.shape[0])
    model.train(was_training)
    if count == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0,
                          torch.zeros(num_classes, num_classes, dtype=torch.int64), k)
    confusion = confusion.cpu()
    return EvalResult(
        loss=float(loss_sum) / count,
        top1=float(confusion.diagonal().sum()) / count,
        topk=float(topk_hits) / count,
        count=count,
        confusion=confusion,
        k=k,
    )


@dataclass
class Evaluation:
    """What an evaluation of a checkpoint works on: the model, its metadata, the split and its batches."""

    model: Any
    meta: Any
    data: Any
    batches: Any


def open_evaluation(path: Any, *, dataset: str | None = None, split: str = "test", batch_size: int = 1000,
                    root: str | None = None, mirror: str | None = None, device: str = "auto", log: Any = None,
                    data_dir: str | None = None) -> Evaluation:
    """Load a checkpoint and the split it should be evaluated on; every other setting comes from its metadata."""
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(path, device=torch_device)
    data = eval_split(meta, dataset=dataset, split=split, root=root, mirror=mirror, data_dir=data_dir, log=log)
    batches = BatchLoader(data, meta.preprocessing, batch_size=batch_size, device=torch_device)
    return Evaluation(model, meta, data, batches)


def evaluate_checkpoint(path: Any, *, dataset: str | None = None, split: str = "test", batch_size: int = 1000,
                        root: str | None = None, mirror: str | None = None, device: str = "auto",
                        log: Any = None, data_dir: str | None = None,
                        plots_dir: Any = None, tta: str = "none") -> tuple[EvalResult, Any]:
    """Evaluate a checkpoint on a split of its dataset; every other setting comes from its metadata.
    With ``plots_dir``, also write confusion.png and predictions.png there; ``tta``: see :mod:`cnnctl.engine.tta`."""
    tta = check_tta(tta)  # before any work
    opened = open_evaluation(path, dataset=dataset, split=split, batch_size=batch_size, root=root, mirror=mirror,
                             device=device, log=log, data_dir=data_dir)
    model, meta, data = opened.model, opened.meta, opened.data
    result = evaluate(model, opened.batches, meta.num_classes, tta=tta)
    if plots_dir is not None:
        plots.require()
        plots.evaluation_plots(plots_dir, model, data, meta.preprocessing, meta.classes, result.confusion, split=split)
    return result, meta
