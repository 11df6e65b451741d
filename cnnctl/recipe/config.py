"""TrainConfig: every option of ``cnnctl train``, resolved. It is what config.json in a run folder holds.

Its fields are generated from the declarations in :mod:`cnnctl.recipe.options` (name, type, default); this module
adds what a configuration does with them: the derived defaults the options alone decide, the checks that involve
several options, and saving. What the published-weights catalogue decides (fine-tuning's grey input and
normalisation, whether an offline weights file is here) is completed and checked by the engine
(cnnctl/engine/configure.py), the one place a configuration is completed before a run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError
from cnnctl.fsutil import atomic_write_text
from cnnctl.recipe import optimizers
from cnnctl.recipe.optimizers import get_optimizer
from cnnctl.recipe.options import CONFIG_OPTIONS, OPTION_BY_NAME, coerce, coerce_mapping, label, unknown_option
from cnnctl.recipe.schedules import SCHEDULERS, get_schedule
from cnnctl.registry import check_arch_args, get_dataset_spec, get_model_spec

VALIDATION_ONLY_MONITORS = ("val_macro_f1", "val_balanced_acc", "val_map")  # no train_ counterpart to fall back on
# Fine-tuning defaults, each measured against its alternatives in benchmarks/finetune.py (docs/pretrained.md).
FINETUNE_CROP_SCALE = 0.6  # resized crops keep at least this share of the image (ImageNet training: 0.08)
FINETUNE_LABEL_SMOOTHING = 0.1


class _TrainConfigMethods:
    """The behaviour of :class:`TrainConfig` (its fields come from cnnctl.recipe.options)."""

    def resolved_lr(self) -> float:
        """The learning rate; with ``--lr auto`` not yet found, the optimizer's default (for the range checks)."""
        if self.lr is not None and self.lr != "auto":
            return self.lr
        return get_optimizer(self.optimizer).default_lr(self.scheduler, self._is_lenet_sized(),
                                                        pretrained=bool(self.pretrained))

    def _is_lenet_sized(self) -> bool:
        try:
            return get_model_spec(self.arch).family == "lenet"
        except UsageError:  # an unknown name is reported by validate(), with suggestions
            return True

    def resolved_momentum(self) -> float:
        """SGD/RMSprop momentum, or Adam's β1: the optimizer's default unless given."""
        if self.momentum is not None:
            return self.momentum
        return get_optimizer(self.optimizer).momentum

    def resolved_weight_decay(self) -> float:
        """The optimizer's default decay (AdamW's decoupled 0.01, else 0) unless given."""
        if self.weight_decay is not None:
            return self.weight_decay
        return get_optimizer(self.optimizer).weight_decay

    def resolve_defaults(self) -> None:
        """Replace every "depends on other options" default by its value, so the saved configuration says
        exactly what ran, and a resumed run with more --epochs keeps its step size, milestones and cycle.
        Built-in datasets also fix the augmentation and validation split here (an image folder's are settled
        when it is scanned, and come back in ``PreparedData.resolved``)."""
        self.lr = self.resolved_lr()
        self.momentum = self.resolved_momentum()
        self.weight_decay = self.resolved_weight_decay()
        schedule = get_schedule(self.scheduler)
        if schedule.defaults is not None:
            schedule.defaults(self)
        self._resolve_fine_tuning_defaults()
        if not self.data_dir and self.dataset != "folder":
            try:
                spec = get_dataset_spec(self.dataset)
            except UsageError:  # reported, with suggestions, when the data is loaded
                return
            self.resolve_data_defaults(spec)

    def resolve_data_defaults(self, dataset_spec: Any, default_val_split: float | None = None) -> None:
        """The dataset's augmentation and validation split where none was given (``default_val_split``: the one
        to use instead of the spec's, e.g. a folder's 10%; None for a folder that has its own val/)."""
        if self.augment is None:
            self.augment = dataset_spec.augment
        if self.val_split is None:
            self.val_split = dataset_spec.default_val_split if default_val_split is None else default_val_split

    def validate(self) -> None:
        """Reject out-of-range or contradictory options before any work starts."""
        for option in CONFIG_OPTIONS:  # each option's own range (already checked when given as text)
            if option.field is None:
                coerce(option, getattr(self, option.name))
        spec = get_model_spec(self.arch)
        check_arch_args(spec, self.arch_args)  # unknown names, --dropout out of range
        _check_arch_arg_types(spec, self.arch_args)
        if self.arch_args.get("dropout") is not None:
            coerce(OPTION_BY_NAME["dropout"], self.arch_args["dropout"])
        self._validate_input_size(spec)
        self._validate_combinations()
        self._validate_pretrained()
        self._validate_probe()

    def _resolve_fine_tuning_defaults(self) -> None:
        """With --pretrained: the backbone learns at a tenth of the head's rate, the new head starts at zero, and
        resized crops keep more of the image (the weights-dependent defaults are the engine's)."""
        if self.backbone_lr_scale is None:
            self.backbone_lr_scale = 0.1 if self.pretrained else 1.0
        if self.pretrained:
            self.head_init = self.head_init or "zero"
            self.crop_scale = self.crop_scale or FINETUNE_CROP_SCALE
        if self.label_smoothing is None:
            self.label_smoothing = FINETUNE_LABEL_SMOOTHING if self.pretrained else 0.0
        if self.linear_probe:  # one pass over un-augmented images; the backbone's statistics stay its own
            self.epochs, self.augment, self.precise_bn = 1, "none", False
            if self.channels_last is None:  # no training steps to time the memory formats with
                self.channels_last = False

    def _validate_pretrained(self) -> None:
        """The fine-tuning controls apply only with --pretrained (what the weights allow is checked by the engine)."""
        for name in ("grey_input", "head_init", "normalize"):
            if getattr(self, name) is not None and not self.pretrained:
                raise UsageError(f"{label(name)} applies only with {label('pretrained')}")

    def _validate_probe(self) -> None:
        """What a linear probe needs and refuses, before any work."""
        if not self.linear_probe:
            return
        if not self.pretrained:
            raise UsageError(f"{label('linear_probe')} trains a classifier on pretrained features, but no "
                             f"{label('pretrained')} was given", hint=f"add {label('pretrained')} imagenet (or a "
                                                                      "weights file), or leave the probe out to train "
                                                                      "everything")
        if self.freeze_epochs:
            raise UsageError(f"{label('linear_probe')} trains only the classifier already; {label('freeze_epochs')} "
                             "does not combine with it")
        given = [name for name in ("ema", "mixup", "cutmix") if getattr(self, name) is not None]
        if self.augment not in (None, "none"):
            given.append("augment")
        if given:
            raise UsageError(f"{label('linear_probe')} trains on features computed once from un-augmented images; "
                             f"{', '.join(label(name) for name in given)} do{'es' if len(given) == 1 else ''} not "
                             "apply to it", hint="leave them out")

    def _validate_input_size(self, spec: Any) -> None:
        """``--img-size`` an architecture cannot take: below its minimum, or (fixed-input networks) a size that
        is neither its input nor one padded evenly to it, which would be silently replaced."""
        if self.img_size is None:
            return
        flag = label("img_size")
        if self.img_size < spec.min_input:
            raise UsageError(f"{spec.name} needs inputs of at least {spec.min_input}x{spec.min_input} pixels, "
                             f"got {flag} {self.img_size}", hint=f"pass {flag} {spec.min_input} or larger")
        if spec.fixed_input:
            height, width = spec.input_size
            gap = height - self.img_size
            if height == width and (gap == 0 or (gap > 0 and gap % 2 == 0)):
                return
            raise UsageError(f"{spec.name} takes only {height}x{width} inputs, so {flag} {self.img_size} cannot be "
                             "used", hint=f"leave {flag} out (images are resized to {height}x{width}), or pass "
                                          f"{height} or a smaller size that pads evenly to it")

    def _validate_combinations(self) -> None:
        """Options that cannot work together."""
        def need(condition: bool, message: str, hint: str | None = None) -> None:
            if not condition:
                raise UsageError(message, hint=hint)

        optimizer = get_optimizer(self.optimizer)
        schedule = get_schedule(self.scheduler)
        momentum = self.resolved_momentum()
        if self.nesterov:
            need(optimizer.nesterov, f"{label('nesterov')} applies to {label('optimizer')} "
                 f"{' or '.join(n for n in optimizers.OPTIMIZERS if get_optimizer(n).nesterov)}, not {self.optimizer}")
            need(momentum > 0, f"{label('nesterov')} needs {label('momentum')} > 0")
        need(self.warmup_epochs < self.epochs, f"{label('warmup_epochs')} must be in [0, {label('epochs')}) = "
             f"[0, {self.epochs}), got {self.warmup_epochs}")
        need(not (self.warmup_epochs and schedule.own_warmup),
             f"{label('warmup_epochs')} does not combine with {label('scheduler')} {self.scheduler}, which warms "
             "up on its own", hint=f"use {label('scheduler')} cosine (or step, multistep, ...) with "
                                   f"{label('warmup_epochs')}")
        lr = self.resolved_lr()
        need(self.min_lr < lr, f"{label('min_lr')} must be in [0, lr) = [0, {lr:g}), got {self.min_lr}")
        if self.task == "multilabel":
            check_multilabel_options(self)
        need(not (self.task == "single" and self.monitor == "val_map"),
             f"{label('monitor')} val_map (mean average precision) applies to multi-label data, not "
             f"{label('task')} single")
        needs = self.needs_validation()
        need(not (needs and self.val_split == 0), f"{needs} needs a validation split, but {label('val_split')} is 0")

    def needs_validation(self) -> str | None:
        """The option that cannot work without a validation split, if any."""
        schedule = SCHEDULERS.get(self.scheduler)
        if schedule is not None and schedule.needs_validation:
            return f"{label('scheduler')} {self.scheduler}"
        if self.patience is not None:
            return f"{label('patience')} (early stopping)"
        if self.monitor in VALIDATION_ONLY_MONITORS:
            return f"{label('monitor')} {self.monitor}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The configuration under the options' own names (``data``, ``dropout``: the flags' names)."""
        data: dict[str, Any] = {}
        arch_args = dict(self.arch_args)
        for option in CONFIG_OPTIONS:
            if option.field == "arch_args.dropout":
                value = arch_args.pop("dropout", None)
                if value is not None:
                    data[option.name] = value
                continue
            if option.name == "arch_args":
                continue
            data[option.name] = _plain(getattr(self, option.attribute))
        data["arch_args"] = arch_args
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Any:
        """A configuration from a mapping of option names (old spellings too: ``data_dir``), checked."""
        return config_from_options(cls, coerce_mapping(data, source))

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def check_multilabel_options(config: Any) -> None:
    """Options that have no meaning for several labels per image, refused in one line."""
    for name in ("mixup", "cutmix", "linear_probe", "teacher"):
        if getattr(config, name, None):
            raise UsageError(f"{label(name)} does not apply to multi-label data ({label('task')} multilabel)")
    if getattr(config, "sampler", None) == "balanced":
        raise UsageError(f"{label('sampler')} balanced draws images by their one class; it does not apply to "
                         "multi-label data", hint=f"use {label('class_weights')} auto (each label's positives "
                                                  "weighted by its rarity)")


def _check_arch_arg_types(spec: Any, arch_args: dict[str, Any]) -> None:
    """Each architecture argument has the type of its builder's default (``batch_norm: true``, a number for a
    number): a config file cannot pass a string, a list or a mapping where the network expects a flag."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(spec.builder).parameters.items()
                if p.default is not inspect.Parameter.empty}
    defaults.update(spec.default_args)
    for key, value in arch_args.items():
        expected = defaults.get(key)
        if expected is None:
            continue
        if isinstance(expected, bool):
            ok = isinstance(value, bool)
        elif isinstance(expected, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and (not isinstance(expected, int) or isinstance(expected, float) or float(value).is_integer())
        else:
            ok = isinstance(value, type(expected))
        if not ok:
            raise UsageError(f"{spec.name}'s argument {key} must be {type(expected).__name__} like its default "
                             f"{expected!r}, got {value!r}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _field_type(option: Any) -> Any:
    kind = {list: list[int], dict: dict[str, Any]}.get(option.type, option.type)
    return kind | None if option.nullable else kind


def _fields() -> list[tuple[str, Any, Any]]:
    result: list[tuple[str, Any, Any]] = [("arch", str, dataclasses.field())]
    for option in CONFIG_OPTIONS:
        if option.name == "arch" or "." in option.attribute:
            continue
        if option.type is dict:
            default = dataclasses.field(default_factory=dict)
        elif option.type is list:
            default = dataclasses.field(default=None)
        else:
            default = dataclasses.field(default=option.stored_default)
        result.append((option.attribute, _field_type(option), default))
    return result


TrainConfig = dataclasses.make_dataclass("TrainConfig", _fields(), bases=(_TrainConfigMethods,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = ("Every option of `cnnctl train` (see cnnctl/recipe/options.py). Attributes are the options' "
                       "names, except --data, kept as `data_dir`, and --dropout, kept in `arch_args`.")


def config_from_options(cls: Any, values: dict[str, Any]) -> Any:
    """A TrainConfig from already-checked option values keyed by option name (``data``, ``dropout``, ...)."""
    values = dict(values)
    arch_args = dict(values.pop("arch_args", None) or {})
    dropout = values.pop("dropout", None)
    if dropout is not None:
        if arch_args.get("dropout") not in (None, dropout):
            raise UsageError(f"{label('dropout')} is given twice: {dropout}, and {arch_args['dropout']} in arch_args")
        arch_args["dropout"] = dropout
    if "data" in values:
        values["data_dir"] = values.pop("data")
    known = {f.name for f in dataclasses.fields(cls)}
    stray = sorted(set(values) - known)
    if stray:  # command-line-only options (quiet, resume, ...) have no place in a configuration
        raise unknown_option(stray[0], "the configuration")
    return cls(**values, arch_args=arch_args)

