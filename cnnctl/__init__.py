"""cnnctl: train, evaluate and run image-classification CNNs from the command line or Python.

The Python API mirrors the CLI::

    import cnnctl
    run = cnnctl.train(arch="lenet5", dataset="mnist", epochs=2)
    model, preprocessing = cnnctl.load(run.best_path)
    labels, probabilities = cnnctl.predict(model, ["digit.png"])

Everything heavy (torch, torchvision) is imported on first use, so ``import cnnctl`` is instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "train", "load", "predict", "CnnctlError"]

from cnnctl.errors import CnnctlError


def train(config: Any = None, **options: Any) -> Any:
    """Train like ``cnnctl train``; keyword arguments are TrainConfig fields. Returns a FitResult."""
    from cnnctl.engine.fit import train as _train

    return _train(config, **options)


def load(path: Any, device: str = "cpu") -> Any:
    """Load a checkpoint: returns ``(model in eval mode, preprocessing)``; the model carries ``cnnctl_meta``."""
    from cnnctl.engine.predict import load_for_inference

    return load_for_inference(path, device=device)


def predict(model_or_path: Any, images: Any, **options: Any) -> Any:
    """Predict image files, folders or tensors: returns ``(labels, probabilities)``."""
    from cnnctl.engine.predict import predict_api

    return predict_api(model_or_path, images, **options)
