"""``--deterministic``: deterministic kernels for the length of a run, restored afterwards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cnnctl.errors import UsageError, first_line


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms, cuDNN without autotuning, a fixed cuBLAS workspace. An operation without a
    deterministic implementation becomes one clear error instead of a silent difference."""
    if not enabled:
        yield
        return
    import torch

    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.deterministic, cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as error:
        if "deterministic" not in str(error):
            raise
        first = first_line(error)
        raise UsageError(f"--deterministic: {first}",
                         hint="this operation has no deterministic implementation here; train without "
                              "--deterministic") from error
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2], previous[3]
