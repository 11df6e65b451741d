"""CIFAR-10 and CIFAR-100: the official python tarballs, read with an unpickler that can only build numpy arrays.

Each tarball is extracted once (safely) beside itself; a batch file is a pickled dict holding ``data`` (N×3072
uint8, rows of R, G, B planes of 32×32) and the labels. Pickles can run arbitrary code, so the batches are read
with :class:`BatchUnpickler`, which resolves only the three numpy globals an array needs and refuses anything
else before it is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.archive import extract_once
from cnnctl.data.base import ImageTensors
from cnnctl.data.download import RemoteFile
from cnnctl.errors import DataError, first_line
from cnnctl.registry import DatasetSpec, register_dataset

if TYPE_CHECKING:
    from cnnctl.data.base import ImageTensors

EXTRACTED = "extracted"
_IMAGE_BYTES = 3 * 32 * 32


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array refers to, under the module names old and new numpy write."""
    import numpy as np

    reconstruct = np.ndarray.__reduce__(np.zeros(0, dtype=np.uint8))[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """Unpickle a CIFAR batch: dicts, lists, strings, numbers and numpy arrays, nothing that could run code."""

    def __init__(self, data: bytes, source: str):
        # latin1 turns Python 2 byte strings (the official files were written by Python 2) into str losslessly;
        # numpy converts such a str back into the array's raw bytes.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(f"{self.source}: refusing to unpickle it: it references {module}.{name}, which a CIFAR "
                            "batch never does (it could run code)",
                            hint="the file is not an official CIFAR batch; delete it and download again")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing to unpickle it: it uses persistent ids, which a CIFAR batch never "
                        "does", hint="delete it and download again")


def read_batch(path: Path) -> dict[str, Any]:
    """One batch file as a dict with str keys; any problem is a ``DataError`` naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path} is missing", hint="delete the dataset folder and run `cnnctl download` again"
                        ) from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        batch = BatchUnpickler(raw, str(path)).load()
    except DataError:
        raise
    except MemoryError as error:
        raise DataError(f"{path} is corrupt (it asks for more memory than a CIFAR batch needs)") from error
    except Exception as error:  # noqa: BLE001 - unpickling corrupt bytes raises nearly anything
        raise DataError(f"{path} is corrupt or truncated ({first_line(error, 120)})",
                        hint="delete the dataset folder and run `cnnctl download` again") from error
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (it holds a {type(batch).__name__}, not a dict)")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in batch.items()}


def batch_arrays(path: Path, label_key: str, num_classes: int) -> tuple[Any, Any]:
    """Images (N×3×32×32 uint8) and labels (int64 N) of one batch file, checked for shape, type and range."""
    import numpy as np

    batch = read_batch(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} is not a CIFAR batch: it has no {'data' if 'data' not in batch else label_key!r} "
                        f"entry (keys: {', '.join(sorted(batch)) or 'none'})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: expected uint8 images of N×{_IMAGE_BYTES} bytes (3×32×32), found {dtype} {shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: the {label_key!r} entry is not a list of integers") from error
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path} holds {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise DataError(f"{path}: label {bad} out of range for {num_classes} classes")
    return data.reshape(-1, 3, 32, 32), labels


def _extractor(archive: str) -> Callable[..., Path]:
    """``prepare(directory)``: unpack the dataset's tarball into ``directory/extracted`` once; return that folder."""

    def prepare(directory: Path, log: Callable[[str], None] = lambda _: None) -> Path:
        return extract_once(directory / archive, directory / EXTRACTED, log=log)

    return prepare


def _cifar_loader(prepare: Callable[..., Path], folder: str, splits: dict[str, tuple[str, ...]], label_key: str,
                  classes: tuple[str, ...]) -> Callable[[Path, str], ImageTensors]:
    def load(directory: Path, split: str) -> ImageTensors:
        import numpy as np
        import torch

        root = prepare(directory) / folder
        parts = [batch_arrays(root / name, label_key, len(classes)) for name in splits[split]]
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels for _, labels in parts])
        return ImageTensors(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes,
                            source=str(root))

    return load


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
_CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"

_prepare_cifar10 = _extractor(_CIFAR10_ARCHIVE)
_prepare_cifar100 = _extractor(_CIFAR100_ARCHIVE)

_cifar10_loader = _cifar_loader(
    _prepare_cifar10, "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{index}" for index in range(1, 6)), "test": ("test_batch",)}, "labels",
    CIFAR10_CLASSES)

CIFAR10 = register_dataset(
    DatasetSpec(
        name="cifar10",
        description="32x32 colour photos, 10 classes (Krizhevsky)",
        classes=CIFAR10_CLASSES,
        image_shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        train_size=50_000,
        test_size=10_000,
        loader=_cifar10_loader,
        files=(RemoteFile(_CIFAR10_ARCHIVE, file_md5="c58f30108f718f92721af3b95e74349a", size=170_498_071),),
        mirrors=_CIFAR_MIRRORS,
        default_val_split=5000,
        augment="crop-flip",
        extra={"prepare": _prepare_cifar10},
    )
)

_CIFAR100_SPLITS = {"train": ("train",), "test": ("test",)}
_cifar100_loader = _cifar_loader(_prepare_cifar100, "cifar-100-python", _CIFAR100_SPLITS, "fine_labels",
                                 CIFAR100_CLASSES)
_CIFAR100_FILES = (RemoteFile(_CIFAR100_ARCHIVE, file_md5="eb9058c3a382ffc7106e4002c42a8d85", size=169_001_437),)

CIFAR100 = register_dataset(
    DatasetSpec(
        name="cifar100",
        description="32x32 colour photos, 100 classes (fine labels)",
        classes=CIFAR100_CLASSES,
        image_shape=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        train_size=50_000,
        test_size=10_000,
        loader=_cifar100_loader,
        files=_CIFAR100_FILES,
        mirrors=_CIFAR_MIRRORS,
        default_val_split=5000,
        augment="crop-flip",
        extra={"prepare": _prepare_cifar100},
    )
)

_cifar100_coarse_loader = _cifar_loader(_prepare_cifar100, "cifar-100-python", _CIFAR100_SPLITS, "coarse_labels",
                                        CIFAR100_COARSE_CLASSES)

CIFAR100_COARSE = register_dataset(
    DatasetSpec(
        name="cifar100-coarse",
        description="CIFAR-100 with its 20 superclass (coarse) labels",
        classes=CIFAR100_COARSE_CLASSES,
        image_shape=(3, 32, 32),
        mean=CIFAR100.mean,
        std=CIFAR100.std,
        train_size=50_000,
        test_size=10_000,
        loader=_cifar100_coarse_loader,
        files=_CIFAR100_FILES,
        mirrors=_CIFAR_MIRRORS,
        default_val_split=5000,
        augment="crop-flip",
        extra={"prepare": _prepare_cifar100},
        storage="cifar100",
    )
)
