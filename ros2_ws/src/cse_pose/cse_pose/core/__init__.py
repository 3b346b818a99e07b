"""ROS-free, torch-free geometry core of cse_pose (numpy only).

Modules, one per stage of the data flow:
``camera`` (intrinsics, depth decoding, back-projection), ``crop`` (the reference crop and its maps),
``categories`` (category names, symmetry, the published object frame), ``rotation`` (quaternions,
interpolation, sampling), ``correspondence`` (confidence
threshold, selection, lifting), ``solver`` (weighted Umeyama + vectorised RANSAC), ``pose`` (the
published pose, size and quality), ``metrics`` (the paper's evaluation) and ``raster`` (the numpy z-buffer
rasteriser: pose verification, synthetic data). Errors live in ``errors``.
"""

from .errors import (
    DegenerateGeometryError,
    EmptyMaskError,
    InvalidDepthError,
    InvalidInputError,
    InvalidIntrinsicsError,
    PoseError,
    UnknownCategoryError,
)

__all__ = [
    "DegenerateGeometryError",
    "EmptyMaskError",
    "InvalidDepthError",
    "InvalidInputError",
    "InvalidIntrinsicsError",
    "PoseError",
    "UnknownCategoryError",
]
