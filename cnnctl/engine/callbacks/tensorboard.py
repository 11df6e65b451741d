"""``--logger tensorboard``: the run as TensorBoard event files in ``RUN/tensorboard/``, so that
``tensorboard --logdir runs`` shows every run side by side.

Every scalar's step is the optimizer step (``(epoch - 1) × steps per epoch + step``): per step the batch loss and
learning rate (``step/train_loss``, ``step/lr``), per epoch the metrics.csv row at the epoch's last step
(``epoch/train_loss``, ``epoch/val_acc``, ...), and at the end the final test (``test/acc``, ``test/loss``,
``test/top5``, the confusion matrix and the prediction grid as images). The hyper-parameters (the resolved
configuration) go to TensorBoard's hparams plugin.

One step axis makes resuming exact: the writer of a resumed run starts with ``purge_step`` at the first step it
will train again, so TensorBoard drops whatever the interrupted process logged after the saved state, and no step
appears twice. The epoch's events are flushed before the epoch's state is saved, so what the state says was
trained is on disk in the event files too. Rank 0 alone writes.
"""

from __future__ import annotations

import re
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import plots
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.callbacks.final_test import FinalTest
from cnnctl.engine.loggers import logger_builder, run_params

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer
    from cnnctl.recipe.config import TrainConfig

TENSORBOARD_DIR = "tensorboard"
# the scalars the hparams plugin shows beside the hyper-parameters (their last value)
HPARAM_METRICS = ("epoch/val_acc", "epoch/val_loss", "test/acc", "test/loss")


class TensorBoardLogger(Callback):
    """Writes the run's TensorBoard events (see the module's docstring for the tags and steps)."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.closer: Any = None
        self.steps_per_epoch = 1
        self.epoch = 1
        self.every = 1
        self.hparams_written = False

    def global_step(self, epoch: int, step: int) -> int:
        return (epoch - 1) * self.steps_per_epoch + step

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch = len(trainer.train_batches)
        self.every = 1 if trainer.device.type == "cpu" else 32  # reading a CUDA loss waits for the GPU
        resumed = trainer.resume_dir is not None
        purge = self.global_step(trainer.start_epoch + 1, trainer.start_batch + 1) if resumed else None
        self.writer = SummaryWriter(str(trainer.run_dir / TENSORBOARD_DIR), purge_step=purge)
        self.closer = weakref.finalize(self, self.writer.close)  # also at exit: an interrupted run's last steps
        if not self.hparams_written:
            from torch.utils.tensorboard.summary import hparams

            experiment, start, _ = hparams(run_params(trainer.config), dict.fromkeys(HPARAM_METRICS, 0.0))
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(start)
            self.hparams_written = True

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        if self.writer is None or (step % self.every and step != self.steps_per_epoch):
            return
        at = self.global_step(self.epoch, step)
        self.writer.add_scalar("step/train_loss", float(loss.detach()), at)
        self.writer.add_scalar("step/lr", float(trainer.optimizer.param_groups[0]["lr"]), at)

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        at = self.global_step(epoch, self.steps_per_epoch)
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", float(value), at)
        self.writer.flush()  # before the checkpoint saver commits the epoch

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        at = self.global_step(len(trainer.history), self.steps_per_epoch)
        if result.test is not None:
            topk = next((key[len("test_"):] for key in result.test if re.fullmatch(r"test_top\d+", key)), None)
            for key in ("acc", "loss", topk):  # top-k by its k (top-3 for 3 classes)
                if key is not None:
                    self.writer.add_scalar(f"test/{key}", float(result.test[f"test_{key}"]), at)
            for tag, image in self.test_images(trainer, result):
                self.writer.add_image(tag, image, at, dataformats="HWC")
        self.writer.file_writer.add_summary(hparams(run_params(trainer.config), {})[2])  # session end: success
        self.close()

    def test_images(self, trainer: Trainer, result: FitResult) -> list[tuple[str, Any]]:
        """The final test's confusion matrix and prediction grid (the run folder's PNGs, or drawn for this
        logger alone under --no-plots) as HxWx3 uint8 arrays."""
        names = {"test/confusion_matrix": "confusion.png", "test/predictions": "predictions.png"}
        with tempfile.TemporaryDirectory() as scratch:
            folder = trainer.run_dir
            if not all((folder / name).is_file() for name in names.values()):
                final_test = next((c for c in trainer.callbacks.callbacks if isinstance(c, FinalTest)), None)
                if final_test is None or final_test.evaluation is None or plots.available():
                    return []
                model, evaluation, images, split = final_test.evaluation
                data = trainer.data
                folder = Path(scratch)
                plots.evaluation_plots(folder, model, images, data.preprocessing, list(data.classes),
                                       evaluation.confusion, split=split)
            return [(tag, read_png(folder / name)) for tag, name in names.items()]

    def close(self) -> None:
        if self.writer is not None:
            self.closer()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"hparams_written": self.hparams_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hparams_written = bool(state.get("hparams_written", False))


def read_png(path: Path) -> Any:
    """A PNG as an HxWx3 uint8 array (matplotlib's reader; the alpha channel dropped)."""
    import numpy as np
    from matplotlib.image import imread

    image = imread(path)
    if image.dtype != np.uint8:
        image = (image * 255).round().astype(np.uint8)
    return image[..., :3]


@logger_builder("tensorboard")
def _tensorboard(config: TrainConfig) -> Callback:
    return TensorBoardLogger()
