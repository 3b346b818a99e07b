"""Pinhole camera: intrinsics validation and scaling, lens distortion, depth decoding, projection and
back-projection.

Conventions: OpenCV optical frame (x right, y down, z forward); pixel coordinates (u, v) = (column, row)
with ``u = fx * X / Z + cx``, so integer coordinates are pixel centres. Depth in metres as float32 with
0 marking an invalid sample.

Everything after decoding works on pinhole images. A distorted stream (CameraInfo ``plumb_bob`` or
``rational_polynomial`` with non-zero D, OpenCV's model and coefficient order) is rectified first with a
:class:`Rectifier`: same K, same optical frame, the lens distortion removed (RGB bilinear, depth and mask
nearest), so the crops the model sees, the lifted points, the ICP and the drawings all use one pinhole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidDepthError, InvalidInputError, InvalidIntrinsicsError

#: Depth encodings and their scale to metres.
DEPTH_SCALE_TO_M: dict[str, float] = {"16UC1": 1e-3, "mono16": 1e-3, "32FC1": 1.0}

#: Distortion models a :class:`Rectifier` undoes, with their number of coefficients (OpenCV order
#: k1 k2 p1 p2 k3 [k4 k5 k6]).
DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8}


class CameraInfoMismatchError(InvalidIntrinsicsError):
    """The CameraInfo describes another resolution than the image and is not an exact scale of it."""

    reason = "camera_info_size_mismatch"


class UnsupportedDistortionError(InvalidIntrinsicsError):
    """Non-zero distortion coefficients of a model this package does not undo (rectify upstream)."""

    reason = "unsupported_distortion"


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
    k20, k21, k22 = K[2].tolist()  # np.allclose's test (atol 1e-8, rtol 1e-5) on 3 floats, x20 cheaper per frame
    if not (abs(k20) <= 1e-8 and abs(k21) <= 1e-8 and abs(k22 - 1.0) <= 1e-8 + 1e-5):
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
    """Validated K for an image whose size may differ from the CameraInfo's by an exact uniform scale.

    Raises:
        InvalidIntrinsicsError: K invalid for ``info_wh``.
        CameraInfoMismatchError: the sizes differ and not by one scale factor for both axes
            (``w_image * h_info != h_image * w_info``): K describes another image (another stream, a crop,
            another aspect ratio) and no scaling of it is right.
    """
    K = validate_intrinsics(K, *info_wh)
    (wi, hi), (w, h) = (int(x) for x in info_wh), (int(x) for x in image_wh)
    if (wi, hi) == (w, h):
        return K
    if w <= 0 or h <= 0 or w * hi != h * wi:
        raise CameraInfoMismatchError(
            f"CameraInfo is {wi}x{hi} but the image is {w}x{h}, not one scale of it (aspect ratio differs), "
            "so its K cannot be used for this image: publish the CameraInfo of this image stream")
    return scale_intrinsics(K, (wi, hi), (w, h))


def distortion_coefficients(model: str, D: np.ndarray | list[float]) -> np.ndarray | None:
    """CameraInfo ``distortion_model`` and ``d`` -> 8 OpenCV coefficients, or None when there is no distortion.

    Args:
        model: ``plumb_bob`` (k1 k2 p1 p2 k3) or ``rational_polynomial`` (k1 k2 p1 p2 k3 k4 k5 k6); any model
            name is accepted when D is empty or all zero.
        D: the coefficients (shorter vectors are zero-padded, e.g. plumb_bob with 4).
    Returns:
        (8,) float64 k1 k2 p1 p2 k3 k4 k5 k6, or None (D empty or all zero: a pinhole image).
    Raises:
        InvalidIntrinsicsError: D not finite.
        UnsupportedDistortionError: non-zero D of another model (e.g. ``equidistant``), or more non-zero
            coefficients than the model has.
    """
    d = np.asarray(D, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise InvalidIntrinsicsError(f"distortion coefficients contain NaN or inf: {d.tolist()}")
    if not d.any():
        return None
    n = DISTORTION_MODELS.get(str(model))
    if n is None:
        raise UnsupportedDistortionError(
            f"distortion model {model!r} with non-zero D {d.tolist()} is not supported (only "
            f"{', '.join(DISTORTION_MODELS)}): publish rectified images (image_proc) with a pinhole CameraInfo")
    if d[n:].any():
        raise UnsupportedDistortionError(f"{model} has {n} coefficients, D has non-zero ones beyond: {d.tolist()}")
    out = np.zeros(8)
    out[: min(n, d.size)] = d[:n]
    return out


def distort_normalized(x: np.ndarray, y: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's lens model on normalized image coordinates (x = X/Z, y = Y/Z), float64.

    ``D``: (8,) k1 k2 p1 p2 k3 k4 k5 k6 (:func:`distortion_coefficients`). Returns the distorted (x, y).
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = (float(c) for c in np.asarray(D, np.float64).reshape(8))
    r2 = x * x + y * y
    radial = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def rectify_maps(K: np.ndarray, D: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of the rectified (pinhole, same K) image lies in the distorted image.

    Args:
        K: (3, 3) intrinsics of both images. D: (8,) coefficients (:func:`distortion_coefficients`).
        width, height: image size.
    Returns:
        (map_u, map_v): (height, width) float32 distorted-image pixel coordinates (pixel centres integer).
    """
    K = np.asarray(K, np.float64).reshape(3, 3)
    fx, skew, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    xd, yd = distort_normalized(x, y, D)
    return (fx * xd + skew * yd + cx).astype(np.float32), (fy * yd + cy).astype(np.float32)


@dataclass(frozen=True)
class Rectifier:
    """Removes the lens distortion of one camera and image size (maps computed once, see :meth:`create`).

    Attributes:
        map_u, map_v: (H, W) float32 source pixel of each rectified pixel (:func:`rectify_maps`).
        nearest_index: (H * W,) flat source index of each rectified pixel (nearest), 0 where outside.
        inside: (H, W) bool, False where the source pixel lies outside the image (output 0 there).
    """

    map_u: np.ndarray
    map_v: np.ndarray
    nearest_index: np.ndarray
    inside: np.ndarray

    @classmethod
    def create(cls, K: np.ndarray, D: np.ndarray, width: int, height: int) -> Rectifier:
        """Precompute the maps of a ``width`` x ``height`` image with intrinsics K and coefficients D."""
        map_u, map_v = rectify_maps(K, D, width, height)
        iu, iv = np.rint(map_u).astype(np.int64), np.rint(map_v).astype(np.int64)
        inside = (iu >= 0) & (iu < width) & (iv >= 0) & (iv < height)
        index = np.where(inside, iv * width + iu, 0).reshape(-1)
        return cls(map_u, map_v, index, inside)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the images this rectifier takes."""
        return self.inside.shape

    def nearest(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image (any dtype, e.g. depth or instance ids) resampled nearest; 0 outside."""
        image = np.asarray(image)
        if image.shape[:2] != self.shape:
            raise InvalidInputError(f"image {image.shape[:2]} does not match the rectifier {self.shape}")
        flat = image.reshape(self.inside.size, *image.shape[2:])
        out = flat.take(self.nearest_index, axis=0).reshape(image.shape)
        out[~self.inside] = 0
        return out

    def linear(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) uint8/uint16/float32 image resampled bilinearly (colour images); 0 outside."""
        import cv2  # OpenCV is a dependency of cse_pose; imported here to keep the core import light

        image = np.ascontiguousarray(image)
        if image.shape[:2] != self.shape:
            raise InvalidInputError(f"image {image.shape[:2]} does not match the rectifier {self.shape}")
        return cv2.remap(image, self.map_u, self.map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


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
    if depth.dtype == np.uint16:
        # Integer millimetres (no NaN): one scaling pass and two in-place thresholds, x5 faster than the masks
        # below on 640x480. TOZERO keeps z > thr (thr = the float32 just below min_depth_m, so z >= min
        # stays); TOZERO_INV zeroes z > max_depth_m. 0 stays 0, which is the invalid value anyway.
        import cv2  # a dependency of cse_pose, imported where used to keep the core import light

        z = np.multiply(depth, np.float32(DEPTH_SCALE_TO_M[encoding]), dtype=np.float32)
        below_min = np.nextafter(np.float32(min_depth_m), np.float32(-np.inf))
        cv2.threshold(z, float(below_min), 0.0, cv2.THRESH_TOZERO, dst=z)
        cv2.threshold(z, float(np.float32(max_depth_m)), 0.0, cv2.THRESH_TOZERO_INV, dst=z)
        return z
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
