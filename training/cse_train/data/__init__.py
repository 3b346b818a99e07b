"""Datasets: synthetic RGB-D videos, Wild6D, REAL275.

Submodules (imported lazily so that ``cse_train.data.synthetic`` stays torch-free; its z-buffer rasteriser is
the runtime's ``cse_pose.core.raster``):

- ``synthetic``: procedural RGB-D video generator (numpy + OpenCV), writes Wild6D's layout.
- ``wild6d_format``: file names and metadata / annotation I/O of that layout (no torch).
- ``wild6d``, ``real275``: torch ``Dataset``s of crops; ``batching``: the video-major batch sampler;
  ``common``: the crop item shared by the loaders.

Disk format: ``FORMAT.md`` beside this file.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Real275Dataset": "real275",
    "VideoBatchSampler": "batching",
    "Wild6DDataset": "wild6d",
    "SceneSpec": "synthetic",
    "Frame": "synthetic",
    "sample_scene": "synthetic",
    "render_frame": "synthetic",
    "generate": "synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
