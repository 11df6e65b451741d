"""The final evaluation: best.safetensors, reloaded from disk, on the test split (the number ``cnnctl eval``
reproduces), written to results.json and into the checkpoint's metrics. A run without a test split is evaluated
the same way on its validation split (``"split": "val"`` in results.json; the keys then start with ``val_``), and
a run without either records its best epoch and monitored value: every run that trains to the end has its result
line and results.json. With several processes rank 0 alone evaluates and writes; every rank gets the numbers, and
results.json records each rank's weights fingerprint."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.data.loader import BatchLoader
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.distributed import broadcast_object, gather_object, weights_fingerprint
from cnnctl.engine.evaluate import evaluate
from cnnctl.engine.multilabel import evaluate_multilabel, metric_row
from cnnctl.fsutil import atomic_write_text

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer


class FinalTest(Callback):
    order = -20  # before the plots (which draw its confusion matrix) and before user callbacks see the result

    def __init__(self) -> None:
        # (model, EvalResult, images, split name) for the plots
        self.evaluation: tuple[Any, Any, Any, str] | None = None

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        fingerprints: list[str] = []
        if trainer.dist.enabled:
            fingerprints = gather_object(weights_fingerprint(trainer.model), trainer.dist)
            same = len(set(fingerprints)) == 1
            trainer.reporter.message(f"all {trainer.dist.world_size} processes end with the same weights" if same
                                     else f"warning: the processes ended with different weights: {fingerprints}")
        if trainer.dist.is_main:
            result.results = self.run_final(trainer, fingerprints)
        result.results = broadcast_object(result.results, trainer.dist)
        result.test = result.results if result.results.get("split") == "test" else None

    def run_final(self, trainer: Trainer, fingerprints: list[str]) -> dict[str, Any]:
        """Evaluate best.safetensors on the test split (else the validation split), write results.json and
        show the result line."""

        data, folder = trainer.data, trainer.folder
        split, images = next(((name, held_out) for name, held_out in (("test", data.test), ("val", data.val))
                              if held_out is not None and len(held_out) > 0), (None, None))
        if images is None:  # neither split: the best epoch as the monitored training metric chose it
            summary: dict[str, Any] = {"split": None, "best_epoch": trainer.tracker.best_epoch,
                                       "monitor": trainer.monitor, "best_value": trainer.tracker.best_value}
        else:
            trainer.reporter.phase("testing" if split == "test" else "evaluating the best epoch")
            model, meta = load_checkpoint(folder.best, device=trainer.device)
            batches = BatchLoader(images, data.preprocessing, batch_size=max(trainer.config.batch_size, 512),
                                  device=trainer.device)
            if meta.multilabel:  # at the thresholds the checkpoint keeps (tuned on validation)
                evaluation = evaluate_multilabel(model, batches, len(data.classes),
                                                 thresholds=meta.resolved_thresholds,
                                                 label_count=meta.label_count_range)
                summary = {"split": split, "task": meta.task, **metric_row(evaluation, split),
                           f"{split}_count": evaluation.count, "best_epoch": meta.epoch}
            else:
                evaluation = evaluate(model, batches, len(data.classes))
                summary = {"split": split, f"{split}_loss": evaluation.loss, f"{split}_acc": evaluation.top1,
                           f"{split}_{evaluation.topk_key}": evaluation.topk,
                           f"{split}_balanced_acc": evaluation.balanced_accuracy,
                           f"{split}_macro_f1": evaluation.macro_f1, f"{split}_count": evaluation.count,
                           "best_epoch": meta.epoch}
            if split == "test":  # the checkpoint carries its test numbers (validation ones it has already)
                meta.metrics = {**(meta.metrics or {}), **{k: v for k, v in summary.items() if k.startswith("test_")}}
                checkpoint.save(folder.best, model, meta)
            self.evaluation = None if meta.multilabel else (model, evaluation, images, split)
        if fingerprints:  # distributed: one sha256 of the final weights per rank (all equal)
            summary.update(processes=len(fingerprints), weights_sha256=fingerprints)
        atomic_write_text(folder.results, json.dumps(summary, indent=2) + "\n")
        trainer.reporter.end(summary)
        return summary
