"""OpenVINO IR formats (``.openvino.xml`` + ``.openvino.bin``), run by OpenVINO on the CPU: ``openvino`` (FP32),
``openvino-fp16`` (weights stored in float16) and ``openvino-int8`` (NNCF post-training quantisation calibrated on
training images)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import CnnctlError, UsageError, first_line, require_packages
from cnnctl.exports.formats import (
    INPUT_NAME,
    OUTPUT_NAME,
    Calibration,
    Exported,
    ExportFormat,
    Runner,
    package_version,
    register_format,
)

if TYPE_CHECKING:
    import torch

INT8_METHODS = ("minmax",)


def require_openvino() -> None:
    require_packages(("openvino",), "openvino", "OpenVINO export")


def require_nncf() -> None:
    require_packages(("openvino", "nncf"), "openvino", "OpenVINO int8 export")


def convert(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, arch: str) -> Any:
    """The model converted by OpenVINO (from PyTorch directly), its input and output named as in every export."""
    import openvino

    channels, height, width = inputs.shape[1:]
    shape = openvino.PartialShape([-1 if dynamic_batch else 1, channels, height, width])
    try:
        converted = openvino.convert_model(model, example_input=inputs[:1], input=[shape])
    except Exception as error:
        raise CnnctlError(f"could not convert {arch} to OpenVINO: {first_line(error, 200)}",
                          hint="--debug shows the traceback") from error
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return converted


def serialise(converted: Any, suffix: str, *, fp16: bool) -> dict[str, bytes]:
    """The IR's two files in memory: ``<suffix>`` (.xml, the graph) and its .bin (the weights)."""
    import openvino

    with tempfile.TemporaryDirectory(prefix="cnnctl-openvino-") as folder:
        xml = Path(folder) / "model.xml"
        openvino.save_model(converted, str(xml), compress_to_fp16=fp16)
        return {suffix.removesuffix(".xml") + ".bin": xml.with_suffix(".bin").read_bytes(), suffix: xml.read_bytes()}


def export_openvino(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                    arch: str, calibration: Calibration | None = None) -> Exported:
    converted = convert(model, inputs, dynamic_batch=dynamic_batch, arch=arch)
    # OpenVINO's CPU plugin computes in bfloat16 by default where the CPU can: the FP32 export is checked, and should
    # be compiled, in float32
    return Exported(serialise(converted, ".openvino.xml", fp16=False),
                    details={"conversion": f"openvino {package_version('openvino')} convert_model",
                             "compile_config": {"INFERENCE_PRECISION_HINT": "f32"}})


def export_openvino_fp16(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                         arch: str, calibration: Calibration | None = None) -> Exported:
    converted = convert(model, inputs, dynamic_batch=dynamic_batch, arch=arch)
    return Exported(serialise(converted, ".fp16.openvino.xml", fp16=True),
                    details={"conversion": f"openvino {package_version('openvino')} convert_model, "
                                           "weights compressed to float16"})


def export_openvino_int8(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                         arch: str, calibration: Calibration | None = None) -> Exported:
    """NNCF's post-training quantisation of the converted model: int8 weights (per channel) and activations,
    ranges from the calibration images (min-max), then fast bias correction."""
    import nncf

    if calibration is None:
        raise UsageError("openvino-int8 needs calibration images")
    converted = convert(model, inputs, dynamic_batch=dynamic_batch, arch=arch)
    dataset = nncf.Dataset([image.numpy() for image in calibration.images.split(1)])
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
            quantized = nncf.quantize(converted, dataset, subset_size=calibration.count,
                                      preset=nncf.QuantizationPreset.PERFORMANCE)
    except Exception as error:
        raise CnnctlError(f"could not quantise {arch} to OpenVINO int8: {first_line(error, 200)}",
                          hint="--debug shows the traceback") from error
    details = {"quantization": {
        "tool": f"nncf {package_version('nncf')} quantize (post-training, preset performance)",
        "weights": "int8, per output channel, symmetric", "activations": "int8, per tensor",
        "calibration": {"images": calibration.count, "method": calibration.method, "split": calibration.split,
                        "from": calibration.described, "bias_correction": "fast"}}}
    return Exported(serialise(quantized, ".int8.openvino.xml", fp16=False), details=details)


def openvino_runner(files: dict[str, bytes], threads: int | None = None, *, precision: str | None = None) -> Runner:
    """The IR compiled for the CPU. ``precision``: the inference precision to ask for (``f32`` for an FP32 export,
    whose accuracy should not depend on whether this CPU computes in bfloat16); None keeps OpenVINO's default."""
    import numpy as np
    import openvino
    import torch

    xml = next(data for suffix, data in files.items() if suffix.endswith(".xml"))
    weights = next(data for suffix, data in files.items() if suffix.endswith(".bin"))
    core = openvino.Core()
    model = core.read_model(model=xml.decode(), weights=openvino.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    config: dict[str, Any] = {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        result = request.infer({INPUT_NAME: batch.numpy()})
        return torch.from_numpy(np.array(result[compiled.output(OUTPUT_NAME)])).float()

    used = compiled.get_property("INFERENCE_PRECISION_HINT")
    run.runtime = {"name": "openvino", "version": package_version("openvino"),  # type: ignore[attr-defined]
                   "device": "CPU", "inference_precision": getattr(used, "get_type_name", lambda: str(used))()}
    return run


register_format(ExportFormat(
    "openvino", "OpenVINO IR FP32 (.xml + .bin), run by OpenVINO (pip install 'cnnctl[openvino]')",
    ".openvino.xml", lambda *args, **kwargs: export_openvino(*args, **kwargs),
    lambda *args, **kwargs: openvino_runner(*args, **kwargs, precision="f32"), "openvino",
    require=lambda: require_openvino(), tolerance=1e-3,
    companions=(".openvino.bin",),
    title="OpenVINO IR FP32"))
register_format(ExportFormat(
    "openvino-fp16", "OpenVINO IR with float16 weights, run by OpenVINO", ".fp16.openvino.xml",
    lambda *args, **kwargs: export_openvino_fp16(*args, **kwargs),
    lambda *args, **kwargs: openvino_runner(*args, **kwargs), "openvino", precision="fp16",
    require=lambda: require_openvino(), tolerance=None,
    companions=(".fp16.openvino.bin",),
    title="OpenVINO IR FP16"))
register_format(ExportFormat(
    "openvino-int8", "OpenVINO IR int8 (NNCF post-training quantisation, calibrated on training images)",
    ".int8.openvino.xml", lambda *args, **kwargs: export_openvino_int8(*args, **kwargs),
    lambda *args, **kwargs: openvino_runner(*args, **kwargs), "openvino", precision="int8",
    require=lambda: require_nncf(), tolerance=None, calibrated=True, methods=INT8_METHODS,
    companions=(".int8.openvino.bin",),
    title="OpenVINO IR INT8"))
