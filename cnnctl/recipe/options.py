"""Every option of ``cnnctl train``, declared once.

Each :class:`Option` says its name, type, default (or how it is derived), help text, ``--help`` panel, choices and
valid range. From this one list come: the ``TrainConfig`` dataclass (cnnctl/recipe/config.py), the Typer
parameters of ``cnnctl train`` (cnnctl/cli/train_command.py), the keys and value checks of ``--config`` files, the
keyword arguments of ``cnnctl.train()``, and which options a resumed run may change. The names are the same everywhere:
``--batch-size`` on the command line is ``batch_size`` in a config file, in ``config.yaml`` and in the API.

Adding an option is one entry in :data:`OPTIONS` (plus its use in the engine), e.g.::

    Option("ema_decay", float, None, "keep an exponential moving average of the weights with this decay",
           panel=REGULARISE, minimum=0, maximum=1, exclusive_max=True),

Importing this module never imports torch: choices are read from the registries when asked for.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cnnctl.errors import UsageError
from cnnctl.recipe import augmentations, optimizers, schedules
from cnnctl.recipe.class_weights import read_class_weights_file
from cnnctl.recipe.loggers import logger_names, split_names
from cnnctl.registry import suggest

DATA = "Data"
MODEL = "Model"
TRAINING = "Training"
OPTIM = "Optimizer and schedule"
REGULARISE = "Regularisation and precision"
OUTPUT = "Output"
RUN = "Checkpoints, resume and reproducibility"
DIST = "Several processes (distributed)"
PRETRAINED = "Pretrained weights and fine-tuning"
DISTILL = "Knowledge distillation"

SEED_MAX = 2**63 - 2  # torch.Generator seeds are 64-bit; the loader also seeds with seed + 1
# The largest image side (pixels, after padding) a checkpoint may hold: --img-size is refused beyond it at the
# start, and the checkpoint reader refuses larger inputs (cnnctl/checkpoint/schema.py), so a run can read its own.
MAX_IMAGE_SIDE = 2048


class _Derived:
    """The default of an option that depends on other options (resolved into the saved configuration)."""

    def __repr__(self) -> str:
        return "DERIVED"


DERIVED = _Derived()


@dataclass(frozen=True)
class Option:
    """One option of ``cnnctl train``.

    ``type`` is ``bool``, ``int``, ``float``, ``str``, ``list`` (of ints) or ``dict``. ``default`` is a value, None,
    or :data:`DERIVED` with ``derived`` saying how it is chosen (stored as None until resolved). ``choices`` returns
    the allowed values (a registry's names). ``minimum``/``maximum`` bound numbers (``exclusive_*`` for open ends);
    ``check(value)`` returns what is wrong with a value, if anything. ``field`` is where the value lives in
    ``TrainConfig`` when that is not ``name`` (``arch_args.dropout`` for an architecture argument); ``aliases`` are
    older names still accepted in config files and the API; ``synonyms`` only feed the did-you-mean of an unknown
    key. ``config=False``: a command-line-only option (not in TrainConfig); ``cli=False``: files and API only.
    ``resumable``: a resumed run may change it. ``machine``, ``unsearchable`` and ``sweep`` are what ``cnnctl tune``
    and ``cnnctl lr-find`` read of it.
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    panel: str | None = TRAINING
    short: str | None = None
    derived: str | None = None
    choices: Callable[[], Sequence[str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    check: Callable[[Any], str | None] | None = None
    normalize: Callable[[Any], Any] | None = None  # after the checks: the value as stored
    field: str | None = None
    aliases: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    config: bool = True
    cli: bool = True
    resumable: bool = False
    argument: bool = False
    flag: str | None = None  # the command-line flag when it is not --name-with-dashes
    many: bool = False  # a str option holding several of its choices, comma-separated ("a,b"), in that order
    words: tuple[str, ...] = ()  # a number option that also takes these words (``--lr auto``)
    metavar: str | None = None  # how --help shows the value (``DIR``, ``PNG``)
    envvar: str | None = None  # the environment variable that sets it when the flag is not given
    hidden: bool = False  # left out of --help
    negatable: bool = True  # a flag also has its --no- form
    machine: bool = False  # where, not what, a run trains: each process of a shared search sets its own
    unsearchable: str | None = None  # why `cnnctl tune --param` cannot search it
    sweep: bool = True  # `cnnctl lr-find` takes it too

    @property
    def nullable(self) -> bool:
        return self.default is None or self.default is DERIVED

    @property
    def stored_default(self) -> Any:
        return None if self.default is DERIVED else self.default

    @property
    def attribute(self) -> str:
        return self.field or self.name

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


# ---------------------------------------------------------------------------------------------- naming in errors
_STYLE: contextvars.ContextVar[str] = contextvars.ContextVar("cnnctl_option_style", default="flag")


@contextlib.contextmanager
def naming(style: str) -> Iterator[None]:
    """Within this block, errors name options as ``style`` says: "flag" (``--batch-size``, the CLI's) or "param"
    (``batch_size``, the Python API's)."""
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


def label(name: str) -> str:
    """How an error names option ``name`` here: ``--batch-size`` on the command line, ``batch_size`` in Python."""
    if _STYLE.get() == "param":
        return name
    option = OPTION_BY_NAME.get(name)
    return option.cli_flag if option is not None else "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------- value checks
def _logger_names() -> list[str]:
    return logger_names()


def _join_names(value: str) -> str | None:
    """``" tensorboard,,mlflow "`` → ``"tensorboard,mlflow"``; nothing named → None."""
    return ",".join(split_names(value)) or None


def _plain_folder_name(value: str) -> str | None:
    bad = set("/\\\0")  # a ':' becomes '-' in the folder's name (run_folder.run_name)
    if value in ("", ".", "..") or bad & set(value) or any(ord(c) < 32 for c in value) or len(value) > 200:
        return "must be a plain folder name (no '/', '\\', '..' or absolute path)"
    return None


def _val_split(value: float) -> str | None:
    if value >= 1 and not float(value).is_integer():
        return ("must be a fraction below 1 (e.g. 0.1) or a whole number of images (e.g. 5000), "
                f"not {value:g}")
    return None


def _count_or_fraction(value: float) -> float | int:
    """A validation split of 1 or more is a number of images, stored as a whole number."""
    return int(value) if value >= 1 else value


def _threads(value: int) -> str | None:
    cores = os.cpu_count() or 1
    if value > cores:
        return f"must be at most {cores} (the CPU cores of this machine), got {value}"
    return None


def _milestones(value: list[int]) -> str | None:
    if not all(m >= 1 for m in value) or list(value) != sorted(set(value)):
        return f"must be increasing epoch numbers >= 1, got {value}"
    return None


def _class_weights(value: str) -> str | None:
    """``auto``, or a readable file of finite weights >= 0 (its class names are checked once the data is known)."""
    if value == "auto":
        return None
    try:
        read_class_weights_file(value)
    except UsageError as error:
        return error.message.removeprefix("--class-weights ")
    return None


def _device(value: str) -> str | None:
    if value in ("auto", "cpu", "mps") or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}"


# ---------------------------------------------------------------------------------------------- the options
OPTIONS: tuple[Option, ...] = (
    Option("arch", str, None, "architecture (see `cnnctl list`) \\[default: from --config or --resume]",
           argument=True, synonyms=("model", "architecture", "network", "net")),
    # data
    Option("dataset", str, "mnist", "registered dataset name (see `cnnctl list datasets`)", panel=DATA, short="-d",
           synonyms=("data_set", "dataset_name")),
    Option("data", str, None, "train on your own images: a folder with one sub-folder per class (or train/, val/, "
           "test/ holding them), a labels.csv or .jsonl (path,label[,split][,weight]), a .parquet or Hugging Face "
           "datasets folder, or .tar shards; resized to --img-size (64 unless given)", panel=DATA, field="data_dir",
           aliases=("data_dir",), unsearchable="it is the dataset, not a hyper-parameter",
           synonyms=("data_path", "image_dir", "images", "folder")),
    Option("root", str, None, "data folder \\[env: CNNCTL_DATA]", panel=DATA, resumable=True, machine=True,
           unsearchable="it is where the data lives, not a hyper-parameter",
           synonyms=("data_root",)),
    Option("mirror", str, None, "dataset mirror URL or folder \\[env: CNNCTL_MIRROR]", panel=DATA, resumable=True,
           machine=True, unsearchable="it is where the data comes from, not a hyper-parameter"),
    Option("val_split", float, DERIVED, "validation images held out of train: a fraction below 1, or a whole "
           "number of images; 0 for none", panel=DATA, derived="the dataset's, 5000 for MNIST; 10% of a folder",
           minimum=0, check=_val_split, normalize=_count_or_fraction,
           synonyms=("validation_split", "val_size", "val", "val_fraction")),
    Option("img_size", int, None, "resize images to this square size (networks with a fixed input take only that)",
           panel=DATA, minimum=1, maximum=MAX_IMAGE_SIDE, synonyms=("image_size", "input_size", "size", "resolution")),
    Option("limit", int, None, "train on this many randomly chosen training images", panel=DATA, minimum=1,
           synonyms=("max_images", "subset")),
    # small and imbalanced data (docs/data.md)
    Option("max_pixels", int, None, "refuse image files whose header claims more pixels (before decoding them)",
           panel=DATA, derived="89,478,485, Pillow's limit", minimum=1, resumable=True,
           synonyms=("max_image_pixels", "pixel_limit")),
    Option("cache", str, "auto", "image folders: decode once into memory (memory), decode in worker processes every "
           "epoch (none), or memory when the decoded images fit the budget (auto: half the available memory, "
           "under a container's or job's memory limit too, or CNNCTL_MEMORY_BUDGET bytes)",
           panel=DATA, choices=lambda: ("auto", "memory", "none"), resumable=True,
           synonyms=("cache_images", "in_memory", "streaming")),
    Option("class_weights", str, None, "weight the training loss per class: auto (inverse frequency) or a JSON/CSV "
           "file of class name → weight", panel=DATA, check=_class_weights, synonyms=("class_weight", "weights_file")),
    Option("task", str, "auto", "single: one class per image (softmax); multilabel: any number of labels per image "
           "(a sigmoid per label, binary cross-entropy, per-label thresholds tuned on the validation split); auto: "
           "multilabel when an image of the data has several labels", panel=DATA,
           choices=lambda: ("auto", "single", "multilabel"), synonyms=("multilabel", "multi_label", "problem")),
    Option("sampler", str, "shuffle", "how each epoch draws training images: shuffle, or balanced (every class "
           "equally often, with replacement)", panel=DATA, choices=lambda: ("shuffle", "balanced")),
    # model
    Option("pretrained", str, None, "start from published weights: imagenet (the architecture's recommended "
           "ImageNet weights) or a weights name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT; timm: a tag), fetched into "
           "torch's cache and verified; or from a local .safetensors / .pth / .pt file", panel=MODEL,
           synonyms=("weights", "checkpoint", "init")),
    Option("freeze_epochs", int, 0, "train only the classifier for the first N epochs, then every layer",
           panel=MODEL, minimum=0),
    Option("dropout", float, None, "dropout before the classifier, for architectures whose head has one",
           panel=MODEL, derived="the architecture's", field="arch_args.dropout", minimum=0, maximum=1,
           exclusive_max=True, synonyms=("drop_rate", "dropout_rate")),
    Option("channels_last", bool, DERIVED, "channels-last (NHWC) memory format", panel=MODEL,
           derived="on for networks without BatchNorm, where it is faster on CPU; see benchmarks/choices.py"),
    Option("arch_args", dict, None, "the architecture's own arguments, e.g. {batch_norm: true} (files and API)",
           panel=MODEL, cli=False, synonyms=("model_args", "arch_kwargs"),
           unsearchable="search its entries instead (e.g. dropout)"),
    # training
    Option("epochs", int, 10, "training epochs (with --resume: the new total)", minimum=1,
           resumable=True, synonyms=("num_epochs", "n_epochs", "epoch", "max_epochs")),
    Option("batch_size", int, DERIVED, "images per step (the global batch with several processes)", minimum=1,
           derived="128, or for a small training set the largest power of two down to 16 that gives an epoch 32 "
                   "steps (720 images: 16); see docs/data.md",
           synonyms=("batch", "bs", "batchsize", "train_batch_size")),
    Option("device", str, "auto", "auto, cpu, cuda, cuda:N or mps", check=_device, resumable=True, machine=True,
           synonyms=("gpu", "accelerator")),
    Option("threads", int, None, "CPU threads (at most the machine's cores) \\[default: the CPUs this "
           "process may use that other work leaves free, followed while training]",
           minimum=1, check=_threads, resumable=True, machine=True,
           synonyms=("num_threads", "n_threads", "cpu_threads")),
    # optimizer and schedule
    Option("optimizer", str, "adam", "optimizer", panel=OPTIM, choices=lambda: tuple(optimizers.OPTIMIZERS),
           synonyms=("optim", "opt", "optimiser")),
    Option("lr", float, DERIVED, "(peak) learning rate; auto: run `cnnctl lr-find` first and use its suggestion",
           panel=OPTIM, minimum=0, exclusive_min=True, words=("auto",), sweep=False,
           derived="the optimizer's: adam/adamw 1e-3, or 5e-3 with onecycle for the LeNet family, or 3e-3 with "
                   "--pretrained (the classifier's; see --backbone-lr-scale); sgd 0.1 with onecycle, else 0.05; "
                   "rmsprop 1e-3",
           synonyms=("learning_rate", "lr_rate", "learningrate", "base_lr", "max_lr", "rate")),
    Option("momentum", float, DERIVED, "SGD/RMSprop momentum, Adam/AdamW β1", panel=OPTIM, minimum=0, maximum=1,
           exclusive_max=True, derived="the optimizer's: 0.9; rmsprop 0", synonyms=("beta1",)),
    Option("weight_decay", float, DERIVED, "weight decay (L2; decoupled for adamw)", panel=OPTIM, minimum=0,
           derived="the optimizer's: 0; adamw 0.01", synonyms=("wd", "decay", "l2")),
    Option("nesterov", bool, False, "Nesterov momentum (sgd)", panel=OPTIM),
    Option("scheduler", str, "onecycle", "learning-rate schedule", panel=OPTIM,
           choices=lambda: tuple(schedules.SCHEDULERS),
           synonyms=("schedule", "lr_scheduler", "sched", "lr_schedule")),
    Option("warmup_epochs", float, 0.0, "linear warm-up from ~0 to the learning rate over this many epochs (not "
           "with onecycle)", panel=OPTIM, minimum=0, synonyms=("warmup",)),
    Option("step_size", int, DERIVED, "step: epochs between decays", panel=OPTIM, derived="epochs/3", minimum=1),
    Option("gamma", float, 0.1, "step, multistep, plateau: factor per decay", panel=OPTIM, minimum=0, maximum=1,
           exclusive_min=True),
    Option("milestones", list, DERIVED, "multistep: epochs after which to decay, e.g. 30,60", panel=OPTIM,
           derived="50% and 75% of epochs", check=_milestones,
           unsearchable="a list of epochs; search step_size or gamma instead"),
    Option("t0", int, DERIVED, "cosine-restarts: epochs of the first cycle", panel=OPTIM, derived="epochs/3",
           minimum=1, synonyms=("t_0",)),
    Option("t_mult", int, 1, "cosine-restarts: each cycle is this many times longer", panel=OPTIM, minimum=1),
    Option("min_lr", float, 0.0, "cosine, cosine-restarts: final rate; plateau: lowest rate", panel=OPTIM,
           minimum=0, synonyms=("eta_min", "lr_min", "final_lr")),
    Option("plateau_patience", int, 2, "plateau: epochs without improvement of --monitor before decaying",
           panel=OPTIM, minimum=0),
    # regularisation and precision
    Option("augment", str, DERIVED, "batch augmentation; several combine in order, e.g. crop-flip,trivialaugment",
           panel=REGULARISE, derived="the dataset's", choices=lambda: tuple(augmentations.AUGMENT_PRESETS),
           many=True, normalize=lambda value: value.replace(" ", ""),
           synonyms=("augmentation", "aug", "transforms")),
    # training recipes (docs/recipes.md)
    Option("randaugment_magnitude", int, 9, "randaugment: strength of its operations (0-30)", panel=REGULARISE,
           minimum=0, maximum=30),
    Option("random_erasing", float, 0.0, "erase a random rectangle of each training image with this probability",
           panel=REGULARISE, minimum=0, maximum=1, synonyms=("erasing", "reprob")),
    Option("mixup", float, None, "mixup with this Beta(α, α): blend image pairs and their labels", panel=REGULARISE,
           minimum=0, exclusive_min=True, synonyms=("mixup_alpha",)),
    Option("cutmix", float, None, "cutmix with this Beta(α, α): paste a patch of another image, labels by area "
           "(with --mixup: one of the two per batch)", panel=REGULARISE, minimum=0, exclusive_min=True,
           synonyms=("cutmix_alpha",)),
    Option("ema", float, None, "keep an exponential moving average of the weights with this decay (e.g. 0.999); "
           "validation and best.safetensors use it", panel=REGULARISE, minimum=0, maximum=1, exclusive_min=True,
           exclusive_max=True, synonyms=("ema_decay", "model_ema", "model_ema_decay")),
    Option("label_smoothing", float, DERIVED, "label smoothing of the training loss (0-1)", panel=REGULARISE,
           derived="0.1 with --pretrained, else 0", minimum=0, maximum=1, exclusive_max=True,
           synonyms=("smoothing",)),
    Option("grad_clip", float, None, "clip the gradients' global L2 norm to this", panel=REGULARISE, minimum=0,
           exclusive_min=True, synonyms=("clip_grad", "gradient_clip", "max_grad_norm", "clip")),
    Option("amp", bool, False, "mixed precision: bf16 or fp16 + gradient scaler on CUDA; bf16 on CPUs that have it",
           panel=REGULARISE, synonyms=("mixed_precision", "fp16", "bf16")),
    Option("amp_dtype", str, "auto", "the mixed-precision type", panel=REGULARISE,
           choices=lambda: ("auto", "fp16", "bf16")),
    Option("precise_bn", bool, True, "re-estimate BatchNorm statistics over up to 1,024 training images before "
           "every validation (stale running averages make small data evaluate at chance)", panel=REGULARISE,
           synonyms=("precise_batchnorm", "recompute_bn")),
    # output
    Option("out", str, "runs", "folder that holds run folders", panel=OUTPUT, machine=True,
           unsearchable="the trials' folders are under the search folder",
           synonyms=("output", "output_dir", "out_dir", "runs_dir")),
    Option("name", str, None, "run group name, a plain folder name \\[default: ARCH-DATASET]", panel=OUTPUT,
           check=_plain_folder_name, synonyms=("run_name", "experiment"),
           unsearchable="the search has one name (--name)"),
    Option("plots", bool, True, "write curves.png, confusion.png and predictions.png into the run folder",
           panel=OUTPUT, resumable=True),
    Option("quiet", bool, False, "print only the final result", panel=OUTPUT, short="-q", config=False,
           sweep=False),
    # experiment tracking: the loggers' registry is cnnctl/recipe/loggers.py
    Option("logger", str, None, "log the run to these experiment trackers too, comma-separated (see "
           "docs/tracking.md)", panel=OUTPUT, choices=_logger_names, many=True,
           normalize=_join_names, resumable=True,
           synonyms=("loggers", "tracker", "trackers", "tracking")),
    # checkpoints, resume and reproducibility
    Option("seed", int, 0, "random seed (split, initialisation, shuffling, augmentation)", panel=RUN, minimum=0,
           maximum=SEED_MAX, synonyms=("random_seed", "rng_seed")),
    Option("patience", int, None, "early stopping: stop after this many epochs without improvement of --monitor",
           panel=RUN, minimum=1, resumable=True, synonyms=("early_stopping", "early_stop")),
    Option("monitor", str, "val_acc", "picks best.safetensors (equal values: the lower val_loss), early stopping "
           "and plateau (multi-label: val_acc is the subset accuracy, val_map the mean average precision)",
           panel=RUN, choices=lambda: ("val_loss", "val_acc", "val_macro_f1", "val_balanced_acc", "val_map"),
           synonyms=("metric",), unsearchable="it is the objective the search optimises (--monitor)"),
    Option("keep", int, 1, "keep the K best epochs in checkpoints/ (best.safetensors is always the best)",
           panel=RUN, minimum=1, resumable=True, synonyms=("save_top_k", "top_k", "keep_best")),
    Option("deterministic", bool, False, "deterministic kernels: the same seed gives the same weights", panel=RUN),
    Option("config_file", str, None, "YAML, TOML or JSON file of options (flags given here override it), e.g. a "
           "run's config.yaml", panel=RUN, flag="--config", config=False),
    Option("resume", str, None, "continue the run in this folder (or its last.safetensors); --epochs may extend it",
           panel=RUN, config=False, sweep=False),
    # several processes
    Option("nproc", int, None, "train with N processes on this machine (torchrun + DistributedDataParallel; one GPU "
           "each on CUDA); --batch-size is the global batch, split among them", panel=DIST, minimum=1,
           config=False, sweep=False),
    Option("sync_bn", bool, False, "with several processes on CUDA: BatchNorm statistics over the global batch "
           "(SyncBatchNorm)", panel=DIST),
    # pretrained weights: where they come from, offline use, fine-tuning controls (cnnctl/models/weights.py)
    Option("weights_mirror", str, None, "URL or folder holding weights files under their published names, tried "
           "before the official URL \\[env: CNNCTL_WEIGHTS_MIRROR]", panel=PRETRAINED, resumable=True),
    Option("offline", bool, False, "open no network connection: weights and datasets must be on disk (or in a "
           "--weights-mirror / --mirror folder) \\[env: CNNCTL_OFFLINE=1]", panel=PRETRAINED, resumable=True),
    Option("backbone_lr_scale", float, DERIVED, "learning rate of every layer but the classifier, relative to "
           "--lr", panel=PRETRAINED, derived="0.1 with --pretrained, else 1", minimum=0, exclusive_min=True),
    Option("head_init", str, DERIVED, "the new classifier's starting weights when --pretrained replaces it: zero "
           "(every class equally likely, so the first loss is ln(classes) and the backbone gets no gradient until "
           "the head has learned) or random (the architecture's own initialisation)", panel=PRETRAINED,
           derived="zero with --pretrained", choices=lambda: ("zero", "random"),
           synonyms=("classifier_init", "zero_head", "zero_init_head")),
    Option("normalize", str, DERIVED, "the mean/std images are normalised with when fine-tuning: the weights' own "
           "(those they were trained with) or the training images'", panel=PRETRAINED,
           derived="weights when the architecture's ImageNet preprocessing is known, also for a weights file",
           choices=lambda: ("weights", "data"), synonyms=("normalise", "mean_std", "input_stats")),
    Option("crop_scale", float, DERIVED, "resized-crop augmentation: the smallest share of the image's area a "
           "random crop keeps (torchvision's RandomResizedCrop scale=(crop_scale, 1))", panel=REGULARISE,
           derived="0.6 with --pretrained, else 0.08 (ImageNet training's)", minimum=0, maximum=1,
           exclusive_min=True, synonyms=("min_scale", "scale", "rrc_scale")),
    Option("grey_input", str, DERIVED, "grey images with colour weights: replicate (to 3 channels) or sum (the "
           "first convolution's filters)", panel=PRETRAINED,
           derived="replicate for published weights, sum for weight files",
           choices=lambda: ("replicate", "sum")),
    Option("linear_probe", bool, False, "train only a new linear classifier on the pretrained backbone's features "
           "(backbone frozen in eval mode, features of the un-augmented images computed once, a few hundred steps "
           "of the head); a run folder and checkpoint like any other, in one epoch", panel=PRETRAINED,
           synonyms=("probe", "linear_eval", "linear_classifier")),
    Option("teacher", str, None, "distil from this checkpoint or run folder: the loss mixes the labels with the "
           "teacher's outputs softened by --distill-temperature (its classes must be this run's); its outputs are "
           "computed once when the training images are not augmented, else per batch", panel=DISTILL,
           synonyms=("distill", "distill_from", "teacher_checkpoint", "distillation")),
    Option("distill_temperature", float, 4.0, "with --teacher: the temperature T that softens the teacher's and "
           "the student's outputs (the soft term is scaled by T², as Hinton et al.)", panel=DISTILL, minimum=0,
           exclusive_min=True, maximum=100),
    Option("distill_weight", float, 0.7, "with --teacher: the share w of the loss that is the teacher's soft "
           "targets; 1 - w is the labels' cross-entropy", panel=DISTILL, minimum=0, maximum=1),
)

OPTION_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
CONFIG_OPTIONS: tuple[Option, ...] = tuple(option for option in OPTIONS if option.config)
_ALIASES: dict[str, str] = {alias: option.name for option in CONFIG_OPTIONS for alias in option.aliases}
RESUMABLE: frozenset[str] = frozenset(option.name for option in OPTIONS if option.resumable)
MACHINE_OPTIONS: tuple[str, ...] = tuple(option.name for option in OPTIONS if option.machine)


def canonical_name(key: str) -> str | None:
    """The option a config-file or API key names (``batch-size``, ``data_dir`` → ``batch_size``, ``data``)."""
    key = str(key).strip().replace("-", "_")
    if key in OPTION_BY_NAME and OPTION_BY_NAME[key].config:
        return key
    return _ALIASES.get(key)


def unknown_option(key: str, source: str) -> UsageError:
    """The error for a key that names no option, with a did-you-mean that knows synonyms (``learning_rate``)."""
    import difflib

    normal = str(key).strip().replace("-", "_").lower()
    for option in CONFIG_OPTIONS:
        if normal in option.synonyms:
            return UsageError(f"unknown option in {source}: {key!r}: did you mean {option.name}?")
    words = {option.name: option.name for option in CONFIG_OPTIONS}
    words.update({synonym: option.name for option in CONFIG_OPTIONS for synonym in option.synonyms})
    close = difflib.get_close_matches(normal, list(words), n=1, cutoff=0.6)
    if close:
        return UsageError(f"unknown option in {source}: {key!r}: did you mean {words[close[0]]}?")
    return UsageError(f"unknown option in {source}: {key!r}",
                      hint="`cnnctl train --help` lists them (a flag --x-y is the key x_y)")


def choice_settings(names: Callable[[], Sequence[str]]) -> dict[str, Any]:
    """Typer settings that show a closed list as its choices: the metavar ``[a|b|c]`` in ``--help`` and the
    names to shell completion, both read from the registry. Validation stays with the option layer, which
    answers an unknown name in one line with a did-you-mean (click's Choice would print a usage box)."""

    def complete(incomplete: str) -> list[str]:
        return [name for name in names() if name.startswith(incomplete)]

    return {"metavar": "[" + "|".join(names()) + "]", "autocompletion": complete}


# ---------------------------------------------------------------------------------------------- conversion
def coerce(option: Option, value: Any) -> Any:
    """``value`` (from a file, the API or the command line) as the option's type, range-checked; errors name the
    option as :func:`label` says."""
    where = label(option.name)
    if value is None:
        if option.nullable or option.type is dict:
            return None
        raise UsageError(f"{where} cannot be empty (null)")
    kind = option.type
    if kind is bool:
        if isinstance(value, bool):
            result: Any = value
        elif isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            result = value.lower() in ("true", "yes", "on")
        else:
            raise UsageError(f"{where} must be true or false, got {value!r}")
    elif kind in (int, float):
        word = value.strip().lower() if isinstance(value, str) else None
        result = word if word in option.words else _number(value, kind, where)
    elif kind is str:
        if option.many and isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise UsageError(f"{where} must be a string, got {value!r}")
        result = value
    elif kind is list:
        if isinstance(value, str):
            value = [item for item in value.replace(" ", "").split(",") if item]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {value!r}")
        result = [_number(item, int, where) for item in value]
    elif kind is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a mapping, got {value!r}")
        result = {str(k): v for k, v in value.items()}
    else:
        result = value
    check_value(option, result)
    return option.normalize(result) if option.normalize is not None else result


def _number(value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{where} must be a {'whole number' if kind is int else 'number'}, got {value!r}")
    try:
        number = float(value) if not isinstance(value, int) else value
    except ValueError:
        number = None
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        what = "a whole number" if kind is int else "a finite number"
        raise UsageError(f"{where} must be {what}, got {value!r}")
    if kind is int:
        if isinstance(number, float) and not number.is_integer():
            raise UsageError(f"{where} must be a whole number, got {value!r}")
        return int(number)
    return float(number)


def check_value(option: Option, value: Any) -> None:
    """The option's own range and rule (``minimum``, ``maximum``, ``choices``, ``check``)."""
    if value is None:
        return
    where = label(option.name)
    if option.type in (int, float) and value not in option.words:
        low, high = option.minimum, option.maximum
        below = low is not None and (value <= low if option.exclusive_min else value < low)
        above = high is not None and (value >= high if option.exclusive_max else value > high)
        if below or above:
            raise UsageError(f"{where} {_range_text(option)}, got {_text(value)}")
    if option.choices is not None:
        known = list(option.choices())
        for item in [part.strip() for part in value.split(",") if part.strip()] if option.many else [value]:
            if item not in known:
                kind = {"augment": "augmentation", "amp_dtype": where, "monitor": where,
                        "tta": f"{where} mode"}.get(option.name, option.name)
                raise suggest(item, known, kind)
    if option.check is not None:
        problem = option.check(value)
        if problem:
            raise UsageError(f"{where} {problem}")


def _text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _range_text(option: Option) -> str:
    low, high = option.minimum, option.maximum
    if low is not None and high is not None:
        opening, closing = "(" if option.exclusive_min else "[", ")" if option.exclusive_max else "]"
        return f"must be in {opening}{_text(low)}, {_text(high)}{closing}"
    if low is not None:
        if option.exclusive_min:
            return "must be positive" if low == 0 else f"must be > {_text(low)}"
        return "must be at least 1" if low == 1 else f"must be >= {_text(low)}"
    return f"must be < {_text(high)}" if option.exclusive_max else f"must be <= {_text(high)}"


def coerce_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A mapping of option names (any spelling: ``batch-size``, old names like ``data_dir``) to values, checked
    and converted; keys are the options' names."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = canonical_name(key)
        if name is None:
            raise unknown_option(key, source)
        result[name] = coerce(OPTION_BY_NAME[name], value)
    return result
