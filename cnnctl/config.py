"""TrainConfig: every option of ``cnnctl train``, resolved. It is what config.json in a run folder holds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
MONITORS = ("val_loss", "val_acc")
AMP_DTYPES = ("auto", "fp16", "bf16")


@dataclass
class TrainConfig:
    arch: str
    dataset: str = "mnist"
    data_dir: str | None = None
    root: str | None = None
    mirror: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adam"
    scheduler: str = "onecycle"
    momentum: float | None = None
    weight_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    val_split: float | None = None
    augment: str | None = None
    out: str = "runs"
    name: str | None = None
    threads: int | None = None
    img_size: int | None = None
    # None: channels-last unless the network has BatchNorm (benchmarks/choices.py: LeNet-5 1.14x faster with it,
    # LeNet-5 + BatchNorm 2.5x slower on CPU); resolved when the model is built and saved resolved
    channels_last: bool | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)
    # architectures: start from local weights (--pretrained), train only the classifier first (--freeze-epochs)
    pretrained: str | None = None
    freeze_epochs: int = 0
    limit: int | None = None  # train on this many randomly chosen training images (after the validation split)
    # --- training engine (issue 5): optimizer, schedule, regularisation, precision, early stopping, outputs ---
    nesterov: bool = False
    warmup_epochs: float = 0.0
    step_size: int | None = None
    gamma: float = 0.1
    milestones: list[int] | None = None
    t0: int | None = None
    t_mult: int = 1
    min_lr: float = 0.0
    plateau_patience: int = 2
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = False
    amp_dtype: str = "auto"
    patience: int | None = None
    monitor: str = "val_acc"
    keep: int = 1
    deterministic: bool = False
    plots: bool = True
    # --- distributed training (issue 8): BatchNorm statistics over the global batch (--nproc is launcher-only) ---
    sync_bn: bool = False
    # --- pretrained weights: --pretrained imagenet|WEIGHTS_NAME fetched from --weights-mirror or the official
    # URL (never with --offline), backbone learning rate relative to the head, grey images with colour weights ---
    weights_mirror: str | None = None
    offline: bool = False
    backbone_lr_scale: float | None = None  # resolved: 0.1 with --pretrained, else 1
    grey_input: str | None = None  # replicate | sum; resolved: replicate for published weights, sum for files

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        # OneCycle warms up to this peak and anneals from it, so it can be higher than a constant rate.
        if self.scheduler == "onecycle":
            # LeNet-sized networks train fastest at 5e-3; deeper BatchNorm networks (ResNet, MobileNet) need the
            # usual 1e-3 or their running statistics cannot follow the weights and evaluation collapses.
            return {"sgd": 0.1, "rmsprop": 1e-3}.get(self.optimizer, 5e-3 if self._is_lenet_sized() else 1e-3)
        return {"sgd": 0.05}.get(self.optimizer, 1e-3)

    def _is_lenet_sized(self) -> bool:
        from cnnctl.registry import get_model_spec

        try:
            return get_model_spec(self.arch).family == "lenet"
        except UsageError:  # an unknown name is reported by validate(), with suggestions
            return True

    def resolved_momentum(self) -> float:
        """SGD/RMSprop momentum, or Adam's β1: 0.9, except RMSprop's 0 (torch's defaults)."""
        if self.momentum is not None:
            return self.momentum
        return 0.0 if self.optimizer == "rmsprop" else 0.9

    def resolved_weight_decay(self) -> float:
        """0, except AdamW's decoupled 0.01 (torch's default: AdamW without decay is Adam)."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 0.0

    def resolve_defaults(self) -> None:
        """Replace every "depends on other options" default by its value, so the saved configuration says
        exactly what ran, and a resumed run with more --epochs keeps its step size, milestones and cycle."""
        self.lr = self.resolved_lr()
        self.momentum = self.resolved_momentum()
        self.weight_decay = self.resolved_weight_decay()
        third = max(1, self.epochs // 3)
        if self.scheduler == "step" and self.step_size is None:
            self.step_size = third
        if self.scheduler == "multistep" and self.milestones is None:
            self.milestones = sorted({max(1, round(self.epochs * 0.5)), max(1, round(self.epochs * 0.75))})
        if self.scheduler == "cosine-restarts" and self.t0 is None:
            self.t0 = third
        self._resolve_fine_tuning_defaults()

    def _resolve_fine_tuning_defaults(self) -> None:
        """With --pretrained: the backbone learns at a tenth of the head's rate, and image folders get the
        random-resized-crop + flip augmentation the published weights were trained with."""
        from cnnctl.models.weights import grey_input_mode, weights_for_config

        if self.backbone_lr_scale is None:
            self.backbone_lr_scale = 0.1 if self.pretrained else 1.0
        if self.pretrained:
            self.grey_input = grey_input_mode(self)
        if self.augment is None and (self.data_dir or self.dataset == "folder") and weights_for_config(self):
            self.augment = "resized-crop-flip"

    def validate(self) -> None:
        """Reject contradictory or out-of-range options before any work starts."""
        from cnnctl.models import check_arch_args
        from cnnctl.registry import get_model_spec

        check_arch_args(get_model_spec(self.arch), self.arch_args)  # unknown names, --dropout out of range
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            from cnnctl.registry import suggest

            raise suggest(self.optimizer, list(OPTIMIZERS), "optimizer")
        from cnnctl.engine.schedules import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            from cnnctl.registry import suggest

            raise suggest(self.scheduler, list(SCHEDULERS), "scheduler")
        if self.val_split is not None and self.val_split < 0:
            raise UsageError(f"--val-split must be >= 0, got {self.val_split}")
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; choose auto, cpu, cuda, cuda:N or mps")
        if self.freeze_epochs < 0:
            raise UsageError(f"--freeze-epochs must be >= 0, got {self.freeze_epochs}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.img_size is not None and self.img_size < 1:
            raise UsageError(f"--img-size must be at least 1, got {self.img_size}")
        self._validate_engine_options()
        self._validate_pretrained()

    def _validate_pretrained(self) -> None:
        """Published weights exist for the architecture; offline, their file is already here (one line naming
        it and its folder otherwise) — before any data is loaded."""
        from cnnctl.models.weights import GREY_INPUT_MODES, ensure_weights_file, offline, weights_for_config

        if self.backbone_lr_scale is not None and not self.backbone_lr_scale > 0:
            raise UsageError(f"--backbone-lr-scale must be positive, got {self.backbone_lr_scale}",
                             hint="use --freeze-epochs to keep the backbone fixed")
        if self.grey_input is not None and self.grey_input not in GREY_INPUT_MODES:
            from cnnctl.registry import suggest

            raise suggest(self.grey_input, list(GREY_INPUT_MODES), "--grey-input")
        weights = weights_for_config(self)
        if self.grey_input is not None and not self.pretrained:
            raise UsageError("--grey-input applies only with --pretrained")
        if self.grey_input == "replicate" and weights is None:
            raise UsageError("--grey-input replicate applies to published weights (--pretrained imagenet); a "
                             "weights file meets grey images with its first convolution's filters summed",
                             hint="leave --grey-input out, or use --grey-input sum")
        if weights is not None and offline(self.offline):
            ensure_weights_file(weights, mirror=self.weights_mirror, offline_only=True)

    def _validate_engine_options(self) -> None:
        """The training engine's options (issue 5): ranges and combinations that cannot work together."""
        from cnnctl.registry import suggest

        def need(condition: bool, message: str, hint: str | None = None) -> None:
            if not condition:
                raise UsageError(message, hint=hint)

        momentum = self.resolved_momentum()
        need(0 <= momentum < 1, f"--momentum must be in [0, 1), got {momentum}")
        need(self.resolved_weight_decay() >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.nesterov:
            need(self.optimizer == "sgd", f"--nesterov applies to --optimizer sgd, not {self.optimizer}")
            need(momentum > 0, "--nesterov needs --momentum > 0")
        need(0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs must be in [0, --epochs) = [0, {self.epochs}), got {self.warmup_epochs}")
        need(not (self.warmup_epochs and self.scheduler == "onecycle"),
             "--warmup-epochs does not combine with --scheduler onecycle, which warms up on its own",
             hint="use --scheduler cosine (or step, multistep, ...) with --warmup-epochs")
        need(0 < self.gamma <= 1, f"--gamma must be in (0, 1], got {self.gamma}")
        need(self.step_size is None or self.step_size >= 1, f"--step-size must be >= 1, got {self.step_size}")
        if self.milestones is not None:
            need(all(m >= 1 for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
                 f"--milestones must be increasing epoch numbers >= 1, got {self.milestones}")
        need(self.t0 is None or self.t0 >= 1, f"--t0 must be >= 1 epoch, got {self.t0}")
        need(self.t_mult >= 1, f"--t-mult must be >= 1, got {self.t_mult}")
        need(0 <= self.min_lr < self.resolved_lr(),
             f"--min-lr must be in [0, lr) = [0, {self.resolved_lr():g}), got {self.min_lr}")
        need(self.plateau_patience >= 0, f"--plateau-patience must be >= 0, got {self.plateau_patience}")
        need(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        if self.amp_dtype not in AMP_DTYPES:
            raise suggest(self.amp_dtype, list(AMP_DTYPES), "--amp-dtype")
        need(self.patience is None or self.patience >= 1, f"--patience must be >= 1, got {self.patience}")
        if self.monitor not in MONITORS:
            raise suggest(self.monitor, list(MONITORS), "--monitor")
        need(self.keep >= 1, f"--keep must be >= 1, got {self.keep}")
        if self.augment is not None:
            from cnnctl.data.augment import AUGMENT_PRESETS

            if self.augment not in AUGMENT_PRESETS:
                raise suggest(self.augment, list(AUGMENT_PRESETS), "augmentation")
        needs = self.needs_validation()
        need(not (needs and self.val_split == 0), f"{needs} needs a validation split, but --val-split is 0")

    def needs_validation(self) -> str | None:
        """The option that cannot work without a validation split, if any."""
        if self.scheduler == "plateau":
            return "--scheduler plateau"
        if self.patience is not None:
            return "--patience (early stopping)"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            from cnnctl.registry import suggest

            raise suggest(unknown[0], sorted(known), f"option in {source}:")
        return cls(**data)

    def save(self, path: Path) -> None:
        from cnnctl.fsutil import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
