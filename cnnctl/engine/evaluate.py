"""Evaluation: loss, top-1, top-5 and the confusion matrix over a whole split, in one pass."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: Any  # torch.Tensor [true, predicted]

    def as_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        from cnnctl.engine.metrics import per_class_report

        result: dict[str, Any] = {"loss": self.loss, "accuracy": self.top1, "top5": self.top5, "count": self.count}
        if classes is not None:
            result.update(per_class_report(self.confusion, classes))
            result["confusion"] = self.confusion.tolist()
        return result


def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             *, max_batches: int | None = None, autocast: Any = None, tta: str = "none") -> EvalResult:
    """Run ``model`` in eval mode over ``batches``; sums stay on the device until the end (one sync). ``tta``:
    average the softmax over views of each image (:mod:`cnnctl.tta`)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from cnnctl.engine.metrics import confusion_matrix

    was_training = model.training
    model.eval()
    loss_sum = None
    top5_hits = None
    confusion = None
    count = 0
    k = min(5, num_classes)
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for index, (inputs, labels) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            if tta == "none":
                logits = model(inputs).float()
                batch_loss = F.cross_entropy(logits, labels, reduction="sum")
            else:
                from cnnctl.tta import tta_probabilities

                logits = tta_probabilities(model, inputs, tta).clamp_min(1e-12).log()  # log of the mean softmax
                batch_loss = F.nll_loss(logits, labels, reduction="sum")
            topk = logits.topk(k, dim=1).indices
            hits = (topk == labels.unsqueeze(1)).any(dim=1).sum()
            batch_confusion = confusion_matrix(labels, topk[:, 0], num_classes)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            top5_hits = hits if top5_hits is None else top5_hits + hits
            confusion = batch_confusion if confusion is None else confusion + batch_confusion
            count += int(labels.shape[0])
    model.train(was_training)
    if count == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0, torch.zeros(num_classes, num_classes))
    confusion = confusion.cpu()
    return EvalResult(
        loss=float(loss_sum) / count,
        top1=float(confusion.diagonal().sum()) / count,
        top5=float(top5_hits) / count,
        count=count,
        confusion=confusion,
    )


def evaluate_checkpoint(path: Any, *, dataset: str | None = None, split: str = "test", batch_size: int = 1000,
                        root: str | None = None, mirror: str | None = None, device: str = "auto",
                        log: Any = None, data_dir: str | None = None,
                        plots_dir: Any = None, tta: str = "none") -> tuple[EvalResult, Any]:
    """Evaluate a checkpoint on a split of its dataset; every other setting comes from its metadata.
    With ``plots_dir``, also write confusion.png and predictions.png there; ``tta``: see :mod:`cnnctl.tta`."""
    from cnnctl.data.loader import BatchLoader
    from cnnctl.data.splits import eval_split
    from cnnctl.engine.device import resolve_device
    from cnnctl.models import load_checkpoint
    from cnnctl.tta import check_tta

    tta = check_tta(tta)
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(path, device=torch_device)
    data = eval_split(meta, dataset=dataset, split=split, root=root, mirror=mirror, data_dir=data_dir, log=log)
    batches = BatchLoader(data, meta.preprocessing, batch_size=batch_size, device=torch_device)
    result = evaluate(model, batches, meta.num_classes, tta=tta)
    if plots_dir is not None:
        from cnnctl import plots

        plots.require()
        plots.evaluation_plots(plots_dir, model, data, meta.preprocessing, meta.classes, result.confusion, split=split)
    return result, meta
