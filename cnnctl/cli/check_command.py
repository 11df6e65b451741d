"""``cnnctl check``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.errors import CnnctlError, UsageError

if TYPE_CHECKING:
    from cnnctl.data.check import CheckReport

_LISTED = 5
_GROUP_SHOWN = 4  # files shown of a group of identical ones


@command("check")
def check_command(
    data: Annotated[str | None, typer.Argument(
        metavar="DATA", help="an image folder (a sub-folder per class, or train/, val/, test/ holding them), a "
                             "labels.csv or .jsonl, a .parquet or Hugging Face datasets folder, or .tar shards",
        show_default=False)] = None,
    data_option: Annotated[str | None, typer.Option("--data", help="DATA, as train takes it", show_default=False)
                           ] = None,
    near_distance: Annotated[int, typer.Option(
        min=-1, max=64, help="images in different splits whose perceptual hashes differ in at most this many of "
                             "64 bits are near-duplicates; -1: do not look")] = 4,
    json_output: Annotated[bool, typer.Option("--json", help="the whole report as JSON on stdout")] = False,
    strict: Annotated[bool, typer.Option(help="exit 1 when a problem is found")] = False,
    max_pixels: Annotated[int | None, typer.Option(
        min=1, help="refuse images with more pixels (read from the header) \\[default: 89,478,485]")] = None,
) -> None:
    """Data hygiene before training: unreadable or truncated files, special files, mixed sizes and modes,
    duplicate images within and across classes, images shared between splits (leakage), class counts and the
    imbalance ratio. Every file is decoded as training would decode it."""
    from cnnctl.data.folder import check_folder

    if (data is None) == (data_option is None):
        raise UsageError("name the data once: cnnctl check DATA (or --data DATA)")
    data = data or data_option
    report = check_folder(data, max_pixels=max_pixels, log=stderr_line, near_distance=near_distance)
    problems = report.problems()
    if json_output:
        print_json(report.as_dict())
    else:
        _render(report)
    if problems and strict:
        raise CnnctlError(f"{data}: " + "; ".join(f"{count:,} {name}" for name, count in problems.items())
                          + " (--strict)")


def _render(report: CheckReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    splits = list(report.counts)
    console.print(f"{report.root}: {report.total:,} image files, {len(report.classes)} classes", highlight=False,
                  soft_wrap=True)
    table = Table()
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for name in report.classes:
        cells = []
        for split in splits:
            found, readable = report.counts[split][name], report.readable[split][name]
            cells.append(f"{readable:,}" if readable == found else f"{readable:,} of {found:,}")
        table.add_row(name, *cells)
    console.print(table)
    lines = []
    if report.imbalance_ratio is not None:
        lines.append(f"imbalance (largest / smallest training class): {report.imbalance_ratio:.2f}:1")
    sizes = report.sizes
    lines.append("sizes: " + ", ".join(f"{size} ({count:,})" for size, count in list(sizes.items())[:_LISTED])
                 + (f", … {len(sizes) - _LISTED} more" if len(sizes) > _LISTED else ""))
    lines.append("modes: " + ", ".join(f"{mode} ({count:,})" for mode, count in report.modes.items()))
    console.print("\n".join(lines), highlight=False)
    rows = _problem_rows(report)
    if not rows:
        console.print("no problems found", highlight=False)
    for name, count, examples in rows:
        console.print(f"problem: {count:,} {name}", highlight=False, soft_wrap=True)
        for example in examples:
            console.print(f"  {example}", highlight=False, soft_wrap=True)
    for note in report.notes():
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def _problem_rows(r: CheckReport) -> list[tuple[str, int, list[str]]]:
    """(problem, count, up to 3 examples) for each problem found."""
    def groups(entries: list[list[dict[str, str]]]) -> list[str]:
        """Each group on one line: its first files, and how many it holds when that is more."""
        return [" = ".join(f"{e['path']} ({e['split']}/{e['class']})" for e in group[:_GROUP_SHOWN])
                + (f" = … ({len(group):,} identical files in all)" if len(group) > _GROUP_SHOWN else "")
                for group in entries[:3]]

    rows = [
        ("unreadable files", len(r.unreadable), [item["reason"] for item in r.unreadable[:3]]),
        ("entries that are not regular files (FIFO, device, socket)", len(r.special), r.special[:3]),
        ("symlinked folders leading out of the data folder (not followed)", len(r.outside_links),
         r.outside_links[:3]),
        ("classes without a readable training image", len(r.empty_classes), r.empty_classes[:3]),
        ("images repeated within a class", len(r.duplicates_within_class), groups(r.duplicates_within_class)),
        ("images in more than one class", len(r.duplicates_across_classes), groups(r.duplicates_across_classes)),
        ("images in more than one split (leakage)", len(r.shared_between_splits), groups(r.shared_between_splits)),
        ("near-duplicate pairs across splits (perceptual hash)", len(r.near_duplicates_across_splits),
         [f"{p['path']} ({p['split']}) ~ {p['other_path']} ({p['other_split']}): {p['distance']} of 64 bits differ"
          for p in r.near_duplicates_across_splits[:3]]),
    ]
    return [(name, count, examples + ([f"… {count - 3} more"] if count > 3 else []))
            for name, count, examples in rows if count]
