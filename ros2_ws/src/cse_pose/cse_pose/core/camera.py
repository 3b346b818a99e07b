"""Pinhole camera: intrinsics validation and scaling, depth decoding, projection and back-projection.

Conventions: OpenCV optical frame (x right, y down, z forward); pixel coordinates (u, v) = (column, row)
with ``u = fx * X / Z + cx``, so integer coordinates are pixel centres. Depth in metres as float32 with
0 marking an invalid sample.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidDepthError, InvalidInputError, InvalidIntrinsicsError

#: Depth encodings and their scale to metres.
DEPTH_SCALE_TO_M: dict[str, float] = {"16UC1": 1e-3, "mono16": 1e-3, "32FC1": 1.0}


def validate_intrinsics(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Check a 3x3 camera matrix against an image size.

    Args:
        K: (3, 3) or 9 numbers (row-major) ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        width, height: image size in pixels.
    Returns:
        K as a (3, 3) float64 array.
    Raises:
        InvalidIntrinsicsError: not finite, non-positive focal length, principal point outside the image,
            or a last row other than (0, 0, 1).
    """
    try:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as exc:
        raise InvalidIntrinsicsError(f"K must have 9 numbers, got {np.shape(K)}") from exc
    if width <= 0 or height <= 0:
        raise InvalidIntrinsicsError(f"image size must be positive, got {width}x{height}")
    if not np.isfinite(K).all():
        raise InvalidIntrinsicsError("K contains NaN or inf")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise InvalidIntrinsicsError(f"focal length must be positive, got fx={fx:g}, fy={fy:g}")
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        raise InvalidIntrinsicsError(f"principal point ({cx:g}, {cy:g}) outside the {width}x{height} image")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InvalidIntrinsicsError(f"last row of K must be (0, 0, 1), got {K[2].tolist()}")
    return K


def scale_intrinsics(K: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera at another resolution (image resized, not cropped).

    Pixel-centre convention: a resize by factor s maps u to ``s * (u + 0.5) - 0.5``.
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
    if from_wh[0] <= 0 or from_wh[1] <= 0 or to_wh[0] <= 0 or to_wh[1] <= 0:
        raise InvalidIntrinsicsError(f"image sizes must be positive, got {from_wh} -> {to_wh}")
    sx, sy = to_wh[0] / from_wh[0], to_wh[1] / from_wh[1]
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
    K[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
    return K


def intrinsics_for_image(K: np.ndarray, info_wh: tuple[int, int], image_wh: tuple[int, int]) -> np.ndarray:
    """Validated K for an image whose size may differ from the CameraInfo's (then K is scaled)."""
    K = validate_intrinsics(K, *info_wh)
    if tuple(info_wh) != tuple(image_wh):
        K = scale_intrinsics(K, info_wh, image_wh)
    return K


def decode_depth(
    depth: np.ndarray, encoding: str, min_depth_m: float = 0.1, max_depth_m: float = 10.0
) -> np.ndarray:
    """Raw depth image -> metres, with 0 for every invalid sample.

    Args:
        depth: (H, W) uint16 millimetres (``16UC1``/``mono16``) or float32 metres (``32FC1``).
        encoding: ROS image encoding of ``depth``.
        min_depth_m, max_depth_m: valid range; samples outside it, NaN, inf and 0 become 0.
    Returns:
        (H, W) float32 depth in metres.
    Raises:
        InvalidDepthError: unknown encoding, dtype not matching the encoding, or bad range.
    """
    if encoding not in DEPTH_SCALE_TO_M:
        raise InvalidDepthError(f"unsupported depth encoding {encoding!r}; use 16UC1 (mm) or 32FC1 (m)")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise InvalidDepthError(f"depth must be (H, W), got shape {depth.shape}")
    expected = np.uint16 if encoding != "32FC1" else np.float32
    if depth.dtype != expected:
        raise InvalidDepthError(f"{encoding} depth must be {np.dtype(expected).name}, got {depth.dtype}")
    if not (0.0 <= min_depth_m < max_depth_m):
        raise InvalidDepthError(f"need 0 <= min_depth_m < max_depth_m, got {min_depth_m}, {max_depth_m}")
    z = depth.astype(np.float32) * np.float32(DEPTH_SCALE_TO_M[encoding])
    with np.errstate(invalid="ignore"):
        valid = (z >= min_depth_m) & (z <= max_depth_m) & (z > 0)  # NaN compares False
    return np.where(valid, z, np.float32(0.0)).astype(np.float32, copy=False)


def backproject(u_px: np.ndarray, v_px: np.ndarray, z_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels with depth -> camera-frame points.

    Args:
        u_px, v_px: (n,) pixel coordinates (column, row).
        z_m: (n,) depth along the optical axis in metres.
        K: (3, 3) intrinsics.
    Returns:
        (n, 3) float64 points in metres, camera frame.
    """
    u, v, z = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (u_px, v_px, z_m))
    if not (len(u) == len(v) == len(z)):
        raise InvalidInputError(f"u, v, z lengths differ: {len(u)}, {len(v)}, {len(z)}")
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=1)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points (n, 3) -> pixel coordinates (n, 2). Points need z > 0."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    uvw = p @ K.T
    return uvw[:, :2] / uvw[:, 2:3]
