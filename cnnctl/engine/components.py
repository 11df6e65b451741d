"""What a training run is built from before its first step: the model and the batch loaders, and the errors the
loop raises when a step fails (a loss that is no longer finite, out of memory)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.errors import CnnctlError, UsageError

if TYPE_CHECKING:
    import torch

    from cnnctl.config import TrainConfig
    from cnnctl.data.base import ImageTensors
    from cnnctl.data.splits import PreparedData
    from cnnctl.engine.distributed import DistContext
    from cnnctl.registry import ModelSpec


def build_model(config: TrainConfig, spec: ModelSpec, data: PreparedData, device: torch.device,
                log: Any) -> torch.nn.Module:
    """The architecture for the data's classes and channels, on ``device``, with --pretrained weights and in
    channels-last memory when that is faster (models without BatchNorm, unless --channels-last says)."""
    import torch

    from cnnctl.models import build_model as build_architecture

    model = build_architecture(config.arch, num_classes=len(data.classes), in_channels=data.preprocessing.channels,
                               **config.arch_args).to(device)
    if config.pretrained:
        from cnnctl.models.pretrained import load_pretrained

        load_pretrained(model, spec, config.pretrained, log=log, config=config)
    if config.channels_last is None:
        config.channels_last = not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loaders(config: TrainConfig, data: PreparedData, device: torch.device, dist: DistContext,
                  per_rank_batch: int) -> tuple[Any, Any]:
    """Training batches (shuffled, augmented; each rank its shard of every global batch) and, on rank 0 alone,
    validation batches (only rank 0 validates)."""
    from cnnctl.data.augment import AugmentSettings, make_augmentation
    from cnnctl.data.loader import BatchLoader
    from cnnctl.data.mixing import make_mixing
    from cnnctl.registry import get_dataset_spec

    augment_name = config.augment or get_dataset_spec(data.dataset_label).augment  # the dataset's default
    settings = AugmentSettings(channels=data.preprocessing.channels,
                               randaugment_magnitude=config.randaugment_magnitude)
    augment = make_augmentation(augment_name, data.preprocessing.image_size, settings,
                                random_erasing=config.random_erasing)
    mix = make_mixing(config.mixup, config.cutmix, len(data.classes))

    def loader(split: ImageTensors, shuffle: bool) -> BatchLoader:
        return BatchLoader(split, data.preprocessing, batch_size=config.batch_size, device=device, shuffle=shuffle,
                           seed=config.seed, augment=augment if shuffle else None,
                           channels_last=config.channels_last, mix=mix if shuffle else None)

    train = loader(data.train, True)
    from cnnctl.engine.imbalance import sampler_weights

    train.sample_weights = sampler_weights(config.sampler, data)  # --sampler balanced
    if dist.enabled and len(data.train) < dist.world_size:
        raise UsageError(f"{len(data.train)} training image(s) cannot be shared by {dist.world_size} processes",
                         hint="use fewer processes or more data")
    if dist.enabled:  # each rank trains on its part of every global batch (data/loader.py shard_order)
        train.batch_size, train.shard = per_rank_batch, (dist.rank, dist.world_size)
    validate_here = data.val is not None and dist.is_main
    return train, (loader(data.val, False) if validate_here else None)


def validation_metrics(trainer: Any) -> dict[str, float]:
    """Validation loss and accuracy. With several processes rank 0 evaluates the whole split and broadcasts
    the numbers: simpler than sharding the split and reducing sums (no uneven shards to pad), exactly the
    numbers a single process computes, and validation is a small part of an epoch's time."""
    if trainer.data.val is None:
        return {}
    from cnnctl.engine.distributed import broadcast_object
    from cnnctl.engine.evaluate import evaluate

    row = {}
    if trainer.val_batches is not None:
        trainer.reporter.phase("validating")
        val = evaluate(trainer.eval_model(), trainer.val_batches, len(trainer.data.classes),
                       autocast=trainer.precision.autocast())
        row = {"val_loss": val.loss, "val_acc": val.top1, "val_balanced_acc": val.balanced_accuracy,
               "val_macro_f1": val.macro_f1}
    return broadcast_object(row, trainer.dist)


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
