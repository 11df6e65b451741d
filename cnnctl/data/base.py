"""The in-memory form every dataset loads into, and the preprocessing a checkpoint carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class ImageTensors:
    """A split held in memory: ``images`` uint8 N×C×H×W, ``labels`` int64 N; ``paths`` names each image's file
    when the split was read from an image folder (so reports can say which file is meant)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str = ""
    paths: tuple[str, ...] | None = None
    split: str | None = None  # set where it may differ from the split asked for (a folder without test/)
    weights: torch.Tensor | None = None  # float N: each image's weight in the training loss (a label file's)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageTensors:
        paths = None if self.paths is None else tuple(self.paths[i] for i in indices.tolist())
        weights = None if self.weights is None else self.weights[indices]
        return ImageTensors(self.images[indices], self.labels[indices], self.classes, self.source, paths,
                            self.split, weights)


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes model input; stored in every checkpoint so eval/predict need no flags.

    An image is converted to ``channels``, resized to ``image_size`` (H, W) if it differs, zero-padded by
    ``pad`` pixels on each side, scaled to [0, 1] and normalised with ``mean``/``std``.

    With ``resize`` (pretrained weights' preprocessing, e.g. 256 → 224 for ResNet-50 V1) the image is instead
    resized so that its shorter side is ``resize`` pixels (aspect ratio kept) and centre-cropped to
    ``image_size``, as ``weights.transforms()`` does. ``interpolation`` is the resize filter (torchvision's
    ``InterpolationMode`` value; always antialiased). Checkpoints without these fields load with the defaults.
    """

    channels: int
    image_size: tuple[int, int]
    pad: int = 0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    extra: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None
    interpolation: str = "bilinear"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size[0] + 2 * self.pad, self.image_size[1] + 2 * self.pad)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            channels=int(data["channels"]),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            pad=int(data.get("pad", 0)),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            extra=dict(data.get("extra", {})),
            resize=int(data["resize"]) if data.get("resize") is not None else None,
            interpolation=str(data.get("interpolation") or "bilinear"),
        )
