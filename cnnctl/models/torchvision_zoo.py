"""The torchvision classification zoo, built with ``torchvision.models.get_model(name, weights=None)`` and
adapted to the dataset: the number of classes, and the first convolution for the number of input channels.

Naming: every model here answers to ``tv:<torchvision name>``. The plain torchvision name works too, except where
cnnctl has its own small-image version of that name (``resnet18``, ``resnet34``, ``resnet50``): those plain names
mean the small-image versions and the torchvision ones are only ``tv:resnet18`` etc.

The state-dict keys are torchvision's own (layers are replaced in place, at the same attribute path), so weights
saved by cnnctl load into ``torchvision.models.get_model(name, num_classes=N)`` directly (3-channel models; for
another channel count, replace the first convolution the same way first). Models are built without weights;
``--pretrained imagenet`` loads torchvision's published ones afterwards (:mod:`cnnctl.models.weights`).

The metadata below is static so that ``cnnctl list`` needs no torch; the tests rebuild every model and check it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from cnnctl.models._adapt import replace_first_conv
from cnnctl.models.resnet import SMALL_IMAGE_RESNETS
from cnnctl.registry import ModelSpec, add_model


class ZooEntry(NamedTuple):
    tv_name: str
    family: str
    params: int  # 3×224×224 input, 10 classes
    min_input: int  # smallest square input the network does not shrink below 1×1
    classifier: str  # state-dict prefix of the final layer
    dropout: float | None  # torchvision's default dropout before the final layer, None if the head has none
    description: str


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("resnet18", "resnet", 11_181_642, 1, "fc", None, "ResNet-18, ImageNet version (7x7 stem, max-pool)"),
    ZooEntry("resnet34", "resnet", 21_289_802, 1, "fc", None, "ResNet-34, ImageNet version (7x7 stem, max-pool)"),
    ZooEntry("resnet50", "resnet", 23_528_522, 1, "fc", None, "ResNet-50, ImageNet version (bottleneck blocks)"),
    ZooEntry("resnext50_32x4d", "resnet", 23_000_394, 1, "fc", None, "ResNeXt-50 32x4d"),
    ZooEntry("mobilenet_v2", "mobilenet", 2_236_682, 1, "classifier.1", 0.2, "MobileNetV2 (inverted residuals)"),
    ZooEntry("mobilenet_v3_small", "mobilenet", 1_528_106, 1, "classifier.3", 0.2,
             "MobileNetV3-Small (SE blocks, hard-swish)"),
    ZooEntry("mobilenet_v3_large", "mobilenet", 4_214_842, 1, "classifier.3", 0.2, "MobileNetV3-Large"),
    ZooEntry("efficientnet_b0", "efficientnet", 4_020_358, 1, "classifier.1", 0.2, "EfficientNet-B0"),
    ZooEntry("alexnet", "alexnet", 57_044_810, 63, "classifier.6", 0.5, "AlexNet (one-GPU variant)"),
    ZooEntry("vgg11", "vgg", 128_807_306, 32, "classifier.6", 0.5, "VGG-11 (configuration A, no batch norm)"),
    ZooEntry("vgg16", "vgg", 134_301_514, 32, "classifier.6", 0.5, "VGG-16 (configuration D, no batch norm)"),
    ZooEntry("shufflenet_v2_x0_5", "shufflenet", 352_042, 1, "fc", None, "ShuffleNetV2 0.5x"),
    ZooEntry("shufflenet_v2_x1_0", "shufflenet", 1_263_854, 1, "fc", None, "ShuffleNetV2 1.0x"),
    ZooEntry("regnet_x_400mf", "regnet", 5_098_986, 1, "fc", None, "RegNetX-400MF"),
    ZooEntry("regnet_y_400mf", "regnet", 3_907_554, 1, "fc", None, "RegNetY-400MF (with SE)"),
    ZooEntry("convnext_tiny", "convnext", 27_827_818, 32, "classifier.2", None, "ConvNeXt-Tiny"),
    ZooEntry("densenet121", "densenet", 6_964_106, 29, "classifier", None, "DenseNet-121"),
    ZooEntry("squeezenet1_1", "squeezenet", 727_626, 17, "classifier.1", 0.5,
             "SqueezeNet 1.1 (the classifier is a 1x1 convolution)"),
)


# torchvision's recommended ImageNet weights (``get_model_weights(name).DEFAULT``) and their top-1 accuracy from
# ``weights.meta``, for `cnnctl list` without importing torchvision; the tests check them against torchvision.
# Everything else about the weights (URL, file, hash, preprocessing) is read from torchvision when used.
IMAGENET_DEFAULT: dict[str, tuple[str, float]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", 69.758),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", 73.314),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", 80.858),
    "resnext50_32x4d": ("ResNeXt50_32X4D_Weights.IMAGENET1K_V2", 81.198),
    "mobilenet_v2": ("MobileNet_V2_Weights.IMAGENET1K_V2", 72.154),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights.IMAGENET1K_V1", 67.668),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", 75.274),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", 77.692),
    "alexnet": ("AlexNet_Weights.IMAGENET1K_V1", 56.522),
    "vgg11": ("VGG11_Weights.IMAGENET1K_V1", 69.02),
    "vgg16": ("VGG16_Weights.IMAGENET1K_V1", 71.592),
    "shufflenet_v2_x0_5": ("ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1", 60.552),
    "shufflenet_v2_x1_0": ("ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", 69.362),
    "regnet_x_400mf": ("RegNet_X_400MF_Weights.IMAGENET1K_V2", 74.864),
    "regnet_y_400mf": ("RegNet_Y_400MF_Weights.IMAGENET1K_V2", 75.804),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 82.52),
    "densenet121": ("DenseNet121_Weights.IMAGENET1K_V1", 74.434),
    "squeezenet1_1": ("SqueezeNet1_1_Weights.IMAGENET1K_V1", 58.178),
}


def imagenet_default(spec_name: str) -> tuple[str, float] | None:
    """(weights, top-1 %) of a registered torchvision architecture, or None."""
    entry = next((e for e in ZOO if registered_name(e.tv_name) == spec_name), None)
    return IMAGENET_DEFAULT.get(entry.tv_name) if entry is not None else None


def registered_name(tv_name: str) -> str:
    """The name cnnctl registers a torchvision model under (``tv:`` only where cnnctl has its own version)."""
    return f"tv:{tv_name}" if tv_name in SMALL_IMAGE_RESNETS else tv_name


def build_torchvision(tv_name: str, num_classes: int = 1000, in_channels: int = 3, **options: Any) -> Any:
    """``get_model(tv_name, weights=None, num_classes=...)``, with the first convolution replaced (same path)
    when the input does not have 3 channels. ``options`` go to the torchvision builder (e.g. ``dropout``)."""
    from torchvision.models import get_model

    model = get_model(tv_name, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    _catch_up_batch_norm(model)
    return model


def _catch_up_batch_norm(model: Any) -> None:
    """BatchNorm momentum 0.1 (PyTorch's default) where torchvision chose less (MobileNetV3, EfficientNet: 0.01).

    The small momenta suit ImageNet's 10,000 steps per epoch; on the short runs cnnctl is used for (tens to
    hundreds of steps) the running statistics would still be mostly their initial values when the model is
    evaluated, and eval-mode outputs stay at chance however well it trains. Momentum is not saved in the weights,
    so the checkpoint still loads into the plain torchvision model unchanged."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None \
                and module.momentum < 0.1:
            module.momentum = 0.1


for _entry in ZOO:
    _name = registered_name(_entry.tv_name)
    add_model(ModelSpec(
        name=_name,
        builder=functools.partial(build_torchvision, _entry.tv_name),
        description=_entry.description,
        family=_entry.family,
        input_size=(224, 224),
        in_channels=3,
        min_input=_entry.min_input,
        params=_entry.params,
        source="torchvision",
        classifier=_entry.classifier,
        default_args={} if _entry.dropout is None else {"dropout": _entry.dropout},
        aliases=() if _name.startswith("tv:") else (f"tv:{_entry.tv_name}",),
    ))
