"""``cnnctl check``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.errors import CnnctlError

if TYPE_CHECKING:
    from cnnctl.data.check import CheckReport

_LISTED = 5


@command("check")
def check_command(
    data: Annotated[str, typer.Argument(metavar="DATA", help="an image folder: a sub-folder per class, or train/ "
                                                             "(val/, test/) holding them")],
    json_output: Annotated[bool, typer.Option("--json", help="the whole report as JSON on stdout")] = False,
    strict: Annotated[bool, typer.Option(help="exit 1 when a problem is found")] = False,
    max_pixels: Annotated[int | None, typer.Option(
        min=1, help="refuse images with more pixels (read from the header) \\[default: 89,478,485]")] = None,
) -> None:
    """Data hygiene before training: unreadable or truncated files, special files, mixed sizes and modes,
    duplicate images within and across classes, images shared between splits (leakage), class counts and the
    imbalance ratio. Every file is decoded as training would decode it."""
    from cnnctl.data.check import check_folder

    report = check_folder(data, max_pixels=max_pixels, log=stderr_line)
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

    console = Console()
    splits = list(report.counts)
    title = f"{report.root}: {report.total:,} image files, {len(report.classes)} classes"
    table = Table(title=title, title_justify="left")
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
    problem_table = Table(title="problems", title_justify="left")
    problem_table.add_column("problem")
    problem_table.add_column("count", justify="right")
    problem_table.add_column("examples")
    for name, count, examples in _problem_rows(report):
        problem_table.add_row(name, f"{count:,}", examples)
    if problem_table.row_count:
        console.print(problem_table)
    else:
        console.print("no problems found", highlight=False)
    for note in report.notes():
        console.print(f"note: {note}", highlight=False)


def _problem_rows(r: CheckReport) -> list[tuple[str, int, str]]:
    def groups(entries: list[list[dict[str, str]]]) -> str:
        shown = [" = ".join(f"{e['path']} ({e['split']}/{e['class']})" for e in group) for group in entries[:3]]
        return "\n".join(shown) + (f"\n… {len(entries) - 3} more" if len(entries) > 3 else "")

    def paths(items: list[str]) -> str:
        return "\n".join(items[:3]) + (f"\n… {len(items) - 3} more" if len(items) > 3 else "")

    rows = [
        ("unreadable files", len(r.unreadable), "\n".join(item["reason"] for item in r.unreadable[:3])),
        ("not regular files (FIFO, device, ...)", len(r.special), paths(r.special)),
        ("symlinked folders leading out (not followed)", len(r.outside_links), paths(r.outside_links)),
        ("classes without a readable training image", len(r.empty_classes), ", ".join(r.empty_classes[:5])),
        ("duplicates within a class", len(r.duplicates_within_class), groups(r.duplicates_within_class)),
        ("same image in different classes", len(r.duplicates_across_classes), groups(r.duplicates_across_classes)),
        ("same image in different splits (leakage)", len(r.shared_between_splits), groups(r.shared_between_splits)),
    ]
    return [row for row in rows if row[1]]
