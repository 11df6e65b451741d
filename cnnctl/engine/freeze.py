"""``--freeze-epochs N``: train only the classifier for the first N epochs (a linear probe on pretrained
features), then everything.

The optimizer is built over all parameters once. Frozen parameters get ``requires_grad=False``, so backward
leaves their ``.grad`` at ``None`` (the loop zeroes with ``set_to_none``) and the optimizers skip them entirely:
no update, no weight decay, no momentum or Adam state. Their BatchNorm layers are kept in eval mode too, so the
running statistics — part of the frozen features — do not drift either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch


class HeadOnlyPhase:
    """Freezes everything outside the ``classifier`` prefix while ``epoch <= epochs``."""

    def __init__(self, model: torch.nn.Module, classifier: str, epochs: int):
        from torch import nn

        self.epochs = epochs
        self.classifier = classifier

        def inside(name: str) -> bool:
            return name == classifier or name.startswith(f"{classifier}.")

        self.head = [p for name, p in model.named_parameters() if inside(name)]
        self.body = [p for name, p in model.named_parameters() if not inside(name) and p.requires_grad]
        self.body_norms = [m for name, m in model.named_modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and not inside(name)]
        if epochs > 0 and not self.head:
            raise UsageError(f"--freeze-epochs: the model has no parameters under its classifier {classifier!r}")
        self.frozen = False
        self._hooks: list[Any] = []

    def begin_epoch(self, epoch: int, log: Callable[[str], None] | None = None) -> None:
        """Put the model in the right phase for ``epoch`` (1-based); says so when the phase changes."""
        want_frozen = epoch <= self.epochs
        if want_frozen == self.frozen:
            return
        log = log or (lambda _: None)
        if want_frozen:
            self._freeze()
            head = sum(p.numel() for p in self.head)
            body = sum(p.numel() for p in self.body)
            span = f"epoch {epoch}" if epoch == self.epochs else f"epochs {epoch}-{self.epochs}"
            log(f"{span}: training only the classifier {self.classifier} ({head:,} "
                f"parameters); the other {body:,} are frozen")
        else:
            self._unfreeze()
            log(f"epoch {epoch}: all layers unfrozen")

    def _freeze(self) -> None:
        for parameter in self.body:
            parameter.requires_grad_(False)
            parameter.grad = None
        self._hooks = [norm.register_forward_pre_hook(_stay_in_eval_mode) for norm in self.body_norms]
        self.frozen = True

    def _unfreeze(self) -> None:
        for parameter in self.body:
            parameter.requires_grad_(True)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.frozen = False


def _stay_in_eval_mode(module: torch.nn.Module, _inputs: Any) -> None:
    """Forward pre-hook: a frozen BatchNorm normalises with, and does not update, its running statistics."""
    module.train(False)
