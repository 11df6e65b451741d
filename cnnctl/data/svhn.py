"""SVHN (cropped digits): the official MATLAB ``.mat`` files, read with scipy (an optional extra).

Each file holds ``X`` (32×32×3×N uint8) and ``y`` (N×1, digits 1-9 and 10 for the digit 0). The label 10 becomes
0 so that class k is the digit k.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.base import ImageTensors
from cnnctl.data.download import RemoteFile
from cnnctl.errors import CnnctlError, DataError
from cnnctl.registry import DatasetSpec, register_dataset

if TYPE_CHECKING:
    from cnnctl.data.base import ImageTensors

_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise CnnctlError("reading SVHN's .mat files needs scipy, which is not installed",
                          hint="pip install 'cnnctl[svhn]' (or pip install scipy)") from error
    if not path.is_file():
        raise DataError(f"{path} is missing", hint="run `cnnctl download svhn`")
    try:
        return loadmat(str(path), variable_names=("X", "y"))
    except MemoryError as error:
        raise DataError(f"{path} is corrupt (it asks for more memory than SVHN needs)") from error
    except Exception as error:  # noqa: BLE001 - scipy raises ValueError, TypeError, OSError, ... on bad files
        message = " ".join(str(error).split())[:120] or type(error).__name__
        raise DataError(f"{path} is not a readable MATLAB file ({message})",
                        hint="delete it and run `cnnctl download svhn` again") from error


def load_mat(path: Path, classes: tuple[str, ...]) -> ImageTensors:
    """Images (N×3×32×32) and labels (0-9) of one SVHN .mat file, checked for shape and range."""
    import numpy as np
    import torch

    contents = _loadmat(path)
    if "X" not in contents or "y" not in contents:
        raise DataError(f"{path} is not an SVHN file: it has no {'X' if 'X' not in contents else 'y'} variable")
    images, labels = contents["X"], contents["y"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or \
            images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X as uint8 32×32×3×N, found {getattr(images, 'dtype', '?')} "
                        f"{getattr(images, 'shape', '?')}")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[3]:
        raise DataError(f"{path} holds {images.shape[3]} images but {labels.shape[0]} labels")
    if not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"{path}: labels are not numbers ({labels.dtype})")
    labels = labels.astype(np.int64)
    if labels.size and (int(labels.min()) < 1 or int(labels.max()) > 10):
        bad = int(labels.min()) if int(labels.min()) < 1 else int(labels.max())
        raise DataError(f"{path}: label {bad} out of range (SVHN labels are 1-10, 10 meaning the digit 0)")
    labels[labels == 10] = 0
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))
    return ImageTensors(tensor, torch.from_numpy(labels), classes, source=str(path))


def _svhn_loader(directory: Path, split: str) -> ImageTensors:
    return load_mat(directory / _FILES[split], SVHN_CLASSES)


SVHN_CLASSES = tuple(str(digit) for digit in range(10))

SVHN = register_dataset(
    DatasetSpec(
        name="svhn",
        description="Street View house-number digits, 32x32 (needs scipy)",
        classes=SVHN_CLASSES,
        image_shape=(3, 32, 32),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        train_size=73_257,
        test_size=26_032,
        loader=_svhn_loader,
        files=(
            RemoteFile("train_32x32.mat", file_md5="e26dedcc434d2e4c54c9b2d4a06d8373", size=182_040_794),
            RemoteFile("test_32x32.mat", file_md5="eb5a983be6a315427106f1b164d9cef3", size=64_275_384),
        ),
        mirrors=("http://ufldl.stanford.edu/housenumbers/",),
        default_val_split=5000,
        # Crops shift digits like camera framing does; a mirrored digit is not a digit, so no flip.
        augment="shift",
    )
)
