"""The Python API (``cnnctl.train``, ``load``, ``predict``, ``export``): the CLI's commands as functions.

They do what the commands do, without Typer: every bad input raises a ``CnnctlError`` (the same one-line
messages the CLI prints), and nothing here exits the interpreter or prints unless asked to.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.engine.calibrate import calibrate as _calibrate
from cnnctl.engine.embed import check_output, open_backbone, write_embeddings
from cnnctl.engine.embed import embed as _embed
from cnnctl.engine.fit import Trainer
from cnnctl.engine.heatmaps import explain as _explain
from cnnctl.engine.predict import load_for_inference, model_with_meta, predict_api
from cnnctl.errors import UsageError
from cnnctl.exporter import export as _export
from cnnctl.models.imagenet_classifier import imagenet_classifier
from cnnctl.progress import PlainReporter
from cnnctl.recipe.commands import CALIBRATE, EVAL, EXPORT, PREDICT, api_signature, api_values
from cnnctl.recipe.config import TrainConfig
from cnnctl.recipe.config_file import build_train_config, coerce_options
from cnnctl.recipe.options import CONFIG_OPTIONS, naming
from cnnctl.report import evaluate_and_report

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import Preprocessing
    from cnnctl.engine.callbacks import Callback
    from cnnctl.engine.fit import FitResult
    from cnnctl.exporter import ExportResult
    from cnnctl.progress import Reporter
    from cnnctl.recipe.config import TrainConfig


def train(arch: str | TrainConfig | None = None, *, progress: bool = False, reporter: Reporter | None = None,
          resume: str | os.PathLike[str] | None = None, callbacks: list[Callback] | None = None,
          **options: Any) -> FitResult:
    """``cnnctl train ARCH --option value`` as ``train("ARCH", option=value)``: every option of ``cnnctl train``
    under its name (``dataset``, ``epochs``, ``batch_size``, ``lr``, ``data``, ``dropout``, ``out``, ...; see
    cnnctl/recipe/options.py). A TrainConfig may be passed instead of the name, and options then override its fields.
    ``train(resume="runs/lenet5-mnist/1", epochs=20)`` continues a run exactly where it stopped, like
    ``--resume`` (and may extend it). Errors name the parameters (``epochs must be at least 1``).

    Returns a ``FitResult``: the run folder (``.run_dir``; the result itself is path-like, so
    ``cnnctl.load(run)`` and ``Path(run)`` work), ``.best_path``, ``.last_path``, ``.history`` (one dict per
    epoch), ``.test`` (the final test metrics) and ``.results`` (results.json: the test metrics, or without a
    test split the best epoch's on the validation split). ``progress=True`` prints a line per epoch; a ``reporter``
    (see ``cnnctl.progress``) receives every event instead. ``callbacks`` (``cnnctl.engine.callbacks.Callback``
    instances) run beside the built-in ones.
    """
    with naming("param"):
        trainer = _trainer(arch, reporter if reporter is not None or not progress else _plain_reporter(),
                           resume, callbacks, options)
        return trainer.run()


def _train_signature() -> inspect.Signature:
    """``train``'s signature with every option as a keyword (for help(), IDEs and REPL completion), generated
    from cnnctl/recipe/options.py; older spellings (``data_dir``) still arrive through ``**options``."""
    own = inspect.signature(train).parameters.values()
    explicit = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in explicit}
    generated = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.stored_default)
                 for option in CONFIG_OPTIONS if option.name not in taken]
    rest = [p for p in own if p.kind is inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature([*explicit, *generated, *rest], return_annotation="FitResult")


train.__signature__ = _train_signature()  # type: ignore[attr-defined]


def _plain_reporter() -> Reporter:
    return PlainReporter()


def _trainer(arch: Any, reporter: Reporter | None, resume: Any, callbacks: list[Callback] | None,
             options: dict[str, Any]) -> Any:
    source = "cnnctl.train()"
    if resume is not None:
        if arch is not None:
            raise UsageError("cnnctl.train(resume=...) continues a run with its own architecture and configuration",
                             hint="pass only the options to change, e.g. epochs=")
        return Trainer.resuming(os.fspath(resume), coerce_options(options, source=source), reporter,
                                callbacks=callbacks)
    if isinstance(arch, TrainConfig):
        options = {**arch.to_dict(), **options}
    elif arch is not None:
        if "arch" in options:
            raise UsageError("cnnctl.train got the architecture twice (positionally and as arch=)")
        options = {"arch": arch, **options}
    if not options.get("arch"):  # the command line's message would point at `cnnctl train` and --config
        raise UsageError("cnnctl.train needs an architecture", hint='e.g. cnnctl.train("lenet5", dataset="mnist")')
    return Trainer(build_train_config(options, source=source), reporter, callbacks=callbacks)


def load(path: str | os.PathLike[str], device: str = "cpu") -> tuple[torch.nn.Module, Preprocessing]:
    """A checkpoint (``.safetensors`` file, run folder, or what ``train`` returned) as ``(model, preprocessing)``.

    The model is in eval mode on ``device``; ``model.cnnctl_meta`` holds the rest of the checkpoint's metadata
    (``classes``, ``arch``, ``dataset``, ``metrics``).
    """
    return load_for_inference(_as_path(path, "cnnctl.load"), device=device)


def load_pretrained(arch: str, weights: str | os.PathLike[str] = "imagenet", device: str = "cpu", *,
                    weights_mirror: str | None = None, offline: bool = False
                    ) -> tuple[torch.nn.Module, Preprocessing]:
    """An ImageNet classifier with no training, as ``(model, preprocessing)`` like :func:`load`: ``arch``
    (``"tv:resnet50"``, ``"timm:tf_efficientnet_lite0"``) with ``weights`` — ``"imagenet"``, a weights name, or a
    local ``.pth``/``.safetensors`` file (matched by name, or by order when its names are another library's).

    ``model.cnnctl_meta.classes`` are the ImageNet class names, its preprocessing the weights' own, so
    ``predict(model, "photo.jpg")`` works as for a checkpoint. Published weights are fetched and verified as for
    ``train(pretrained=...)`` (``weights_mirror`` first; ``offline``: nothing is downloaded).
    """
    from types import SimpleNamespace

    model = imagenet_classifier(arch, os.fspath(weights), device=device,
                                config=SimpleNamespace(weights_mirror=weights_mirror, offline=offline))
    return model, model.cnnctl_meta.preprocessing


def predict(model_or_path: Any, images: Any, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``images`` — an image file, a folder, a list of them, or a uint8 tensor (C×H×W or N×C×H×W at the
    checkpoint's image size) — with a model from ``load`` or a checkpoint path.

    Returns ``(labels, probabilities)``: int64 class indices (N) and softmax probabilities (N×classes). The
    class names are ``model.cnnctl_meta.classes``. Preprocessing comes from the checkpoint, as in the CLI.
    The options of ``cnnctl predict`` that shape the numbers, with its defaults (cnnctl/recipe/commands.py):
    ``tta`` (``flip`` or ``flip-crop`` averages the probabilities over views of each image), ``device`` (where a
    checkpoint path is loaded; a loaded model stays where it is), ``batch_size``, ``max_pixels``,
    ``reject_below``. A calibrated checkpoint (``cnnctl calibrate``) divides the logits by its temperature; an
    image whose top probability is below ``reject_below`` (default: the threshold ``calibrate --target-error``
    stored) gets label -1 ("unknown"). A multi-label checkpoint returns ``(given, probabilities)``: bool
    N×classes (each class at or above its threshold: the checkpoint's, or ``thresholds``, one number or one per
    class; kept within the checkpoint's range of labels per image, or ``label_count``: any, N or MIN-MAX) and each
    class's sigmoid.
    """
    values = api_values(PREDICT, options, "cnnctl.predict")
    model_or_path, images = _model_and_images(model_or_path, images, values["device"], "cnnctl.predict")
    return predict_api(model_or_path, images, **values)


predict.__signature__ = api_signature(PREDICT, [  # type: ignore[attr-defined]
    inspect.Parameter("model_or_path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD)], "tuple[torch.Tensor, torch.Tensor]")


def calibrate(checkpoint_path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """``cnnctl calibrate``: fit the temperature (and with ``target_error`` the abstention threshold) on the
    checkpoint's validation split and store them in it (in place, or in ``output``). Returns what was stored,
    with ``checkpoint``: the file written (docs/calibration.md). Every option of ``cnnctl calibrate`` under its
    name, with the same default (cnnctl/recipe/commands.py)."""
    values = api_values(CALIBRATE, options, "cnnctl.calibrate")
    values["data_dir"] = values.pop("data")
    written, record = _calibrate(_as_path(checkpoint_path, "cnnctl.calibrate"), **values)
    return {"checkpoint": str(written), **record}


calibrate.__signature__ = api_signature(CALIBRATE, [  # type: ignore[attr-defined]
    inspect.Parameter("checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD)], "dict[str, Any]")


def export(checkpoint_path: str | os.PathLike[str], format: str = "onnx", **options: Any) -> ExportResult:
    """``cnnctl export``: write the export (``<stem>.onnx``, ``.int8.onnx``, ``.openvino.xml``, ...,
    docs/export.md) and ``<stem>.preprocessing.json`` beside the checkpoint (or at ``output``), after running it in
    its own runtime on the checkpoint's test split (or the folder ``data``): an exact format must give PyTorch's
    logits within its tolerance, and no export may lose more than ``max_drop`` accuracy points unless ``force``.
    Returns the paths and the measurements (``result.comparison``). Every option of ``cnnctl export`` under its
    name, with the same default (cnnctl/recipe/commands.py)."""
    values = api_values(EXPORT, {"format": format, **options}, "cnnctl.export")
    return _export(_as_path(checkpoint_path, "cnnctl.export"), **values)


export.__signature__ = api_signature(  # type: ignore[attr-defined]
    tuple(option for option in EXPORT if option.name != "format"),
    [inspect.Parameter("checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("format", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                       default=next(o.default for o in EXPORT if o.name == "format"))], "ExportResult")


def _model_and_images(model_or_path: Any, images: Any, device: str, caller: str) -> tuple[Any, Any]:
    """The model (loaded when a path is given) and the images as the engine takes them: a checked uint8 batch,
    a path, or a list of paths."""
    import torch

    model_or_path, meta = model_with_meta(model_or_path, device, caller)
    if isinstance(images, torch.Tensor):
        return model_or_path, _checked_batch(images, meta.preprocessing)
    if isinstance(images, (str, os.PathLike)):
        return model_or_path, Path(images)
    if isinstance(images, (list, tuple)):
        return model_or_path, [_as_path(image, caller) for image in images]
    raise UsageError(f"{caller} cannot read images from a {type(images).__name__}",
                     hint="pass image files, folders, or a uint8 tensor")

def _as_path(value: Any, caller: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{caller} expected a path, got {type(value).__name__}")
    return Path(value)


def _checked_batch(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Tensors skip decoding, so check here what decoding would have guaranteed."""
    import torch

    expected = (preprocessing.channels, *preprocessing.image_size)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dtype != torch.uint8:
        raise UsageError(f"cnnctl.predict expects uint8 pixel values (0-255), got a {images.dtype} tensor",
                         hint="pass the raw image, not a normalised one")
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        wanted = "x".join(str(n) for n in expected)
        raise UsageError(f"cnnctl.predict expects images of shape N x {wanted}, got {tuple(images.shape)}",
                         hint="pass image files to have them converted and resized")
    return images


def evaluate(checkpoint_path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """``cnnctl eval``: the numbers ``eval --json`` prints, as a dict — ``loss``, ``accuracy``, ``top5``,
    ``per_class``, ``macro_*``, ``confusion`` and ``calibration`` (``ece``, ``mce``, the reliability bins).

    Every option of ``cnnctl eval`` under its name, with the same default (cnnctl/recipe/commands.py).
    ``report="DIR"`` also writes DIR/index.html and DIR/report.json and adds ``top_losses`` and
    ``confused_pairs``; ``label_issues=True`` adds the images whose label looks wrong (cleanlab), ranked.
    ``tta``: none, flip, crop or flip-crop (as ``eval --tta``); ``plots="DIR"``: confusion.png and
    predictions.png in DIR (as ``eval --plots``). A multi-label checkpoint gives ``map``, ``subset_accuracy``,
    ``micro_f1``, ``macro_f1`` and per-label numbers instead, at its thresholds or at ``thresholds`` ("0.4": one
    for every label, or one per label, comma-separated)."""
    values = api_values(EVAL, options, "cnnctl.evaluate")
    return evaluate_and_report(_as_path(checkpoint_path, "cnnctl.evaluate"), dataset=values["dataset"],
                               split=values["split"], batch_size=values["batch_size"], root=values["root"],
                               mirror=values["mirror"], device=values["device"], data_dir=values["data"],
                               report_dir=None if values["report"] is None else Path(values["report"]),
                               label_issues=values["label_issues"], top_losses=values["top_losses"],
                               tta=values["tta"], plots_dir=None if values["plots"] is None else Path(values["plots"]),
                               thresholds=values["thresholds"], label_count=values["label_count"])


evaluate.__signature__ = api_signature(EVAL, [  # type: ignore[attr-defined]
    inspect.Parameter("checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD)], "dict[str, Any]")


def explain(model_or_path: Any, images: Any, *, method: str = "gradcam", layer: str | None = None,
            target: int | str | None = None, output: str | os.PathLike[str] | None = None, topk: int = 5,
            device: str = "cpu") -> list[Any]:
    """``cnnctl explain``: where the model finds its evidence, per image — files, folders, or a uint8 tensor at
    the checkpoint's image size, with a model from ``load`` or a checkpoint path.

    ``method`` is ``gradcam``, ``gradcam++`` or ``integrated-gradients`` (Captum); ``layer`` names the module
    Grad-CAM looks at (default: the last convolutional block); ``target`` a class (default: the prediction).
    Returns one ``Explanation`` per image: ``.heatmap`` (H×W in [0, 1]), ``.target_name``, ``.topk``,
    ``.layer``, and ``.output``, the PNG written into the ``output`` folder when one is given."""

    model_or_path, images = _model_and_images(model_or_path, images, device, "cnnctl.explain")
    return _explain(model_or_path, images, method=method, layer=layer, target=target,
                    output=None if output is None else Path(output), topk=topk, device=device)


def embed(checkpoint_or_arch: Any, images: Any, *, pretrained: str | None = None, device: str = "cpu",
          batch_size: int = 64, output: str | os.PathLike[str] | None = None, offline: bool = False) -> Any:
    """``cnnctl embed``: the L2-normalised penultimate features of ``images`` (files, a folder of images, or a
    folder of class folders) under a checkpoint / run folder, or an architecture with ``pretrained`` weights
    (``imagenet``, a weights name, a file). Returns ``Embeddings``: ``.features`` (N×D float32 NumPy array, unit
    rows), ``.paths`` (their order), ``.labels`` and ``.classes`` (class folders; None otherwise). ``output``
    also writes them (.npz or .parquet)."""
    if output is not None:
        check_output(os.fspath(output))
    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    backbone = open_backbone(os.fspath(checkpoint_or_arch), pretrained, device=device, offline=offline)
    result = _embed(backbone, paths, batch_size=batch_size)
    if output is not None:
        write_embeddings(result, os.fspath(output), backbone=backbone)
    return result
