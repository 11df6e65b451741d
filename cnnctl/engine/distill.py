"""Knowledge distillation (``--teacher CKPT``): the student's training loss mixes the labels with the teacher's
softened outputs (Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network")::

    loss = (1 - w) · CE(student, labels) + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

``w`` is ``--distill-weight``, ``T`` ``--distill-temperature``; T² keeps the soft term's gradients on the scale of
the hard term's as T changes. The hard term is the trainer's own loss (class weights, label smoothing, mixup's
soft labels included).

Where the teacher's outputs come from. When the training batches are the stored images themselves (in memory,
no augmentation, no mixup/cutmix), the teacher sees each training image once, before the first epoch, and its
logits are kept (N × classes floats: 2 MB for MNIST) and looked up by the batch's indices. When the images are
augmented (the default for most datasets) or mixed, the teacher runs on each batch as the student sees it: a
cached output of the un-augmented image would teach the student the teacher's answer for a picture it is not
looking at (a crop that cut the digit's stroke, a mirror image), and the point of distillation is that the
student matches the teacher on the same input. The cost is one teacher forward pass per step (no backward).

The teacher's preprocessing may differ from the student's (LeNet-5 pads 28×28 digits to 32×32, a ResNet takes
them as they are): the student's normalised batch is turned back into pixels, un-padded, resized, converted
to the teacher's channels, padded and normalised as the teacher's checkpoint says.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.errors import CheckpointError, CnnctlError, UsageError
from cnnctl.recipe.options import label

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import Preprocessing

CACHE_BATCH = 1000  # images per teacher forward pass when its outputs are cached


def check_distill_config(config: Any) -> None:
    """What --teacher refuses, before any work: a teacher that is not a readable checkpoint, a linear probe."""
    if not config.teacher:
        return
    if config.linear_probe:
        raise UsageError(f"{label('teacher')} trains the whole student; {label('linear_probe')} fits only a "
                         "classifier on fixed features", hint="leave one of them out")
    try:
        checkpoint.read_meta(config.teacher)  # one line naming the file and what is wrong with it
    except CnnctlError as error:
        raise CheckpointError(f"{label('teacher')}: {error.message}",
                              hint="pass the teacher's run folder (runs/ARCH-DATA/N) or its best.safetensors"
                              ) from None


def check_classes(teacher_classes: list[str], student_classes: list[str], source: str) -> None:
    if list(teacher_classes) == list(student_classes):
        return
    if sorted(teacher_classes) == sorted(student_classes):
        problem = "the same classes in another order"
    else:
        missing = [name for name in student_classes if name not in teacher_classes]
        extra = [name for name in teacher_classes if name not in student_classes]
        parts = ([f"lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"adds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        problem = " and ".join(parts)
    raise UsageError(f"{label('teacher')} {source} predicts {len(teacher_classes)} classes but this run trains "
                     f"{len(student_classes)}: {problem}", hint="distil from a teacher trained on the same classes")


class Distillation:
    """The teacher, how its inputs are made from the student's, and the mixed loss."""

    def __init__(self, teacher: torch.nn.Module, meta: Any, source: Path, student: Preprocessing, *,
                 temperature: float, weight: float, device: torch.device):
        self.teacher = teacher.to(device).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.meta, self.source = meta, source
        self.student, self.teacher_prep = student, meta.preprocessing
        self.temperature, self.weight, self.device = float(temperature), float(weight), device
        self.cache: torch.Tensor | None = None  # teacher logits of every training image, by index
        self.mode = "per batch"
        self.sha256 = file_sha256(source)  # the checkpoints name the teacher's exact file

    @classmethod
    def open(cls, config: Any, data: Any, device: torch.device, log: Any) -> Distillation | None:
        """The teacher of ``config.teacher`` on ``device``, checked against the run's classes; None without one."""
        if not config.teacher:
            return None
        source = checkpoint.existing_checkpoint(config.teacher)
        teacher, meta = checkpoint.load(source, device=device)
        check_classes(meta.classes, list(data.classes), str(source))
        distillation = cls(teacher, meta, source, data.preprocessing, temperature=config.distill_temperature,
                           weight=config.distill_weight, device=device)
        log(f"distilling from {meta.arch} ({source}): weight {distillation.weight:g} on its outputs softened at "
            f"temperature {distillation.temperature:g}")
        return distillation

    @classmethod
    def start(cls, config: Any, data: Any, device: torch.device, batches: Any, log: Any) -> Distillation | None:
        """:meth:`open`, then :meth:`prepare` the teacher's outputs for ``batches``."""
        distillation = cls.open(config, data, device, log)
        if distillation is not None:
            distillation.prepare(batches, log)
        return distillation

    # ------------------------------------------------------------------------------------- teacher outputs
    def same_preprocessing(self) -> bool:
        s, t = self.student, self.teacher_prep
        return (s.channels, tuple(s.image_size), s.pad, tuple(s.mean), tuple(s.std)) == \
            (t.channels, tuple(t.image_size), t.pad, tuple(t.mean), tuple(t.std))

    def teacher_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch as the teacher's preprocessing would have made it."""
        import torch
        import torch.nn.functional as F

        if self.same_preprocessing():
            return inputs
        s, t = self.student, self.teacher_prep
        shape = (1, -1, 1, 1)
        pixels = inputs.float() * torch.tensor(s.std, device=inputs.device).view(shape) + \
            torch.tensor(s.mean, device=inputs.device).view(shape)
        if s.pad:
            pixels = pixels[..., s.pad:-s.pad, s.pad:-s.pad]
        if tuple(pixels.shape[-2:]) != tuple(t.image_size):
            pixels = F.interpolate(pixels, size=tuple(t.image_size), mode="bilinear", antialias=True,
                                   align_corners=False)
        if pixels.shape[1] != t.channels:
            if t.channels == 3:
                pixels = pixels.expand(-1, 3, -1, -1)
            else:  # colour to grey with the ITU-R 601 weights images are converted with
                weights = torch.tensor([0.299, 0.587, 0.114], device=pixels.device).view(1, 3, 1, 1)
                pixels = (pixels[:, :3] * weights).sum(dim=1, keepdim=True)
        if t.pad:
            pixels = F.pad(pixels, (t.pad, t.pad, t.pad, t.pad), value=0.0)
        return (pixels - torch.tensor(t.mean, device=pixels.device).view(shape)) / \
            torch.tensor(t.std, device=pixels.device).view(shape)

    def teacher_logits(self, inputs: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits for this batch: looked up when cached (``indices`` into the training split),
        else computed now."""
        import torch

        if self.cache is not None and indices is not None:
            return self.cache.index_select(0, indices.to(self.cache.device))
        with torch.no_grad():
            return self.teacher(self.teacher_inputs(inputs)).float()

    def prepare(self, batches: Any, log: Any) -> None:
        """Cache the teacher's outputs when ``batches`` (the training BatchLoader) gives the stored images as they
        are; otherwise say that they are computed per batch, and why."""
        import torch

        reason = None
        if getattr(batches, "images", None) is None:
            reason = "the training images stream from disk"
        elif batches.augment is not None:
            reason = "the training images are augmented: the teacher sees each batch as the student does"
        elif batches.mix is not None:
            reason = "mixup/cutmix blend the training images: the teacher sees each blend"
        if reason is not None:
            self.mode = "per batch"
            log(f"teacher outputs: computed per batch ({reason})")
            return
        started = time.perf_counter()
        outputs = []
        with torch.no_grad():
            for start in range(0, batches.images.shape[0], CACHE_BATCH):
                inputs = batches.normalize(batches.images[start:start + CACHE_BATCH])
                outputs.append(self.teacher(self.teacher_inputs(inputs)).float())
        self.cache = torch.cat(outputs)
        self.mode = "cached"
        log(f"teacher outputs: cached for {self.cache.shape[0]:,} un-augmented training images in "
            f"{time.perf_counter() - started:.1f}s")

    # ------------------------------------------------------------------------------------- the loss
    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        """(1 - w) · hard + w · T² · KL(teacher_T ‖ student_T), the KL averaged over the batch."""
        import torch.nn.functional as F

        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.weight) * hard + self.weight * soft

    def record(self) -> dict[str, Any]:
        """What the student's checkpoints say about their teacher."""
        metrics = self.meta.metrics or {}
        return {"teacher": str(self.source.resolve()), "teacher_arch": self.meta.arch,
                "teacher_sha256": self.sha256, "teacher_val_acc": metrics.get("val_acc"),
                "temperature": self.temperature, "weight": self.weight, "teacher_outputs": self.mode}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
