"""Runs many ``cnnctl`` command lines in one process (torch is imported once) and records, for each, the exit
code, stdout and stderr; then the process's peak address space. Used by test_hostile_inputs.py in a child process
whose address space is limited, so an input that makes cnnctl try a huge allocation fails loudly.

    python hostile_driver.py RUNS.json RESULTS.json
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path


def vm_peak_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import typer.main

    from cnnctl.cli import app

    command = typer.main.get_command(app)  # built once: Typer rebuilds it on every app() call (~0.1 s)

    runs = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    results = []
    for run in runs:
        # a UTF-8 stdout that refuses what it cannot encode, as a real one does
        stdout, stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline=""), io.StringIO()
        started = time.perf_counter()
        code = 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                command.main(args=run["argv"], prog_name="cnnctl")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException as error:  # noqa: BLE001 - recorded: the test fails on it
                code = -1
                print(f"escaped the CLI: {type(error).__name__}: {error}", file=sys.stderr)
        try:
            stdout.flush()
        except UnicodeEncodeError as error:
            code = -1
            print(f"stdout could not be written: {error}", file=stderr)
        written = stdout.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
        results.append({"id": run["id"], "code": code, "stdout": written, "stderr": stderr.getvalue(),
                        "seconds": time.perf_counter() - started})
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump({"results": results, "vm_peak_kb": vm_peak_kb()}, handle)


if __name__ == "__main__":
    main()
