"""Batches from in-memory uint8 tensors: index, convert, augment and normalise with tensor ops on the device.

This is the fast path: no per-sample Python, no PIL, no worker processes. A whole MNIST epoch costs a few
hundred tensor operations on top of the model's own work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cnnctl.data.images import resize_and_crop, to_grey

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import ImageTensors, Preprocessing

# The default --batch-size: 128, unless the training set is so small that an epoch would have fewer than
# MIN_STEPS_PER_EPOCH optimizer steps; then the largest power of two (at least MIN_DEFAULT_BATCH) that gives it
# that many. 720 images at 128 are 6 steps an epoch, 30 in a 5-epoch run: too few for the weights to converge
# and for BatchNorm's running statistics to follow them (mobilenet_v3_small: 25% test accuracy, chance; 97% at
# 32). See benchmarks/smalldata.py.
MAX_DEFAULT_BATCH = 128
MIN_DEFAULT_BATCH = 16
MIN_STEPS_PER_EPOCH = 32


def default_batch_size(train_images: int) -> int:
    """128 for 4,096 training images or more; 64, 32 down to 16 for smaller sets (at least 32 steps an epoch)."""
    batch = MAX_DEFAULT_BATCH
    while batch > MIN_DEFAULT_BATCH and train_images < batch * MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch



def fit_to_input(images: torch.Tensor, preprocessing: Preprocessing, *, crop: bool = True) -> torch.Tensor:
    """Resize (if the stored size differs) and zero-pad uint8 images to the model's input size, once per dataset.

    ``crop=False`` keeps images stored larger than the crop (pretrained preprocessing caches them at the resize
    size) for an augmentation that crops them itself (``resized-crop-flip``)."""
    import torch.nn.functional as F

    # images stored at the crop size were resized and centre-cropped when decoded (eval's folder splits): resizing
    # their shorter side again would zoom in by resize/crop
    done = preprocessing.resize is not None and tuple(images.shape[-2:]) == tuple(preprocessing.image_size)
    if (crop or preprocessing.resize is None) and not done:
        images = resize_and_crop(images, preprocessing.image_size, preprocessing.resize, preprocessing.interpolation)
    if images.shape[1] != preprocessing.channels:
        images = convert_channels(images, preprocessing.channels)
    if preprocessing.pad:
        pad = preprocessing.pad
        images = F.pad(images, (pad, pad, pad, pad), value=0)
    return images.contiguous()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 N×C×H×W to ``channels`` (1 or 3): grey as image files become grey (data/images.py), repetition for
    colour."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return to_grey(images[:, :3])
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    return images[:, :channels]


class Normalizer:
    """uint8 → float, scaled to [0, 1] then standardised, in one fused multiply-add per batch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 dtype: torch.dtype | None = None):
        import torch

        dtype = dtype or torch.float32
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(dtype)
        self.shift = (-mean_t / std_t).to(dtype)
        self.dtype = dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.addcmul(self.shift, images.to(self.dtype), self.scale)


class BatchLoader:
    """Iterate over (inputs, labels) batches of an in-memory split, shuffled with its own generator.

    Images are moved to ``device`` once as uint8 (CIFAR-10 is 150 MB, MNIST 47 MB) and fitted to the model's
    input size once; each batch is then only an index, a cast, an optional augmentation and a normalisation.

    A split with per-image loss weights (a label file's ``weight`` column) leaves the current batch's weights in
    ``batch_weights`` while that batch is in use (None without weights). A streamed image that cannot be read
    in an epoch is left out of its batch and counted in ``skipped``.
    """

    def __init__(
        self,
        data: ImageTensors,
        preprocessing: Preprocessing,
        *,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        channels_last: bool = False,
        drop_last: bool = False,
        sample_weights: torch.Tensor | None = None,
        mix: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        import torch

        self.device = device
        # an augmentation that crops (random resized crop) takes the images as stored, larger than the input
        self.crop = not getattr(augment, "crops_to_size", False)
        self.preprocessing = preprocessing
        # a folder too large for memory (data/stream.py): each batch decoded by worker processes, then fitted
        self.stream = data if getattr(data, "streamed", False) else None
        self.images = None if self.stream is not None else fit_to_input(data.images, preprocessing,
                                                                         crop=self.crop).to(device)
        self.labels = data.labels.to(device)
        weights = getattr(data, "weights", None)
        self.weights = None if weights is None else weights.to(device)
        self.batch_weights: torch.Tensor | None = None
        self.skipped = 0  # streamed images that could not be read, left out of their batch
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.mix = mix  # mixup/cutmix (data/mixing.py): labels become soft targets
        self.normalize = Normalizer(preprocessing.mean, preprocessing.std, device)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        # --sampler balanced: each epoch draws len(data) images with replacement, image i with probability
        # proportional to sample_weights[i] (engine/imbalance.py: 1 / images of its class)
        self.sample_weights = None if sample_weights is None else sample_weights.to("cpu", torch.float64)
        self.shard: tuple[int, int] = (0, 1)  # (rank, world size); batch_size is then the per-rank batch
        self.last_index: torch.Tensor | None = None  # the split's indices of the batch last yielded

    def __len__(self) -> int:
        count = self._indices_count()
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def _indices_count(self) -> int:
        rank, world = self.shard
        total = int(self.labels.shape[0])
        return total // world if world > 1 else total

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's order (this rank's part of it in distributed training, see :func:`shard_order`)."""
        import torch

        total = int(self.labels.shape[0])
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, total, replacement=True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(total, generator=self.generator)
        else:
            order = torch.arange(total)
        rank, world = self.shard
        if world > 1:
            order = shard_order(order, rank, world, self.batch_size)
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        order = self.epoch_indices()
        count = int(order.shape[0])
        stop = count - count % self.batch_size if self.drop_last else count
        streamed = None
        if self.stream is not None:
            streamed = self.stream.batches([order[start:start + self.batch_size].tolist()
                                            for start in range(0, stop, self.batch_size)])
        order = order.to(self.device)
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            if streamed is None:
                images = self.images.index_select(0, index)
            else:  # the same pixels the in-memory path would index, decoded now
                decoded, kept = next(streamed)
                if kept is not None:  # unreadable images this epoch: left out of the batch, counted
                    self.skipped += int(index.shape[0]) - int(kept.sum())
                    index = index[kept.to(self.device)]
                    if decoded is None:
                        continue
                images = fit_to_input(decoded, self.preprocessing, crop=self.crop).to(self.device)
            self.batch_weights = None if self.weights is None else self.weights.index_select(0, index)
            if self.augment is not None:
                images = self.augment(images, self.generator)
            inputs, labels = self.normalize(images), self.labels.index_select(0, index)
            if self.mix is not None:
                inputs, labels = self.mix(inputs, labels, self.generator)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            self.last_index = index
            yield inputs, labels


def shard_order(order: torch.Tensor, rank: int, world: int, batch_size: int) -> torch.Tensor:
    """Rank ``rank``'s part of an epoch's ``order`` when ``world`` ranks each train on ``batch_size`` per step.

    Global step k's batch is ``order[k·B:(k+1)·B]`` (B = world × batch_size), exactly a single process's batch
    with ``--batch-size B``; rank r trains on its r-th consecutive part. The last, partial global batch is split
    evenly too. The ``len(order) % world`` images at the end are left out of this epoch (a different few each
    epoch), so every rank runs the same number of equal-sized steps and draws the same random numbers.
    """
    import torch

    usable = int(order.shape[0]) - int(order.shape[0]) % world
    full = usable - usable % (batch_size * world)
    whole_batches = order[:full].view(-1, world, batch_size)[:, rank].reshape(-1)
    last_batch = order[full:usable].view(world, -1)[rank]
    return torch.cat([whole_batches, last_batch])
