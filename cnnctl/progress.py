"""How a training run reports itself: rich progress bars on a terminal, one plain line per epoch otherwise.

The engine calls these hooks; it never prints on its own. Data goes to stdout, messages to stderr.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Reporter:
    """Hooks the training loop calls. The base class ignores everything."""

    def start(self, info: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, step: int, loss: Any) -> None: ...

    def epoch_end(self, row: dict[str, float], epochs: int) -> None: ...

    def phase(self, text: str) -> None:
        """What the run is doing between steps: "validating", "testing", "plotting"."""

    def end(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class SilentReporter(Reporter):
    """For the Python API and tests."""


def epoch_line(row: dict[str, float], epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {int(row['epoch']):>{width}}/{epochs}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"]
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}")
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['epoch_time_s']:.1f}s {row['images_per_s']:,.0f} img/s")
    return "  ".join(parts)


def start_line(info: dict[str, Any]) -> str:
    return (f"training {info['arch']} on {info['dataset']} ({info['train']:,} train / {info['val']:,} val / "
            f"{info['test']:,} test) on {info['device']}: {info['parameters']:,} parameters, "
            f"{info['epochs']} epochs, batch {info['batch_size']} → {info['run_dir']}")


def end_line(summary: dict[str, Any]) -> str:
    """``top-5``, or ``top-3`` for 3 classes: results.json names the top-k accuracy ``test_top<k>``."""
    key = next((k for k in summary if k.startswith("test_top") and k[8:].isdigit()), None)
    topk = f"top-{key[8:]} {summary[key]:.2%}, " if key else ""
    return (f"test accuracy {summary['test_acc']:.2%} ({topk}loss {summary['test_loss']:.4f}) on "
            f"{summary['test_count']:,} images, best epoch {summary['best_epoch']}")


class PlainReporter(Reporter):
    """One line per epoch on stdout, messages on stderr; for logs, pipes and CI."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def start(self, info: dict[str, Any]) -> None:
        print(start_line(info), file=self.out, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        print(epoch_line(row, epochs), file=self.out, flush=True)

    def end(self, summary: dict[str, Any]) -> None:
        print(end_line(summary), file=self.out, flush=True)


class RichReporter(Reporter):
    """A live progress bar per epoch with the running loss; the finished epoch stays as one line."""

    LOSS_EVERY = 10  # reading the loss forces a device sync; do it only every few steps

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console()
        self.err_console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None

    def start(self, info: dict[str, Any]) -> None:
        self.console.print(start_line(info), highlight=False)
        self.progress.start()

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]", highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, loss="…")

    def step(self, step: int, loss: Any) -> None:
        if step % self.LOSS_EVERY == 0:
            self.progress.update(self.task, completed=step, loss=f"{float(loss):.4f}")
        else:
            self.progress.update(self.task, completed=step)

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        self.progress.console.print(epoch_line(row, epochs), highlight=False)

    def end(self, summary: dict[str, Any]) -> None:
        self.close()
        self.console.print(f"[bold green]{end_line(summary)}[/bold green]", highlight=False)

    def close(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.stop()


def make_reporter(quiet: bool = False) -> Reporter:
    if quiet:
        return SilentReporter()
    return RichReporter() if sys.stdout.isatty() else PlainReporter()
