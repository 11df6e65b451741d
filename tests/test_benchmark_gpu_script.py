"""benchmarks/gpu.py parses its options and, without CUDA, refuses with one clear line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def test_gpu_benchmark_help_lists_its_options():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--images" in result.stdout and "--mirror" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the benchmark")
def test_gpu_benchmark_refuses_without_cuda():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: benchmarks/gpu.py needs a CUDA GPU")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
