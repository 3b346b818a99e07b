"""``sensor_msgs/Image`` and ``CameraInfo`` fields -> numpy, ROS-free (docs/reference.md §D3, step 2).

Works on any object with the message's fields: rclpy messages in the node (``cse_pose_ros.conversions``
adds the ROS side: cv_bridge discovery and encoding numpy arrays into messages), and messages read from a
recorded bag without ROS (``rosbags``, ``cse_train.from_bag``), so live and recorded frames are decoded by
the same code.

Decoding validates everything a driver can get wrong (encoding, ``step``, data length, byte order) and
reports it as :class:`ConversionError` with a stable ``reason`` for diagnostics. The numpy path returns
views on ``msg.data`` (row padding is handled with strides, BGR/BGRA/RGBA with channel views); a copy is
made only for a byte order other than the machine's. An optional bridge (an object with cv_bridge's
``imgmsg_to_cv2``) decodes unpadded images of the usual byte order; both paths return the same arrays.

Array conventions:

* colour images are RGB, (H, W, 3) uint8, whatever the wire order (``rgb8``, ``bgr8``, ``rgba8``,
  ``bgra8``; ``mono8`` as a colour image is grey broadcast to 3 channels);
* depth: ``16UC1``/``mono16`` (H, W) uint16 millimetres, ``32FC1`` (H, W) float32 metres;
* masks: ``mono8`` uint8, ``mono16``/``16UC1`` uint16, ``32SC1`` int32, all (H, W).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core.errors import InvalidInputError

__all__ = [
    "ENCODINGS",
    "LITTLE_ENDIAN",
    "ROLE_ENCODINGS",
    "ConversionError",
    "Encoding",
    "camera_info_to_K",
    "image_to_numpy",
]


class ConversionError(InvalidInputError):
    """A message cannot be decoded. ``reason`` is a stable key for diagnostics counters.

    Reasons: ``unknown_encoding``, ``unsupported_encoding`` (known but wrong for the role), ``bad_size``
    (zero width/height), ``bad_step``, ``truncated_data``, ``excess_data``, ``bad_shape``, ``bad_dtype``,
    ``bad_camera_info``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Encoding:
    """Wire layout of one ROS image encoding: ``dtype`` of one channel, ``channels``, and the
    channel permutation that turns the wire order into RGB (None for single-channel encodings)."""

    dtype: np.dtype
    channels: int
    to_rgb: tuple[int, ...] | None = None


#: Every encoding this module reads (and ``cse_pose_ros.conversions`` writes).
ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(np.dtype(np.uint8), 3, (0, 1, 2)),
    "bgr8": Encoding(np.dtype(np.uint8), 3, (2, 1, 0)),
    "rgba8": Encoding(np.dtype(np.uint8), 4, (0, 1, 2)),
    "bgra8": Encoding(np.dtype(np.uint8), 4, (2, 1, 0)),
    "mono8": Encoding(np.dtype(np.uint8), 1),
    "8UC1": Encoding(np.dtype(np.uint8), 1),
    "mono16": Encoding(np.dtype(np.uint16), 1),
    "16UC1": Encoding(np.dtype(np.uint16), 1),
    "32SC1": Encoding(np.dtype(np.int32), 1),
    "32FC1": Encoding(np.dtype(np.float32), 1),
}
#: Encodings accepted per role of an image.
ROLE_ENCODINGS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"),
    "depth": ("16UC1", "mono16", "32FC1"),
    "mask": ("mono8", "8UC1", "mono16", "16UC1", "32SC1"),
}

#: True on a little-endian machine (``is_bigendian`` of the messages this machine writes is then 0).
LITTLE_ENDIAN = sys.byteorder == "little"


def _unknown(name: str) -> ConversionError:
    return ConversionError("unknown_encoding", f"unknown image encoding {name!r}; known: {sorted(ENCODINGS)}")


def _buffer(data: Any) -> np.ndarray:
    """``msg.data`` (array.array, bytes, memoryview, ndarray, list, ...) as a flat uint8 array (a view if
    possible)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def _layout(msg: Any) -> tuple[Encoding, int, int, int, np.ndarray]:
    """Validate an Image message; return (encoding, height, width, step, flat uint8 buffer)."""
    name = str(msg.encoding)
    enc = ENCODINGS.get(name)
    if enc is None:
        raise _unknown(name)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError("bad_size", f"image size must be positive, got {width}x{height}")
    row_bytes = width * enc.channels * enc.dtype.itemsize
    if step < row_bytes:
        raise ConversionError(
            "bad_step", f"step {step} < width {width} x {enc.channels * enc.dtype.itemsize} bytes ({name})"
        )
    buf = _buffer(msg.data)
    need = step * height
    if buf.size < need:
        raise ConversionError(
            "truncated_data", f"data has {buf.size} bytes, step {step} x height {height} needs {need}"
        )
    if buf.size > need:
        raise ConversionError(
            "excess_data", f"data has {buf.size} bytes, more than step {step} x height {height} = {need}"
        )
    return enc, height, width, step, buf


def _raw_view(msg: Any, bridge: Any = None) -> np.ndarray:
    """(H, W, C) or (H, W) array in wire channel order and machine byte order."""
    enc, height, width, step, buf = _layout(msg)
    c, item = enc.channels, enc.dtype.itemsize
    big = bool(msg.is_bigendian)
    swap = item > 1 and big == LITTLE_ENDIAN
    if bridge is not None and step == width * c * item and not swap:
        array = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        return array.reshape((height, width, c) if c > 1 else (height, width))
    dtype = enc.dtype.newbyteorder(">" if big else "<") if item > 1 else enc.dtype
    shape = (height, width, c) if c > 1 else (height, width)
    strides = (step, c * item, item) if c > 1 else (step, item)
    array = np.ndarray(shape=shape, dtype=dtype, buffer=buf, offset=0, strides=strides)
    if swap:
        array = array.astype(enc.dtype)  # the only copy: foreign byte order
    return array


def image_to_numpy(msg: Any, role: str = "auto", bridge: Any = None) -> np.ndarray:
    """Decode a ``sensor_msgs/Image``.

    Args:
        msg: the message (fields height, width, encoding, is_bigendian, step, data).
        role: ``"rgb"`` -> (H, W, 3) uint8 RGB (mono8 broadcast to grey, read-only);
            ``"depth"`` -> (H, W) uint16 mm or float32 m; ``"mask"`` -> (H, W) integer ids;
            ``"auto"`` -> colour encodings as RGB (H, W, 3), single-channel ones as (H, W).
        bridge: optional cv_bridge ``CvBridge`` (any object with ``imgmsg_to_cv2(msg, desired_encoding)``)
            used for unpadded images in the machine's byte order; None: numpy only.
    Returns:
        A view on ``msg.data`` whenever the byte order allows (keep the message alive while you use it).
    Raises:
        ConversionError: see its ``reason`` values.
    """
    if role not in ("auto", *ROLE_ENCODINGS):
        raise ValueError(f"role must be 'auto', 'rgb', 'depth' or 'mask', got {role!r}")
    name = str(msg.encoding)
    if name not in ENCODINGS:
        raise _unknown(name)
    if role != "auto" and name not in ROLE_ENCODINGS[role]:
        allowed = ROLE_ENCODINGS[role]
        raise ConversionError(
            "unsupported_encoding", f"{role} image encoding {name!r} not supported; use one of {allowed}"
        )
    array = _raw_view(msg, bridge)
    enc = ENCODINGS[name]
    if enc.to_rgb is not None:
        if enc.to_rgb == (0, 1, 2):
            return array[..., :3]
        return array[..., 2::-1]  # BGR(A) -> RGB as a negative-stride view
    if role == "rgb":
        return np.broadcast_to(array[..., None], (*array.shape, 3))
    return array


def camera_info_to_K(msg: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """``sensor_msgs/CameraInfo`` -> (K (3, 3) float64, (width, height)), validated by ``core.camera``.

    Raises:
        ConversionError: ``bad_camera_info`` (K missing, size 0, bad intrinsics). The original
            :class:`~cse_pose.core.errors.InvalidIntrinsicsError` is chained as ``__cause__``.
    """
    from .core.camera import validate_intrinsics
    from .core.errors import PoseError

    width, height = int(msg.width), int(msg.height)
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise ConversionError("bad_camera_info", f"CameraInfo.k must have 9 numbers, got {k.size}")
    if width <= 0 or height <= 0:
        raise ConversionError("bad_camera_info", f"CameraInfo size must be positive, got {width}x{height}")
    try:
        K = validate_intrinsics(k.reshape(3, 3), width, height)
    except PoseError as exc:
        raise ConversionError("bad_camera_info", f"CameraInfo.k invalid: {exc}") from exc
    return K, (width, height)
