"""``torchscript``: the model traced by ``torch.jit.trace``, run by ``torch.jit.load`` (needs only torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnctl.errors import CnnctlError, first_line
from cnnctl.exports.formats import Calibration, Exported, ExportFormat, Runner, register_format

if TYPE_CHECKING:
    import torch


def export_torchscript(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                       arch: str, calibration: Calibration | None = None) -> Exported:
    """Traced, not scripted: tracing takes any model that runs, and the evaluation checks that it traced well.
    Saved to memory (a full disk would abort inside libtorch's writer); the caller writes the bytes."""
    import io

    import torch

    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, inputs[:1], check_trace=False)  # checked by the caller
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    except Exception as error:
        reason = first_line(error, 200)
        raise CnnctlError(f"could not export {arch} to TorchScript: {reason}",
                          hint="--debug shows the traceback") from error
    return Exported({".torchscript.pt": buffer.getvalue()})


def torchscript_runner(files: dict[str, bytes], threads: int | None = None) -> Runner:
    import io

    import torch

    (data,) = files.values()
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")  # the model just traced, not an untrusted file

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return loaded(batch).float()

    version = torch.__version__.split("+")[0]
    run.runtime = {"name": "torch.jit", "version": version, "device": "cpu"}  # type: ignore[attr-defined]
    return run


register_format(ExportFormat(
    "torchscript", "TorchScript (traced), run by torch.jit.load", ".torchscript.pt",
    lambda *args, **kwargs: export_torchscript(*args, **kwargs),
    lambda *args, **kwargs: torchscript_runner(*args, **kwargs), "torch.jit", title="TorchScript"))
