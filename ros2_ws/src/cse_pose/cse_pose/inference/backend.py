"""The interface every model runtime implements, and input checks shared by the runtimes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..core.errors import InvalidInputError
from .model_info import ModelInfo

#: (vertices (B,N,3), match (B,G,G,3), confidence (B,G,G)), all float32.
ModelOutputs = tuple[np.ndarray, np.ndarray, np.ndarray]


@runtime_checkable
class InferenceBackend(Protocol):
    """One loaded model of one category, batched over instances.

    Attributes:
        info: the model's metadata (:class:`ModelInfo`).
        name: runtime that executes it, e.g. ``"onnxruntime-cpu"``, ``"onnxruntime-tensorrt"``,
            ``"torch-cpu"``.
    """

    info: ModelInfo
    name: str

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        """Run the model on B instance crops.

        Args:
            rgb_crops: (B, 3, S, S) float32 RGB in [0, 1] (ImageNet normalisation is inside the graph).
            masks: (B, 1, G, G) float32 instance masks on the correspondence grid (1 = object).
        Returns:
            vertices (B, N, 3) deformed prior in canonical units, match (B, G, G, 3) expected canonical
            point per grid cell, confidence (B, G, G) cycle confidence in [0, 1]; all float32. Backends
            may return views of buffers they reuse: the arrays are valid until the next ``run`` call.
        """
        ...


def check_inputs(info: ModelInfo, rgb_crops: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate model inputs and return them as C-contiguous float32 arrays (no copy when they already are).

    Raises:
        InvalidInputError: wrong rank, shape, or batch sizes that differ.
    """
    rgb = np.ascontiguousarray(rgb_crops, dtype=np.float32)
    mask = np.ascontiguousarray(masks, dtype=np.float32)
    s, g = info.crop_size, info.grid_size
    if rgb.ndim != 4 or rgb.shape[1:] != (3, s, s):
        raise InvalidInputError(f"rgb_crops must be (B, 3, {s}, {s}), got {rgb.shape}")
    if mask.ndim != 4 or mask.shape[1:] != (1, g, g):
        raise InvalidInputError(f"masks must be (B, 1, {g}, {g}), got {mask.shape}")
    if rgb.shape[0] != mask.shape[0]:
        raise InvalidInputError(f"batch sizes differ: rgb {rgb.shape[0]}, masks {mask.shape[0]}")
    return rgb, mask


def empty_outputs(info: ModelInfo) -> ModelOutputs:
    """Outputs for a batch of zero instances."""
    g, n = info.grid_size, info.num_vertices
    return (
        np.zeros((0, n, 3), np.float32),
        np.zeros((0, g, g, 3), np.float32),
        np.zeros((0, g, g), np.float32),
    )
