"""``cnnctl`` as a fresh process of this checkout, for the benchmarks that time or compare whole commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cnnctl(*args: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cnnctl ARGS`` from this checkout; a failure ends the benchmark with cnnctl's stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cnnctl", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return result
