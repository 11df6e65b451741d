"""How a training run reports itself: rich progress bars on a terminal, one plain line per epoch otherwise.

The engine calls these hooks; it never prints on its own. Progress (bars, phases) and messages go to stderr; the
per-epoch lines and the final result are the run's data and go to stdout.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO


class Reporter:
    """Hooks the training loop calls. The base class ignores everything."""

    def start(self, info: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, step: int, loss: Any) -> None: ...

    def phase(self, text: str) -> None:
        """Work between the steps that has no bar of its own: "validating", "testing", "plotting"."""

    def epoch_end(self, row: dict[str, float], epochs: int) -> None: ...

    def end(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class SilentReporter(Reporter):
    """For the Python API and tests."""


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``, ``1,000 images``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``1:02:03``: the clock style of rich and tqdm."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_text(count: int, seconds: float, unit: str = "img/s") -> str:
    """Throughput as people read it: ``24,793 img/s``, ``3.4 img/s``; empty when too little was measured (one
    item says nothing about a rate)."""
    if count < 2 or seconds <= 0:
        return ""
    rate = count / seconds
    return f"{rate:,.0f} {unit}" if rate >= 10 else f"{rate:.1f} {unit}"


class RunClock:
    """Estimates the time left in an epoch and in the whole run from the steps and epochs timed so far."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.epochs = 0
        self.first_epoch: int | None = None
        self.run_started: float | None = None
        self.epoch_started = 0.0
        self.epoch = 0
        self.steps = 0
        self.first_step: int | None = None

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        now = self.now()
        if self.first_epoch is None:
            self.first_epoch, self.run_started = epoch, now
        self.epoch, self.epochs, self.steps, self.epoch_started = epoch, epochs, steps, now
        self.first_step: int | None = None

    def stepped(self, step: int) -> None:
        """Record a step; a resumed epoch starts after the steps trained before the interruption."""
        if self.first_step is None:
            self.first_step = step

    def epoch_left(self, step: int) -> float | None:
        if step <= 0 or not self.steps:
            return None
        trained = step - (self.first_step or 1) + 1
        elapsed = self.now() - self.epoch_started
        return elapsed / max(trained, 1) * (self.steps - step)

    def run_left(self, step: int | None = None) -> float | None:
        """Seconds until the last epoch ends. Finished epochs (with their validation) set the pace; during the
        first one, its steps do."""
        if self.first_epoch is None or self.run_started is None:
            return None
        done = self.epoch - self.first_epoch  # whole epochs finished in this process before the current one
        later = self.epochs - self.epoch
        if step is None:  # the current epoch is over
            return (self.now() - self.run_started) / (done + 1) * later
        current = self.epoch_left(step)
        if current is None:
            return None
        if done:
            per_epoch = (self.epoch_started - self.run_started) / done
        else:
            per_epoch = (self.now() - self.epoch_started) + current
        return current + per_epoch * later


def epoch_line(row: dict[str, float], epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {int(row['epoch']):>{width}}/{epochs}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"]
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
                     + (f" mAP {row['val_map']:.4f}" if "val_map" in row else ""))
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['epoch_time_s']:.1f}s {row['images_per_s']:,.0f} img/s")
    return "  ".join(parts)


def start_line(info: dict[str, Any]) -> str:
    return (f"training {info['arch']} on {info['dataset']} ({info['train']:,} train / {info['val']:,} val / "
            f"{info['test']:,} test) on {info['device']}{_threads(info)}: {info['parameters']:,} parameters, "
            f"{plural(info['epochs'], 'epoch')}, batch {info['batch_size']} → {info['run_dir']}")


def _threads(info: dict[str, Any]) -> str:
    """Why a CPU run takes fewer threads than the machine has CPUs, when it does."""
    return f" ({info['threads']})" if info.get("threads") else ""


def end_line(summary: dict[str, Any]) -> str:
    """The result line of results.json: the test split's numbers, or without one the validation split's (the
    split chose the best epoch, so it flatters it), or the best epoch alone. ``top-5``, or ``top-3`` for 3
    classes: results.json names the top-k accuracy ``test_top<k>``."""
    split = summary.get("split", "test")
    if split is None:
        value = summary.get("best_value")
        shown = "?" if value is None else f"{value:.4f}" if str(summary.get("monitor")).endswith("loss") \
            else f"{value:.2%}"
        return (f"best epoch {summary.get('best_epoch')} ({summary.get('monitor')} {shown}); no validation or "
                "test split to score it on")
    if f"{split}_map" in summary:  # multi-label
        line = (f"{'test' if split == 'test' else 'validation'} subset accuracy {summary[f'{split}_acc']:.2%} (mAP "
                f"{summary[f'{split}_map']:.4f}, micro-F1 {summary[f'{split}_micro_f1']:.4f}, loss "
                f"{summary[f'{split}_loss']:.4f}) on {plural(summary[f'{split}_count'], 'image')}, best epoch "
                f"{summary['best_epoch']}")
        return line if split == "test" else line + " (no test split: a test/ folder gives an unbiased score)"
    key = next((k for k in summary if k.startswith(f"{split}_top") and k[len(split) + 4:].isdigit()), None)
    topk = f"top-{key[len(split) + 4:]} {summary[key]:.2%}, " if key else ""
    line = (f"{'test' if split == 'test' else 'validation'} accuracy {summary[f'{split}_acc']:.2%} "
            f"({topk}loss {summary[f'{split}_loss']:.4f}) on {plural(summary[f'{split}_count'], 'image')}, "
            f"best epoch {summary['best_epoch']}")
    return line if split == "test" else line + " (no test split: a test/ folder gives an unbiased score)"


class PlainReporter(Reporter):
    """One line per epoch on stdout (with the time the run still needs), messages on stderr; for logs, pipes
    and CI."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = RunClock()

    def start(self, info: dict[str, Any]) -> None:
        print(start_line(info), file=self.err, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.clock.epoch_start(epoch, epochs, steps)

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        line = epoch_line(row, epochs)
        left = self.clock.run_left()
        if left is not None and int(row["epoch"]) < epochs:
            line += f"  ETA {duration(left)}"
        print(line, file=self.out, flush=True)

    def end(self, summary: dict[str, Any]) -> None:
        print(end_line(summary), file=self.out, flush=True)


class RichReporter(Reporter):
    """A live bar per epoch on stderr: steps, running-mean loss, images/s, elapsed < left in the epoch, and the
    time left in the run; validation, the final test and the plots show as a pulsing phase. Finished epochs stay
    as lines. When stdout is not the terminal (``> log``), the epoch lines also go there, as data."""

    REFRESH_S = 0.25  # reading the loss waits for the device: at most this often

    def __init__(self, console: Any = None, data_out: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = console or Console(stderr=True)
        self.data_out = data_out
        narrow = self.console.width < 100
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12 if narrow else 30),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.narrow = narrow
        self.task: Any = None
        self.clock = RunClock()
        self.batch_size = 0
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.loss_sum: Any = 0.0
        self.loss_count = 0
        self.shown_at = 0.0
        self.label = ""

    def _task(self, description: str, total: float | None, stats: str = "") -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, stats=stats)
        else:
            self.progress.reset(self.task, description=description, total=total, visible=True, stats=stats)

    def start(self, info: dict[str, Any]) -> None:
        self.batch_size = int(info.get("batch_size") or 0)
        self.console.print(start_line(info), highlight=False)
        self.progress.start()

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]", highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.clock.epoch_start(epoch, epochs, steps)
        self._reset_epoch()
        self.label = f"{epoch}/{epochs}" if self.narrow else f"epoch {epoch}/{epochs}"
        self._task(self.label, steps, self._stats(0, None))

    def step(self, step: int, loss: Any) -> None:
        self.clock.stepped(step)
        detach = getattr(loss, "detach", None)
        self.loss_sum = self.loss_sum + (detach() if detach is not None else loss)  # stays on the device
        self.loss_count += 1
        now = time.perf_counter()
        if now - self.shown_at < self.REFRESH_S and step < self.clock.steps:
            return
        self.shown_at = now
        mean = float(self.loss_sum) / self.loss_count
        last = step >= self.clock.steps  # drawn now: a short epoch could end between two automatic refreshes
        self.progress.update(self.task, completed=step, stats=self._stats(step, mean), refresh=last)

    def _stats(self, step: int, mean_loss: float | None) -> str:
        steps = self.clock.steps
        width = len(str(steps))
        parts = [f"{step:>{width}}/{steps}", f"loss {'…' if mean_loss is None else f'{mean_loss:.4f}':<6}"]
        elapsed = time.perf_counter() - self.clock.epoch_started
        if not self.narrow:
            trained = step - (self.clock.first_step or 1) + 1 if step else 0
            parts.append(f"{rate_text(trained * self.batch_size, elapsed) or '… img/s':>12}")
        left = self.clock.epoch_left(step)
        eta = "…" if left is None else duration(left)
        run = self.clock.run_left(step) if step else None
        run_text = "…" if run is None else duration(run)
        if self.narrow:
            parts += [f"ETA {eta}", f"run {run_text}"]
        else:
            parts += [f"{duration(elapsed)} ETA {eta}", f"run ETA {run_text}"]
        return "  ".join(parts) if not self.narrow else " ".join(parts)

    def phase(self, text: str) -> None:
        label = f"{self.label} {text}" if self.label else text
        self._task(label + "…", None, "")
        self.progress.refresh()

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        line = epoch_line(row, epochs)
        left = self.clock.run_left()
        eta = f"  ETA {duration(left)}" if left is not None and int(row["epoch"]) < epochs else ""
        self.label = ""
        if self.task is not None:  # hidden first: stdout may reach the same terminal (| tee), below the bar
            self.progress.update(self.task, visible=False, refresh=True)
        self.console.print(line + eta, highlight=False)
        if self.data_out is not None:
            print(line, file=self.data_out, flush=True)

    def end(self, summary: dict[str, Any]) -> None:
        self._remove_task()
        self.console.print(f"[bold green]{end_line(summary)}[/bold green]", highlight=False)
        if self.data_out is not None:
            print(end_line(summary), file=self.data_out, flush=True)

    def _remove_task(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    def close(self) -> None:
        self._remove_task()
        self.progress.stop()


def make_reporter(quiet: bool = False) -> Reporter:
    """Bars when stderr is a terminal (stdout may be redirected: it then gets the plain epoch lines), plain
    lines otherwise, nothing with ``quiet``."""
    if quiet:
        return SilentReporter()
    if not sys.stderr.isatty():
        return PlainReporter()
    return RichReporter(data_out=None if sys.stdout.isatty() else sys.stdout)


class Counter:
    """What :func:`counting` yields: ``advance(n)`` after each piece of work."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self.progress, self.task = progress, task

    def advance(self, count: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, count)


@contextlib.contextmanager
def counting(total: int, description: str, unit: str = "images") -> Iterator[Counter]:
    """A transient bar on stderr over ``total`` items (with rate and time left) when stderr is a terminal;
    nothing otherwise, so logs and pipes stay clean."""
    if not sys.stderr.isatty() or total < 1:
        yield Counter()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    class Timing(ProgressColumn):
        """``1,234 images/s 0:03 ETA 0:05`` from the items done so far."""

        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            rate = rate_text(int(task.completed), elapsed, f"{unit}/s")
            left = "…" if not task.completed or elapsed <= 0 else duration(
                elapsed / task.completed * (task.total - task.completed))
            return Text(f"{rate}  {duration(elapsed)} ETA {left}".strip())

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=12 if console.width < 100 else 30),
                  MofNCompleteColumn(), Timing(), console=console, transient=True, redirect_stdout=False,
                  redirect_stderr=False) as bar:
        yield Counter(bar, bar.add_task(description, total=total))
