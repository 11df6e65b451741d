"""What a training run is built from before its first step: the model and the batch loaders, and the errors the
loop raises when a step fails (a loss that is no longer finite, out of memory)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.augment import AugmentSettings, make_augmentation
from cnnctl.data.loader import BatchLoader
from cnnctl.data.mixing import make_mixing
from cnnctl.data.targets import MULTILABEL
from cnnctl.engine.distributed import broadcast_object
from cnnctl.engine.evaluate import evaluate
from cnnctl.engine.imbalance import sampler_weights
from cnnctl.engine.multilabel import evaluate_multilabel, initialise_output_bias, metric_row, multilabel_loss
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.fsutil import atomic_write_text
from cnnctl.models import build_model as build_architecture
from cnnctl.models.pretrained import initialise_new_head, load_pretrained
from cnnctl.registry import get_dataset_spec

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import ImageTensors
    from cnnctl.data.splits import PreparedData
    from cnnctl.engine.distributed import DistContext
    from cnnctl.models.pretrained import PretrainedReport
    from cnnctl.recipe.config import TrainConfig
    from cnnctl.registry import ModelSpec


def build_model(config: TrainConfig, spec: ModelSpec, data: PreparedData, device: torch.device,
                log: Any) -> tuple[torch.nn.Module, PretrainedReport | None]:
    """The architecture for the data's classes and channels, on ``device``, with --pretrained weights (and
    what was loaded, for the checkpoints' metadata) and in channels-last memory when that is faster (measured
    on a CPU, see :func:`choose_channels_last`; unless --channels-last / --no-channels-last says)."""
    import torch

    model = build_architecture(config.arch, num_classes=len(data.classes), in_channels=data.preprocessing.channels,
                               **config.arch_args).to(device)
    report = None
    if config.pretrained:
        report = load_pretrained(model, spec, config.pretrained, log=log, config=config)
        initialise_new_head(model, report.reinitialised, config.head_init or "random", log)
    if getattr(config, "task", None) == MULTILABEL and not config.pretrained:  # pretrained: --head-init says
        initialise_output_bias(model, data.train.labels)
    if config.channels_last is None:
        config.channels_last = choose_channels_last(model, data.preprocessing.input_shape, config.batch_size or 1,
                                                    device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, report


# The memory format measured, not assumed: on one CPU (AMD EPYC) LeNet-5 + BatchNorm trained 2.5x slower in
# channels-last, on another (Intel Xeon with AVX-512) it trained 1.8x faster, and smallvgg 1.3x faster
# (benchmarks/cpu_formats.py). So on a CPU a few training steps of the actual model and batch shape are timed each
# way, once per machine, model and shape, and the answer is kept in the cache file.
PROBE_STEPS = 1  # timed steps per format per turn, after one untimed step (oneDNN builds its kernels)
PROBE_TURNS = 2  # contiguous, channels-last, contiguous, channels-last: the best of each
PROBE_MAX_BATCH = 64  # a larger batch is probed at this size: the formats' ratio, at a quarter of resnet18's cost
PROBE_MARGIN = 1.05  # channels-last must be this much faster to be chosen over the rule's answer
FORMAT_CACHE = "memory-format.json"


def format_cache_path() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cnnctl" / FORMAT_CACHE


def choose_channels_last(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int,
                         device: torch.device) -> bool:
    """Channels-last where it trains faster. Without a measurement (a GPU, several processes, a probe that
    fails): for networks without BatchNorm only. On a CPU: a probe of a few training steps each way, cached
    (the file says what was measured: ``speedup`` is channels-last's speed over contiguous)."""
    import os

    import torch

    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    rule = not has_batch_norm
    if device.type != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return rule
    key = _probe_key(model, input_shape, batch)
    cache = format_cache_path()
    known = _read_cache(cache)
    if key in known:
        return bool(known[key]["channels_last"])
    try:
        contiguous, channels_last = _probe(model, input_shape, batch)
    except (RuntimeError, ValueError, TypeError):  # an architecture the probe cannot step: keep the rule
        return rule
    speedup = contiguous / channels_last
    chosen = speedup > PROBE_MARGIN or (rule and speedup > 1 / PROBE_MARGIN)
    known[key] = {"channels_last": chosen, "speedup": round(speedup, 3)}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(known, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home: probe again next time
    return chosen


def _probe_key(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int) -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    layers = sum(1 for _ in model.modules())
    parameters = sum(p.numel() for p in model.parameters())
    shape = "x".join(str(n) for n in input_shape)
    return (f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads | {type(model).__name__} "
            f"{layers} layers {parameters} parameters | batch {batch} of {shape}")


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _probe(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int) -> tuple[float, float]:
    """Best seconds of PROBE_STEPS training steps (forward, backward) contiguous and channels-last, on copies of
    ``model`` (its weights and BatchNorm statistics stay as they are) and without touching torch's random state."""
    import copy
    import time

    import torch

    def step(probe: torch.nn.Module, inputs: torch.Tensor) -> None:
        output = probe(inputs)
        logits = output[0] if isinstance(output, (tuple, list)) else getattr(output, "logits", output)
        logits.float().logsumexp(1).mean().backward()
        probe.zero_grad(set_to_none=True)

    generator = torch.Generator().manual_seed(0)
    best = {False: float("inf"), True: float("inf")}
    with torch.random.fork_rng(devices=[]):  # dropout in the copies draws from torch's generator: put it back
        runners = {}
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            inputs = torch.randn(min(batch, PROBE_MAX_BATCH), *input_shape, generator=generator)
            runners[channels_last] = (copy.deepcopy(model).to(memory_format=fmt).train(),
                                      inputs.contiguous(memory_format=fmt))
            step(*runners[channels_last])  # oneDNN builds its kernels for this shape
        for _ in range(PROBE_TURNS):
            for channels_last, (probe, inputs) in runners.items():
                started = time.perf_counter()
                for _ in range(PROBE_STEPS):
                    step(probe, inputs)
                best[channels_last] = min(best[channels_last], time.perf_counter() - started)
    return best[False], best[True]


def build_loaders(config: TrainConfig, data: PreparedData, device: torch.device, dist: DistContext,
                  per_rank_batch: int) -> tuple[Any, Any]:
    """Training batches (shuffled, augmented; each rank its shard of every global batch) and, on rank 0 alone,
    validation batches (only rank 0 validates)."""
    augment_name = config.augment or get_dataset_spec(data.dataset_label).augment  # the dataset's default
    settings = AugmentSettings(channels=data.preprocessing.channels,
                               randaugment_magnitude=config.randaugment_magnitude,
                               crop_scale=config.crop_scale or AugmentSettings.crop_scale)
    augment = make_augmentation(augment_name, data.preprocessing.image_size, settings,
                                random_erasing=config.random_erasing)
    mix = make_mixing(config.mixup, config.cutmix, len(data.classes))

    def loader(split: ImageTensors, shuffle: bool) -> BatchLoader:
        return BatchLoader(split, data.preprocessing, batch_size=config.batch_size, device=device, shuffle=shuffle,
                           seed=config.seed, augment=augment if shuffle else None,
                           channels_last=config.channels_last, mix=mix if shuffle else None)

    train = loader(data.train, True)
    train.sample_weights = sampler_weights(config.sampler, data)  # --sampler balanced
    if dist.enabled and len(data.train) < dist.world_size:
        raise UsageError(f"{len(data.train)} training image(s) cannot be shared by {dist.world_size} processes",
                         hint="use fewer processes or more data")
    if dist.enabled:  # each rank trains on its part of every global batch (data/loader.py shard_order)
        train.batch_size, train.shard = per_rank_batch, (dist.rank, dist.world_size)
    validate_here = data.val is not None and dist.is_main
    return train, (loader(data.val, False) if validate_here else None)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None,
                  smoothing: float | None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Training's cross-entropy (``Trainer.loss``); with per-image ``weights`` (a label file's ``weight``
    column) the weighted mean ``Σ wᵢ·lossᵢ / Σ wᵢ``, the class weight of each image's label times its own, as
    torch weighs by class weights alone."""
    import torch.nn.functional as F

    if weights is None:
        return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=smoothing or 0.0)
    per_image = F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=smoothing or 0.0,
                                reduction="none")
    if class_weights is not None and labels.dim() == 1:
        weights = weights * class_weights[labels]
    return (per_image * weights).sum() / weights.sum().clamp_min(1e-12)


def training_loss(logits: torch.Tensor, labels: torch.Tensor, task: str, class_weights: torch.Tensor | None,
                  smoothing: float | None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Trainer.loss`` without the teacher: :func:`cross_entropy`, or for a multi-label run binary cross-entropy
    per label (``class_weights`` then weighting each label's positives; engine/multilabel.py)."""
    if task == MULTILABEL:
        return multilabel_loss(logits, labels, class_weights, smoothing or 0.0, weights)
    return cross_entropy(logits, labels, class_weights, smoothing, weights)


def report_skipped(trainer: Any, epoch: int, count: int) -> None:
    """Say how many streamed training images could not be read in ``epoch`` (left out of their batches)."""
    if count:
        trainer.reporter.message(f"epoch {epoch}: skipped {count} training image(s) that could not be read while "
                                 "streaming")


def validation_metrics(trainer: Any) -> dict[str, float]:
    """Validation loss and accuracy. With several processes rank 0 evaluates the whole split and broadcasts
    the numbers: simpler than sharding the split and reducing sums (no uneven shards to pad), exactly the
    numbers a single process computes, and validation is a small part of an epoch's time."""
    if trainer.data.val is None:
        return {}
    row: dict[str, float] = {}
    if trainer.val_batches is not None and trainer.task == MULTILABEL:  # thresholds chosen here, for the checkpoint
        trainer.reporter.phase("validating")
        val = evaluate_multilabel(trainer.eval_model(), trainer.val_batches, len(trainer.data.classes), tune=True,
                                  autocast=trainer.precision.autocast(), label_count=trainer.label_count)
        row, trainer.thresholds = metric_row(val, "val"), val.thresholds
    elif trainer.val_batches is not None:
        trainer.reporter.phase("validating")
        val = evaluate(trainer.eval_model(), trainer.val_batches, len(trainer.data.classes),
                       autocast=trainer.precision.autocast())
        row = {"val_loss": val.loss, "val_acc": val.top1, "val_balanced_acc": val.balanced_accuracy,
               "val_macro_f1": val.macro_f1}
    row, thresholds = broadcast_object((row, trainer.thresholds), trainer.dist)
    trainer.thresholds = thresholds
    return row


def check_finite(trainer: Any, first_bad: torch.Tensor, epoch: int, steps: int) -> None:
    """Stop with one line at the first batch whose loss was not finite (``first_bad`` ≥ 0)."""
    bad = int(first_bad)
    if bad >= 0:
        kept = trainer.history[-1]["epoch"] if trainer.folder.state.is_file() and trainer.history else None
        raise diverged_error(epoch, bad + 1, steps, kept, trainer.config.resolved_lr())


def diverged_error(epoch: int, batch: int, steps: int, kept_epoch: int | None, lr: float) -> CnnctlError:
    kept = (f"last.safetensors and the training state of epoch {kept_epoch} are kept" if kept_epoch
            else "nothing was saved")
    return CnnctlError(f"training diverged: the loss is not finite in epoch {epoch} at batch {batch} of {steps}; "
                       f"stopped, {kept}", hint=f"lower --lr (it was {lr:g}) or add --grad-clip 1.0")


def out_of_memory_error(config: TrainConfig, device: torch.device, epoch: int, batch: int,
                        steps: int) -> CnnctlError:
    smaller = max(1, config.batch_size // 2)
    amp = "" if config.amp else " or add --amp"
    return CnnctlError(f"out of memory on {device} in epoch {epoch} at batch {batch} of {steps} with "
                       f"--batch-size {config.batch_size}",
                       hint=f"try --batch-size {smaller}{amp}; the last finished epoch is saved")
