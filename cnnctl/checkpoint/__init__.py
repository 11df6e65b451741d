"""Checkpoints: safetensors files whose metadata is enough to rebuild the model and its preprocessing.

One way up: ``format`` (the file: bounded header, atomic save, tensors) -> ``schema`` (:class:`CheckpointMeta`
and its checks) -> ``load`` (checked against the architecture, built through the model registry). Tensor names
are the model's own ``state_dict()`` keys; metadata is one JSON document under the key ``cnnctl``. Nothing here
ever unpickles.
"""

from __future__ import annotations

from cnnctl.checkpoint.format import (
    FORMAT_VERSION,
    METADATA_KEY,
    existing_checkpoint,
    read_tensors,
    save,
    state_tensors,
    unwrap,
    versions,
)
from cnnctl.checkpoint.load import build_from_meta, load, load_weights_strict, read_meta
from cnnctl.checkpoint.schema import CheckpointMeta

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "CheckpointMeta", "build_from_meta", "existing_checkpoint", "load",
           "load_weights_strict", "read_meta", "read_tensors", "save", "state_tensors", "unwrap", "versions"]
