"""``sensor_msgs`` <-> numpy without copies where possible (docs/reference.md §D3, step 2).

Decoding is :mod:`cse_pose.decoding` (ROS-free, shared with offline tools that read recorded bags); this
module adds the ROS side: cv_bridge, when importable, decodes unpadded images of the usual byte order (its
``passthrough`` mode is the same view as the numpy path; both return the same arrays), and
:func:`numpy_to_image` encodes arrays as messages.

Array conventions (the same in both directions):

* colour images are RGB, (H, W, 3) uint8, whatever the wire order (``rgb8``, ``bgr8``, ``rgba8``,
  ``bgra8``; ``mono8`` as a colour image is grey broadcast to 3 channels);
* depth: ``16UC1``/``mono16`` (H, W) uint16 millimetres, ``32FC1`` (H, W) float32 metres;
* masks: ``mono8`` uint8, ``mono16``/``16UC1`` uint16, ``32SC1`` int32, all (H, W).

rclpy message types are imported lazily; any object with the ``sensor_msgs/Image`` fields works.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cse_pose import decoding
from cse_pose.decoding import ENCODINGS, ROLE_ENCODINGS, ConversionError, Encoding, camera_info_to_K

__all__ = ["ENCODINGS", "ROLE_ENCODINGS", "ConversionError", "Encoding", "camera_info_to_K", "image_to_numpy",
           "numpy_to_image"]

_LITTLE = decoding.LITTLE_ENDIAN


def _cv_bridge():
    """A CvBridge instance, or None when cv_bridge is not importable (pip-only installs)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


_BRIDGE: Any = None
_BRIDGE_CHECKED = False


def _bridge():
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE, _BRIDGE_CHECKED = _cv_bridge(), True
    return _BRIDGE


def image_to_numpy(msg: Any, role: str = "auto") -> np.ndarray:
    """Decode a ``sensor_msgs/Image``: :func:`cse_pose.decoding.image_to_numpy` with cv_bridge when
    importable (same arguments, result and :class:`ConversionError` reasons)."""
    return decoding.image_to_numpy(msg, role, bridge=_bridge())


def _make_image(msg_type: Any | None) -> Any:
    if msg_type is not None:
        return msg_type()
    from sensor_msgs.msg import Image

    return Image()


def numpy_to_image(array: np.ndarray, encoding: str, header: Any = None, msg_type: Any = None) -> Any:
    """Encode an array as a ``sensor_msgs/Image`` (machine byte order, no row padding).

    Args:
        array: colour (H, W, 3) RGB (or (H, W, 4) RGBA for the 4-channel encodings), or (H, W) for
            single-channel encodings, with the encoding's dtype (uint8 / uint16 / int32 / float32).
        encoding: a key of :data:`ENCODINGS`; for ``bgr8``/``bgra8`` the channels are reordered on the wire.
        header: copied into ``msg.header`` when given.
        msg_type: message class (default ``sensor_msgs.msg.Image``).
    Raises:
        ConversionError: unknown encoding (``unknown_encoding``), wrong shape (``bad_shape``) or dtype
            (``bad_dtype``).
    """
    enc = ENCODINGS.get(encoding)
    if enc is None:
        raise ConversionError("unknown_encoding", f"unknown image encoding {encoding!r}")
    array = np.asarray(array)
    if enc.channels == 1:
        if array.ndim != 2:
            raise ConversionError("bad_shape", f"{encoding} needs an (H, W) array, got {array.shape}")
        wire = array
    else:
        if array.ndim != 3 or array.shape[2] not in (3, enc.channels):
            raise ConversionError("bad_shape", f"{encoding} needs (H, W, 3) RGB, got {array.shape}")
        rgb = array[..., :3]
        if enc.to_rgb == (2, 1, 0):
            rgb = rgb[..., ::-1]
        if enc.channels == 4:
            opaque = np.full((*array.shape[:2], 1), 255, array.dtype)
            alpha = array[..., 3:4] if array.shape[2] == 4 else opaque
            wire = np.concatenate([rgb, alpha], axis=2)
        else:
            wire = rgb
    if wire.dtype != enc.dtype:
        raise ConversionError("bad_dtype", f"{encoding} needs dtype {enc.dtype.name}, got {wire.dtype}")
    wire = np.ascontiguousarray(wire)
    msg = _make_image(msg_type)
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(wire.shape[0]), int(wire.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if _LITTLE else 1
    msg.step = int(wire.shape[1] * enc.channels * enc.dtype.itemsize)
    msg.data = wire.tobytes()
    return msg
