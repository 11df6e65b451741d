"""Mixed precision (``--amp``): which autocast dtype a device can use, and whether fp16 needs a gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Precision:
    """``dtype`` None means plain fp32. ``note`` says what was chosen when it is not what was asked for."""

    device_type: str
    dtype: Any = None
    scaler: bool = False
    note: str | None = None

    @property
    def label(self) -> str:
        if self.dtype is None:
            return "fp32"
        return {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(self.dtype), str(self.dtype))

    def autocast(self) -> Any:
        """A fresh autocast context (or a no-op one for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self) -> Any:
        import torch

        return torch.amp.GradScaler(self.device_type if self.scaler else "cpu", enabled=self.scaler)


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is slow emulation."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(amp: bool, amp_dtype: str, device: torch.device) -> Precision:
    """``--amp`` on CUDA: bf16 where the GPU has it (``auto``), else fp16 with a GradScaler; on CPU: bf16 only
    where the CPU supports it; otherwise fp32, with a note saying so."""
    import torch

    kind = device.type
    if not amp:
        return Precision(kind)
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp_dtype == "fp16" or (amp_dtype == "auto" and not bf16_ok):
            return Precision(kind, torch.float16, scaler=True)
        if not bf16_ok:
            return Precision(kind, torch.float16, scaler=True,
                             note="this GPU has no bf16; --amp uses fp16 with a gradient scaler")
        return Precision(kind, torch.bfloat16)
    if kind == "cpu":
        if cpu_supports_bf16():
            note = "fp16 autocast needs a CUDA GPU; --amp uses bf16 on this CPU" if amp_dtype == "fp16" else None
            return Precision(kind, torch.bfloat16, note=note)
        return Precision(kind, note="this CPU has no native bf16 (AVX512-BF16/AMX); --amp is ignored, training "
                                    "in fp32")
    return Precision(kind, note=f"--amp is not supported on {kind}; training in fp32")
