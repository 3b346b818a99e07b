"""sensor_msgs <-> numpy (cse_pose_ros.conversions), numpy path, no ROS graph."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cse_pose_ros import conversions
from cse_pose_ros.conversions import (
    ENCODINGS,
    ConversionError,
    camera_info_to_K,
    image_to_numpy,
    numpy_to_image,
)

try:
    from sensor_msgs.msg import CameraInfo, Image
except ImportError:  # pip-only without the message wheels: plain namespaces carry the same fields
    Image = CameraInfo = None


def _msg(**fields):
    """An Image-like message: the real class when available, else a namespace with the same fields."""
    base = dict(height=0, width=0, encoding="", is_bigendian=0, step=0, data=b"")
    base.update(fields)
    if Image is None:
        return SimpleNamespace(**base)
    msg = Image()
    for k, v in base.items():
        setattr(msg, k, v)
    return msg


@pytest.fixture(autouse=True)
def _numpy_path(monkeypatch):
    """Exercise the numpy path even where cv_bridge is installed."""
    monkeypatch.setattr(conversions, "_BRIDGE", None)
    monkeypatch.setattr(conversions, "_BRIDGE_CHECKED", True)


def _sample(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(sum(encoding.encode()))
    enc = ENCODINGS[encoding]
    shape = (h, w) if enc.channels == 1 else (h, w, enc.channels if enc.channels == 4 else 3)
    if enc.dtype == np.float32:
        return rng.uniform(0.1, 4.0, shape).astype(np.float32)
    info = np.iinfo(enc.dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 60000), shape).astype(enc.dtype)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    array = _sample(encoding)
    msg = numpy_to_image(array, encoding, msg_type=None if Image else SimpleNamespace)
    assert msg.encoding == encoding and msg.height == 5 and msg.width == 7
    back = image_to_numpy(msg)
    expected = array[..., :3] if array.ndim == 3 else array
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)


def test_bgr_wire_order_becomes_rgb():
    raw = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)  # wire: B, G, R
    msg = _msg(height=1, width=2, encoding="bgr8", step=6, data=raw.tobytes())
    rgb = image_to_numpy(msg, "rgb")
    np.testing.assert_array_equal(rgb, raw[..., ::-1])
    assert rgb[0, 0].tolist() == [30, 20, 10]
    # and numpy_to_image writes B, G, R on the wire for an RGB array
    out = numpy_to_image(rgb, "bgr8", msg_type=None if Image else SimpleNamespace)
    assert bytes(out.data) == raw.tobytes()
    bgra = np.array([[[1, 2, 3, 255]]], np.uint8)
    msg = _msg(height=1, width=1, encoding="bgra8", step=4, data=bgra.tobytes())
    assert image_to_numpy(msg).tolist() == [[[3, 2, 1]]]


def test_views_not_copies():
    array = _sample("rgb8", 4, 6)
    msg = _msg(height=4, width=6, encoding="rgb8", step=18, data=array.tobytes())
    view = image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(memoryview(msg.data), np.uint8))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "16UC1", "32FC1", "32SC1", "rgba8"])
def test_padded_step(encoding):
    array = _sample(encoding, 3, 5)
    enc = ENCODINGS[encoding]
    wire = array
    if enc.to_rgb == (2, 1, 0):
        wire = np.concatenate([array[..., 2::-1], array[..., 3:]], axis=2)
    row = wire.reshape(3, -1).view(np.uint8)
    pad = 13  # odd padding: rows are not even aligned to the element size
    data = np.concatenate([row, np.full((3, pad), 0xAB, np.uint8)], axis=1)
    msg = _msg(height=3, width=5, encoding=encoding, step=row.shape[1] + pad, data=data.tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), array[..., :3] if array.ndim == 3 else array)


def test_truncated_data():
    array = _sample("16UC1", 4, 4)
    msg = _msg(height=4, width=4, encoding="16UC1", step=8, data=array.tobytes()[:-1])
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg)
    assert exc.value.reason == "truncated_data"


def test_excess_data_and_bad_step_and_size():
    msg = _msg(height=2, width=2, encoding="mono8", step=2, data=bytes(5))
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg)
    assert exc.value.reason == "excess_data"
    msg = _msg(height=2, width=4, encoding="16UC1", step=7, data=bytes(14))
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg)
    assert exc.value.reason == "bad_step"
    msg = _msg(height=0, width=4, encoding="mono8", step=4, data=b"")
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg)
    assert exc.value.reason == "bad_size"


def test_unknown_and_unsupported_encoding():
    msg = _msg(height=1, width=1, encoding="yuv422_yuy2", step=2, data=bytes(2))
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg)
    assert exc.value.reason == "unknown_encoding" and "yuv422_yuy2" in str(exc.value)
    msg = _msg(height=1, width=1, encoding="32FC1", step=4, data=bytes(4))
    with pytest.raises(ConversionError) as exc:
        image_to_numpy(msg, "mask")
    assert exc.value.reason == "unsupported_encoding"
    with pytest.raises(ConversionError) as exc:
        numpy_to_image(np.zeros((2, 2), np.uint8), "bayer_rggb8")
    assert exc.value.reason == "unknown_encoding"


def test_big_endian_is_swapped():
    depth = np.array([[1, 258], [1000, 65535]], np.uint16)
    wire = depth.astype(">u2").tobytes()
    msg = _msg(height=2, width=2, encoding="16UC1", is_bigendian=1, step=4, data=wire)
    out = image_to_numpy(msg, "depth")
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, depth)
    f = np.array([[0.5, 1.25]], np.float32)
    msg = _msg(height=1, width=2, encoding="32FC1", is_bigendian=1, step=8, data=f.astype(">f4").tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), f)


def test_roles():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    msg = _msg(height=2, width=3, encoding="mono8", step=3, data=grey.tobytes())
    rgb = image_to_numpy(msg, "rgb")
    assert rgb.shape == (2, 3, 3) and (rgb == grey[..., None]).all()
    np.testing.assert_array_equal(image_to_numpy(msg, "mask"), grey)
    with pytest.raises(ValueError):
        image_to_numpy(msg, "colour")


def test_numpy_to_image_checks_and_header():
    with pytest.raises(ConversionError) as exc:
        numpy_to_image(np.zeros((2, 2, 3), np.uint8), "mono8")
    assert exc.value.reason == "bad_shape"
    with pytest.raises(ConversionError) as exc:
        numpy_to_image(np.zeros((2, 2), np.float64), "32FC1")
    assert exc.value.reason == "bad_dtype"
    if Image is None:
        pytest.skip("sensor_msgs not importable: header check needs std_msgs")
    from std_msgs.msg import Header

    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec = 12
    msg = numpy_to_image(np.zeros((2, 3, 3), np.uint8), "rgb8", header)
    assert isinstance(msg, Image) and msg.header.frame_id == "camera_color_optical_frame"
    assert msg.header.stamp.sec == 12 and msg.step == 9 and len(msg.data) == 18


def _info(k, width=640, height=480):
    if CameraInfo is None:
        return SimpleNamespace(k=list(k), width=width, height=height)
    msg = CameraInfo()
    msg.k = [float(x) for x in k]
    msg.width, msg.height = width, height
    return msg


def test_camera_info_to_K():
    k = [600.0, 0.0, 319.5, 0.0, 601.0, 239.5, 0.0, 0.0, 1.0]
    K, wh = camera_info_to_K(_info(k))
    assert wh == (640, 480) and K.shape == (3, 3) and K.dtype == np.float64
    np.testing.assert_array_equal(K.reshape(-1), k)
    for bad, kw in (
        ([0.0] * 9, {}),  # uncalibrated camera: all-zero K
        ([600.0, 0, 900.0, 0, 600.0, 239.5, 0, 0, 1], {}),  # principal point off the image
        (k, {"width": 0}),
    ):
        with pytest.raises(ConversionError) as exc:
            camera_info_to_K(_info(bad, **kw))
        assert exc.value.reason == "bad_camera_info"


def test_cv_bridge_path_matches_numpy_path(monkeypatch):
    """With a (fake, passthrough-only) cv_bridge, decoded arrays are the same as on the numpy path."""

    class FakeBridge:
        calls = 0

        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            assert desired_encoding == "passthrough"
            FakeBridge.calls += 1
            enc = ENCODINGS[msg.encoding]
            a = np.frombuffer(memoryview(msg.data), enc.dtype).reshape(msg.height, msg.width, enc.channels)
            return a[..., 0] if enc.channels == 1 else a

    monkeypatch.setitem(sys.modules, "cv_bridge", SimpleNamespace(CvBridge=FakeBridge))
    monkeypatch.setattr(conversions, "_BRIDGE_CHECKED", False)
    for encoding in ("bgr8", "rgba8", "16UC1", "32FC1", "mono8"):
        array = _sample(encoding)
        msg = numpy_to_image(array, encoding, msg_type=None if Image else SimpleNamespace)
        expected = array[..., :3] if array.ndim == 3 else array
        np.testing.assert_array_equal(image_to_numpy(msg), expected)
    assert FakeBridge.calls == 5
