"""The options of ``cnnctl eval``, ``predict``, ``export``, ``tune``, ``lr-find`` and ``serve``, declared once each,
like train's (cnnctl/recipe/options.py): each declaration generates the command's Typer parameters
(cnnctl/cli/params.py) and the keyword defaults of its Python function (``cnnctl.evaluate``, ``cnnctl.predict``,
``cnnctl.export``, ``cnnctl.tune.search``, ``cnnctl.engine.lr_find.lr_find``, ``cnnctl.serve.ServeSettings``),
whose values are checked by the same option layer.
``config=False`` marks what only the command line has (``--json``, where output goes). tests/test_api.py checks
that every command and its function agree.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

from cnnctl.recipe.options import Option, coerce, naming
from cnnctl.registry import suggest

# test-time augmentation: the views averaged per image (cnnctl/engine/tta.py)
TTA_MODES = ("none", "flip", "crop", "flip-crop")
TTA_HELP = ("test-time augmentation: average the probabilities over the image and its mirror (flip), the image and "
            "4 shifted copies (crop), or both (flip-crop, 10 views); mirrors suit natural images, not digits")
DEVICE_HELP = "auto, cpu, cuda or mps"
THRESHOLDS_HELP = ("multi-label checkpoints: the decision thresholds, one number from 0 to 1 for every label or one "
                   "per label (comma-separated, in the order of the classes) \\[default: the checkpoint's, tuned on "
                   "the validation split]")
LABEL_COUNT_HELP = ("multi-label checkpoints: labels per image, any, N or MIN-MAX; an image given fewer at the "
                    "thresholds also gets its most probable others, one given more keeps its most probable "
                    "\\[default: the checkpoint's, the range of the training images]")
SEARCH = "Search"
WHERE = "Storage, workers and resume"
SWEEP = "Sweep"
BATCHING = "Batching"
LIMITS = "Limits"


def _option(name: str, kind: Any, default: Any, help: str, *, panel: str | None = None, **facts: Any) -> Option:
    """An option of one of these commands: in the plain ``Options`` panel of ``--help`` unless given one; a flag
    that is off by default is only ``--flag`` (no ``--no-flag``)."""
    if kind is bool and default is False:
        facts.setdefault("negatable", False)
    return Option(name, kind, default, help, panel=panel, **facts)  # type: ignore[arg-type]


def _tta(**overrides: Any) -> Option:
    return _option("tta", str, "none", TTA_HELP, choices=lambda: TTA_MODES, **overrides)


def _json(help: str) -> Option:
    return _option("json_output", bool, False, help, flag="--json", config=False)


EVAL: tuple[Option, ...] = (
    _option("dataset", str, None, "dataset \\[default: the checkpoint's]"),
    _option("split", str, "test", "val: as held out in training", choices=lambda: ("test", "val", "train")),
    _option("batch_size", int, 1000, "images per batch", minimum=1),
    _option("device", str, "auto", DEVICE_HELP),
    _option("root", str, None, "data folder \\[env: CNNCTL_DATA]"),
    _option("mirror", str, None, "dataset mirror \\[env: CNNCTL_MIRROR]"),
    _json("machine-readable output"),
    _option("data", str, None, "a folder of class sub-folders to evaluate on \\[default: the checkpoint's folder, "
            "for folder runs]"),
    _option("plots", str, None, "write confusion.png and predictions.png into this folder", metavar="DIR"),
    _option("report", str, None, "write an HTML report (DIR/index.html, self-contained) and report.json: metrics, "
            "confusion, top losses, confused pairs, calibration", metavar="DIR"),
    _option("label_issues", bool, False, "rank the images whose given label the model finds least likely "
            "(cleanlab: pip install 'cnnctl\\[labels]'); in the report and its label_issues.csv"),
    _option("top_losses", int, 32, "images in the report's top-losses grid", minimum=0),
    _tta(),
    _option("thresholds", str, None, THRESHOLDS_HELP, metavar="T[,T...]"),
    _option("label_count", str, None, LABEL_COUNT_HELP, metavar="any|N|MIN-MAX"),
)

PREDICT: tuple[Option, ...] = (
    _option("output", str, None, "write CSV (or JSON) to this file; - for stdout \\[default: stdout]", short="-o",
            config=False),
    _option("topk", int, 5, "how many top classes per image", minimum=1, config=False),
    _option("batch_size", int, 256, "images per batch", minimum=1),
    _option("device", str, "auto", DEVICE_HELP),
    _option("strict", bool, False, "fail (exit 1) if any image cannot be read", config=False),
    _json("JSON instead of CSV"),
    _option("max_pixels", int, None, "refuse images with more pixels (read from the header)",
            derived="89,478,485", minimum=1),
    _option("plot", str, None, "also draw the first 64 images with their predicted classes (wrong ones in red where "
            "a parent folder names the true class)", metavar="PNG", config=False),
    _tta(),
    _option("reject_below", float, None, "answer 'unknown' for images whose top probability (after the checkpoint's "
           "calibration temperature) is below P; 0 answers every image", derived="the threshold `cnnctl calibrate "
           "--target-error` stored, else none", metavar="P", minimum=0, maximum=1),
    _option("thresholds", str, None, THRESHOLDS_HELP, metavar="T[,T...]"),
    _option("label_count", str, None, LABEL_COUNT_HELP, metavar="any|N|MIN-MAX"),
    _option("pretrained", str, None, "classify with ImageNet weights, no training: the first argument is then the "
            "architecture (cnnctl predict tv:resnet50 --pretrained imagenet photo.jpg); imagenet, a weights name, or "
            "a .pth/.safetensors file", metavar="WEIGHTS", config=False),
    _option("arch", str, None, "the architecture of a weights file given as the first argument (cnnctl predict "
            "lite0.pth --arch timm:tf_efficientnet_lite0 photo.jpg)", config=False),
    _option("weights_mirror", str, None, "with --pretrained: URL or folder tried before the official URL "
            "\\[env: CNNCTL_WEIGHTS_MIRROR]", config=False),
    _option("offline", bool, False, "open no network connection (weights must be on disk)", envvar="CNNCTL_OFFLINE",
            config=False),
)

EXPORT: tuple[Option, ...] = (
    _option("format", str, "onnx", "the exported model's format", short="-f"),  # choices: the exporter's registry
    _option("dynamic_batch", bool, False, "accept any batch size \\[default: exactly 1 image per call]"),
    _option("opset", int, None, "ONNX opset \\[default: the exporter's own]", minimum=7),
    _option("output", str, None, "model file or folder to write \\[default: beside the checkpoint]", short="-o"),
    _option("root", str, None, "data folder with the test images \\[env: CNNCTL_DATA]"),
    _json("machine-readable output"),
    _option("data", str, None, "a folder of class sub-folders to check (and calibrate) on \\[default: the "
           "checkpoint's test split]"),
    _option("max_drop", float, 1.0, "accuracy points the export may lose against PyTorch before it is refused",
            minimum=0, maximum=100),
    _option("force", bool, False, "write the export even when it fails the accuracy check (and say so)"),
    _option("calibration_images", int, 300, "training images an int8 format calibrates on", minimum=1),
    _option("calibration_method", str, None, "how onnx-int8 sets its ranges \\[default: minmax]",
            choices=lambda: ("minmax", "entropy", "percentile")),
)

# `cnnctl benchmark` (cnnctl/benchmark.py)
BENCHMARK: tuple[Option, ...] = (
    _option("batch_size", int, 64, "batch size of the throughput measurement", minimum=2),
    _option("threads", int, None, "threads for every runtime", derived="torch's, from the machine's load", minimum=1),
    _option("formats", str, None, "export formats to time, comma-separated \\[default: all]", metavar="NAME[,...]"),
    _option("seconds", float, 1.0, "least time spent on each measurement", minimum=0, exclusive_min=True),
    _option("root", str, None, "data folder with the training images the int8 formats calibrate on "
           "\\[env: CNNCTL_DATA]"),
    _json("machine-readable output"),
)

TUNE: tuple[Option, ...] = (
    _option("trials", int, None, "trials in the whole search (all workers and machines together) \\[default: 20; "
            "with --resume: as before, or a new total]", panel=SEARCH),
    _option("timeout", float, None, "start no new trial after this many seconds (the running ones finish)",
            panel=SEARCH),
    _option("pruner", str, "median", "stop hopeless trials early: median (worse than the median of earlier trials at "
            "the same epoch), hyperband, or none", panel=SEARCH),
    _option("space", str, None, "YAML/JSON/TOML mapping of option names to SPECs (--param overrides its entries)",
            panel=SEARCH, metavar="FILE", config=False),  # cnnctl.tune.search takes the mapping itself
    _option("pruner_startup", int, 2, "median pruner: trials that must finish before any is pruned", panel=SEARCH),
    _option("storage", str, None, "SQLAlchemy database URL of the study, e.g. postgresql://user@host/db, shared by "
            "every process that runs this search; with only --name NAME, show that study's table \\[default: "
            "sqlite optuna.db in the search folder]", panel=WHERE, metavar="URL", envvar="CNNCTL_TUNE_STORAGE"),
    _option("workers", int, 1, "worker processes on this machine, sharing the study and the CPU cores", panel=WHERE,
            minimum=1, config=False),
    _option("resume", str, None, "continue the search in this folder (runs/tune-NAME): interrupted trials continue, "
            "finished ones are kept", panel=WHERE, metavar="DIR"),
    _option("worker", bool, False, "run trials only (started by --workers)", hidden=True, config=False),
    _json("print the summary as JSON"),
    _option("quiet", bool, False, "one line per trial, not per epoch", short="-q", config=False),
)

LR_FIND: tuple[Option, ...] = (
    _option("start_lr", float, 1e-7, "first rate of the sweep", panel=SWEEP, minimum=0),
    _option("end_lr", float, 10.0, "last rate of the sweep", panel=SWEEP, minimum=0),
    _option("steps", int, 200, "optimizer steps of the sweep", panel=SWEEP, minimum=10),
    _option("plot", str, None, "where to draw loss against rate ('' for no plot) \\[default: OUT/NAME/lr-find.png, "
            "beside the run folders train makes]", panel=SWEEP, metavar="PNG", config=False),
    _json("the sweep as JSON on stdout"),
)

CALIBRATE: tuple[Option, ...] = (
    _option("target_error", float, None, "also choose the lowest confidence threshold whose accepted validation "
           "images are misclassified at most this often (e.g. 0.01); predict then answers 'unknown' below it",
           minimum=0, maximum=1, exclusive_min=True, exclusive_max=True),
    _option("output", str, None, "write the calibrated checkpoint here \\[default: update CHECKPOINT in place]",
           short="-o", metavar="FILE"),
    _option("batch_size", int, 1000, "images per batch", minimum=1),
    _option("device", str, "auto", DEVICE_HELP),
    _option("root", str, None, "data folder \\[env: CNNCTL_DATA]"),
    _option("mirror", str, None, "dataset mirror \\[env: CNNCTL_MIRROR]"),
    _option("data", str, None, "the image folder of a folder run, if it moved"),
    _json("machine-readable output"),
)

# cnnctl serve (cnnctl/serve/settings.py's ServeSettings takes the same names and defaults). The limits bound what
# one client can make the server hold; each one refused answers with its HTTP status and one log line.
SERVE: tuple[Option, ...] = (
    _option("host", str, "127.0.0.1", "address to listen on; another than 127.0.0.1 makes the server reachable from "
           "other machines"),
    _option("port", int, 8000, "TCP port; 0 picks a free one (the log says which)", minimum=0, maximum=65535),
    _option("batch_size", int, 16, "images per forward pass, gathered from concurrent requests", panel=BATCHING,
            minimum=1),
    _option("max_wait_ms", float, 5.0, "how long a batch waits for a request on its way before it runs",
            panel=BATCHING, minimum=0, maximum=10_000),
    _option("queue_size", int, 256, "images waiting for the model; a request that does not fit is answered 503",
            panel=BATCHING, minimum=1),
    _option("max_body_mb", float, 8.0, "largest request body in MiB; the server reads no further (413)",
            panel=LIMITS, minimum=0, exclusive_min=True, maximum=4096),
    # 4096 x 4096: a phone's photo fits, a decompression bomb does not (48 MB decoded as RGB)
    _option("max_pixels", int, 4096 * 4096, "refuse images with more pixels, read from the header before decoding "
            "(413)", panel=LIMITS, minimum=1),
    _option("max_images", int, 64, "images in one request (413 beyond)", panel=LIMITS, minimum=1),
    _option("limit_concurrency", int, 64, "connections served at once; more are answered 503", panel=LIMITS,
            minimum=1),
    _option("header_timeout", float, 10.0, "seconds a connection has to send a request head (408, closed after)",
            panel=LIMITS, minimum=0, exclusive_min=True),
    _option("body_timeout", float, 30.0, "seconds a request has to send its body (408)", panel=LIMITS, minimum=0,
            exclusive_min=True),
    _option("keep_alive", int, 5, "seconds an idle keep-alive connection stays open", panel=LIMITS, minimum=1),
    _option("decode_threads", int, 2, "threads decoding images", minimum=1),
    _option("topk", int, 5, "how many top classes per image", minimum=1),
    _option("reject_below", float, None, "answer 'unknown' for images whose top probability (after the checkpoint's "
           "calibration temperature) is below P; 0 answers every image", derived="the threshold `cnnctl calibrate "
           "--target-error` stored, else none", metavar="P", minimum=0, maximum=1),
    _option("device", str, "auto", DEVICE_HELP),
    _option("threads", int, None, "CPU threads for the model", derived="the CPUs this process may use", minimum=1),
    _option("access_log", bool, False, "log every request, not only refused ones"),
)

COMMANDS: dict[str, tuple[Option, ...]] = {"eval": EVAL, "predict": PREDICT, "export": EXPORT,
                                           "benchmark": BENCHMARK, "tune": TUNE,
                                           "lr-find": LR_FIND, "calibrate": CALIBRATE,
                                           "serve": SERVE}


def api_options(options: tuple[Option, ...]) -> tuple[Option, ...]:
    """The options a command's Python function takes (``config=False`` ones are the command line's only)."""
    return tuple(option for option in options if option.config)


def command_values(options: tuple[Option, ...], given: dict[str, Any], *, style: str = "flag") -> dict[str, Any]:
    """Every option of a command: the given values converted and range-checked (errors name them as ``style``
    says: ``flag`` for the command line, ``param`` for Python), the rest at their defaults."""
    with naming(style):
        return {option.name: coerce(option, given[option.name]) if given.get(option.name) is not None
                else option.stored_default for option in options if option.name in given or option.config}


def api_values(options: tuple[Option, ...], given: dict[str, Any], caller: str) -> dict[str, Any]:
    """The keyword options of a command's Python function ``caller``: every one of ``api_options(options)``,
    checked (a path-like value as its text), the rest at their defaults; an unknown keyword is one error with a
    did-you-mean."""
    known = {option.name for option in api_options(options)}
    for key in given:
        if key not in known:
            raise suggest(key, sorted(known), f"option of {caller}:")
    values = {name: os.fspath(value) if isinstance(value, os.PathLike) else value for name, value in given.items()}
    return command_values(api_options(options), {name: values.get(name) for name in known}, style="param")


def api_signature(options: tuple[Option, ...], leading: Sequence[inspect.Parameter] = (),
                  return_annotation: Any = inspect.Signature.empty) -> inspect.Signature:
    """The signature a command's Python function shows (help(), IDEs): ``leading`` parameters, then every API
    option as a keyword with its declared default."""
    return inspect.Signature([*leading, *(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                                                            default=option.stored_default)
                                          for option in api_options(options))],
                             return_annotation=return_annotation)
