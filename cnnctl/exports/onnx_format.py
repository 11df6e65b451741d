"""ONNX formats, run by ONNX Runtime: ``onnx`` (FP32), ``onnx-fp16`` (weights and activations in half precision,
float32 input and output) and ``onnx-int8`` (ONNX Runtime's static quantisation: QDQ, per-channel weights,
ranges calibrated on training images)."""

from __future__ import annotations

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

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INT8_METHODS = ("minmax", "entropy", "percentile")


def require_onnx() -> None:
    require_packages(ONNX_PACKAGES, "onnx", "ONNX export")


def export_onnx(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                arch: str, calibration: Calibration | None = None) -> Exported:
    """torch.export-based ONNX export (the default since torch 2.9; the TorchScript-based one is deprecated),
    serialised in memory: the model file's bytes and the opset written."""
    import torch

    example = inputs[:2] if dynamic_batch else inputs[:1]  # a batch of 1 would be specialised to 1
    if dynamic_batch and example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=opset, dynamo=True, external_data=False,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        proto = program.model_proto
        data = proto.SerializeToString()
    except Exception as error:  # the exporter raises many types; the message is what matters
        reason = first_line(error, 200)
        target = f" at opset {opset}" if opset else ""
        raise CnnctlError(f"could not export {arch} to ONNX{target}: {reason}",
                          hint="try another --opset, or --debug for the traceback") from error
    written = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:  # the exporter falls back silently when it cannot convert
        raise CnnctlError(f"could not export {arch} to ONNX opset {opset}: the exporter could only write opset "
                          f"{written}; nothing was written", hint=f"use --opset {written}, or leave it out")
    return Exported({".onnx": data}, written)


def export_onnx_fp16(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                     arch: str, calibration: Calibration | None = None) -> Exported:
    """The FP32 export with its weights and arithmetic converted to float16; input and output stay float32, so the
    preprocessing JSON is the same for every format."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    exported = export_onnx(model, inputs, dynamic_batch=dynamic_batch, opset=opset, arch=arch)
    try:
        half = convert_float_to_float16(onnx.load_from_string(exported.files[".onnx"]), keep_io_types=True)
    except Exception as error:
        raise CnnctlError(f"could not convert {arch} to ONNX float16: {first_line(error, 200)}",
                          hint="--debug shows the traceback") from error
    details = {"conversion": f"onnxruntime {package_version('onnxruntime')} convert_float_to_float16, "
                             "float32 input and output"}
    return Exported({".fp16.onnx": half.SerializeToString()}, exported.opset, details)


def export_onnx_int8(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                     arch: str, calibration: Calibration | None = None) -> Exported:
    """ONNX Runtime's static quantisation of the FP32 export: QDQ nodes, int8 weights per output channel, uint8
    activations whose ranges come from the calibration images (one at a time) by ``calibration.method``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None:
        raise UsageError("onnx-int8 needs calibration images")
    exported = export_onnx(model, inputs, dynamic_batch=dynamic_batch, opset=opset, arch=arch)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calibration.images.split(1))

        def get_next(self) -> dict[str, Any] | None:
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: image.numpy()}

    with tempfile.TemporaryDirectory(prefix="cnnctl-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(exported.files[".onnx"])
        try:
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[calibration.method],
                            extra_options={"CalibTensorRangeSymmetric": False})
        except Exception as error:
            raise CnnctlError(f"could not quantise {arch} to ONNX int8: {first_line(error, 200)}",
                              hint="--debug shows the traceback") from error
        data = target.read_bytes()
    details = {"quantization": {
        "tool": f"onnxruntime {package_version('onnxruntime')} quantize_static", "format": "QDQ",
        "weights": "int8, per output channel, symmetric", "activations": "uint8, per tensor",
        "calibration": {"images": calibration.count, "method": calibration.method, "split": calibration.split,
                        "from": calibration.described}}}
    return Exported({".int8.onnx": data}, exported.opset, details)


def onnx_runner(files: dict[str, bytes], threads: int | None = None) -> Runner:
    """An ONNX Runtime session (CPU) on the model's bytes, as a batch → float32 logits function."""
    import onnxruntime
    import torch

    (data,) = files.values()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        return torch.from_numpy(logits).float()

    run.runtime = {"name": "onnxruntime", "version": onnxruntime.__version__,  # type: ignore[attr-defined]
                   "device": "CPUExecutionProvider"}
    return run


# The entries call the functions by name, so a test (or a plugin) that replaces one is used.
register_format(ExportFormat(
    "onnx", "ONNX FP32, run by ONNX Runtime (pip install 'cnnctl[onnx]')", ".onnx",
    lambda *args, **kwargs: export_onnx(*args, **kwargs),
    lambda *args, **kwargs: onnx_runner(*args, **kwargs), "onnxruntime",
    require=lambda: require_onnx(), has_opset=True, title="ONNX"))
register_format(ExportFormat(
    "onnx-fp16", "ONNX with float16 weights and arithmetic (float32 input/output), run by ONNX Runtime",
    ".fp16.onnx", lambda *args, **kwargs: export_onnx_fp16(*args, **kwargs),
    lambda *args, **kwargs: onnx_runner(*args, **kwargs), "onnxruntime", precision="fp16",
    require=lambda: require_onnx(), tolerance=None, has_opset=True, title="ONNX FP16"))
register_format(ExportFormat(
    "onnx-int8", "ONNX int8 (ONNX Runtime static quantisation, QDQ, per-channel, calibrated on training images)",
    ".int8.onnx", lambda *args, **kwargs: export_onnx_int8(*args, **kwargs),
    lambda *args, **kwargs: onnx_runner(*args, **kwargs), "onnxruntime", precision="int8",
    require=lambda: require_onnx(), tolerance=None, calibrated=True, methods=INT8_METHODS,
    has_opset=True, title="ONNX INT8"))
