"""cnnctl: train, evaluate and run image-classification CNNs from the command line or Python.

The Python API mirrors the CLI (see docs/api.md)::

    import cnnctl
    run = cnnctl.train("lenet5", dataset="mnist", epochs=2)   # a FitResult; run.run_dir is the run folder
    model, preprocessing = cnnctl.load(run)                    # its best checkpoint, in eval mode
    imagenet, _ = cnnctl.load_pretrained("tv:resnet50")        # ImageNet weights as a classifier, no training
    labels, probabilities = cnnctl.predict(model, ["digit.png"])
    cnnctl.export(run, "onnx")                                 # best.onnx + best.preprocessing.json
    numbers = cnnctl.evaluate(run, report="report")            # eval --json's numbers; report/index.html
    maps = cnnctl.explain(run, ["digit.png"], output="maps")   # Grad-CAM heat maps, maps/digit.gradcam.png
    found = cnnctl.embed(run, "images/")                       # penultimate features: .features, .paths
    record = cnnctl.calibrate(run, target_error=0.01)          # temperature + threshold, stored in best

Every failure raises ``cnnctl.CnnctlError`` with a one-line message. Everything heavy (torch, torchvision) is
imported on first use, so ``import cnnctl`` is instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.version import __version__

__all__ = ["__version__", "train", "load", "load_pretrained", "predict", "export", "evaluate", "explain", "embed",
           "calibrate", "CnnctlError"]

from cnnctl.errors import CnnctlError

if TYPE_CHECKING:
    from cnnctl.api import calibrate, embed, evaluate, explain, export, load, load_pretrained, predict, train
else:

    def __getattr__(name: str) -> Any:
        """``cnnctl.train`` and friends live in cnnctl.api, imported on first use."""
        if name in ("train", "load", "load_pretrained", "predict", "export", "evaluate", "explain", "embed",
                    "calibrate"):
            from cnnctl import api

            return getattr(api, name)
        raise AttributeError(f"module 'cnnctl' has no attribute {name!r}")
