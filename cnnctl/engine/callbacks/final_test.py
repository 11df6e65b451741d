"""The final test: best.safetensors, reloaded from disk, on the test split (the number ``cnnctl eval``
reproduces), written to results.json and into the checkpoint's metrics. With several processes rank 0 alone
evaluates and writes; every rank gets the numbers, and results.json records each rank's weights fingerprint."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.data.loader import BatchLoader
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.distributed import broadcast_object, gather_object, weights_fingerprint
from cnnctl.engine.evaluate import evaluate
from cnnctl.fsutil import atomic_write_text

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer


class FinalTest(Callback):
    order = -20  # before the plots (which draw its confusion matrix) and before user callbacks see the result

    def __init__(self) -> None:
        self.evaluation: tuple[Any, Any] | None = None  # (model, EvalResult) for the plots

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        fingerprints: list[str] = []
        if trainer.dist.enabled:
            fingerprints = gather_object(weights_fingerprint(trainer.model), trainer.dist)
            same = len(set(fingerprints)) == 1
            trainer.reporter.message(f"all {trainer.dist.world_size} processes end with the same weights" if same
                                     else f"warning: the processes ended with different weights: {fingerprints}")
        if trainer.data.test is None:
            return
        if trainer.dist.is_main:
            trainer.reporter.phase("testing")
            result.test = self.run_test(trainer, fingerprints)
        result.test = broadcast_object(result.test, trainer.dist)

    def run_test(self, trainer: Trainer, fingerprints: list[str]) -> dict[str, Any]:
        data, folder = trainer.data, trainer.folder
        model, meta = load_checkpoint(folder.best, device=trainer.device)
        batches = BatchLoader(data.test, data.preprocessing, batch_size=max(trainer.config.batch_size, 512),
                              device=trainer.device)
        test = evaluate(model, batches, len(data.classes))
        summary = {"test_loss": test.loss, "test_acc": test.top1, f"test_{test.topk_key}": test.topk,
                   "test_balanced_acc": test.balanced_accuracy, "test_macro_f1": test.macro_f1,
                   "test_count": test.count, "best_epoch": meta.epoch}
        if fingerprints:  # distributed: one sha256 of the final weights per rank (all equal)
            summary.update(processes=len(fingerprints), weights_sha256=fingerprints)
        meta.metrics = {**(meta.metrics or {}), **{k: v for k, v in summary.items() if k.startswith("test_")}}
        checkpoint.save(folder.best, model, meta)
        atomic_write_text(folder.results, json.dumps(summary, indent=2) + "\n")
        trainer.reporter.end(summary)
        self.evaluation = (model, test)
        return summary
