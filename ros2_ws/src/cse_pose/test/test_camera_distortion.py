"""Lens distortion and CameraInfo/image size checks of ``cse_pose.core.camera``, against OpenCV's own functions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cse_pose.core import camera
from cse_pose.core.errors import InvalidIntrinsicsError

K = np.array([[520.0, 0.0, 331.0], [0.0, 515.0, 236.0], [0.0, 0.0, 1.0]])
PLUMB_BOB = [-0.28, 0.09, 0.0012, -0.0008, -0.012]
RATIONAL = [0.45, -0.08, 0.0007, 0.0011, -0.005, 0.78, -0.02, -0.015]


def test_distortion_coefficients_models_and_refusals():
    assert camera.distortion_coefficients("plumb_bob", [0.0] * 5) is None
    assert camera.distortion_coefficients("", []) is None
    assert camera.distortion_coefficients("equidistant", [0.0] * 4) is None  # no distortion: any model
    np.testing.assert_array_equal(camera.distortion_coefficients("plumb_bob", PLUMB_BOB), PLUMB_BOB + [0.0] * 3)
    np.testing.assert_array_equal(camera.distortion_coefficients("plumb_bob", PLUMB_BOB[:4]),
                                  PLUMB_BOB[:4] + [0.0] * 4)
    np.testing.assert_array_equal(camera.distortion_coefficients("rational_polynomial", RATIONAL), RATIONAL)
    np.testing.assert_array_equal(camera.distortion_coefficients("rational_polynomial", RATIONAL + [0.0] * 6),
                                  RATIONAL)
    for model, d in (("equidistant", [0.1, 0.0, 0.0, 0.0]), ("plumb_bob", PLUMB_BOB + [0.3, 0.0, 0.0]),
                     ("rational_polynomial", RATIONAL + [0.01])):
        with pytest.raises(camera.UnsupportedDistortionError) as err:
            camera.distortion_coefficients(model, d)
        assert err.value.reason == "unsupported_distortion" and model in str(err.value)
    with pytest.raises(InvalidIntrinsicsError):
        camera.distortion_coefficients("plumb_bob", [np.nan, 0, 0, 0, 0])


@pytest.mark.parametrize("D", [PLUMB_BOB, RATIONAL])
def test_distort_normalized_matches_opencv_projection(D):
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.6, 0.6, 200), rng.uniform(-0.45, 0.45, 200), np.ones(200)])
    uv_cv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, np.asarray(D, np.float64))
    xd, yd = camera.distort_normalized(pts[:, 0], pts[:, 1], camera.distortion_coefficients(
        "plumb_bob" if len(D) == 5 else "rational_polynomial", D))
    uv = np.column_stack([K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]])
    np.testing.assert_allclose(uv, uv_cv.reshape(-1, 2), atol=1e-6)


@pytest.mark.parametrize("D", [PLUMB_BOB, RATIONAL])
def test_rectify_maps_match_opencv_and_invert_undistort_points(D):
    D8 = camera.distortion_coefficients("plumb_bob" if len(D) == 5 else "rational_polynomial", D)
    map_u, map_v = camera.rectify_maps(K, D8, 640, 480)
    cv_u, cv_v = cv2.initUndistortRectifyMap(K, np.asarray(D), None, K, (640, 480), cv2.CV_32FC1)
    assert np.abs(map_u - cv_u).max() < 1e-3 and np.abs(map_v - cv_v).max() < 1e-3
    # the rectified pixel p samples the distorted image at map(p); undistorting map(p) gives p back
    v, u = np.mgrid[40:440:37, 40:600:41]
    src = np.stack([map_u[v, u], map_v[v, u]], -1).reshape(-1, 1, 2).astype(np.float64)
    back = cv2.undistortPoints(src, K, np.asarray(D), P=K,
                               criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    np.testing.assert_allclose(back.reshape(-1, 2), np.stack([u, v], -1).reshape(-1, 2), atol=2e-3)


def test_rectifier_resamples_nearest_and_linear_with_zero_outside():
    pincushion = camera.distortion_coefficients("plumb_bob", [0.25, 0.05, 0.0, 0.0, 0.0])
    rect = camera.Rectifier.create(K, pincushion, 640, 480)  # the rectified corners lie outside the image
    assert rect.shape == (480, 640)
    ids = np.arange(480 * 640, dtype=np.int32).reshape(480, 640)  # every pixel its own value
    out = rect.nearest(ids)
    v, u = 100, 500
    assert out[v, u] == int(np.rint(rect.map_v[v, u])) * 640 + int(np.rint(rect.map_u[v, u]))
    assert out.dtype == np.int32 and (out[~rect.inside] == 0).all() and (~rect.inside).any()
    ramp = np.tile(np.arange(640, dtype=np.float32), (480, 1))  # value = column: bilinear gives map_u
    lin = rect.linear(ramp)
    inner = rect.inside & (rect.map_u > 1) & (rect.map_u < 638) & (rect.map_v > 1) & (rect.map_v < 478)
    assert np.abs(lin[inner] - rect.map_u[inner]).max() < 0.05
    rgb = np.zeros((480, 640, 3), np.uint8)[:, ::-1]  # negative-stride view, as decoded BGR images are
    assert rect.linear(rgb).shape == (480, 640, 3)
    with pytest.raises(Exception, match="does not match"):
        rect.nearest(ids[:10])


def test_intrinsics_for_image_scales_exact_ratios_and_refuses_other_sizes():
    K_full = np.array([[1040.0, 0.0, 639.5], [0.0, 1040.0, 479.5], [0.0, 0.0, 1.0]])
    half = camera.intrinsics_for_image(K_full, (1280, 960), (640, 480))
    np.testing.assert_allclose(half[[0, 1, 0, 1], [0, 1, 2, 2]], [520.0, 520.0, 319.5, 239.5])
    third = camera.intrinsics_for_image(K_full[:, :] * [[1.5], [1.125], [1]], (1920, 1080), (640, 360))
    assert third[0, 0] == pytest.approx(1040.0 * 1.5 / 3)
    same = camera.intrinsics_for_image(K_full, (1280, 960), (1280, 960))
    np.testing.assert_array_equal(same, K_full)
    K_wide = np.array([[520.0, 0.0, 319.5], [0.0, 520.0, 179.5], [0.0, 0.0, 1.0]])
    with pytest.raises(camera.CameraInfoMismatchError) as err:
        camera.intrinsics_for_image(K_wide, (640, 360), (640, 480))  # 16:9 calibration, 4:3 image
    assert err.value.reason == "camera_info_size_mismatch" and "640x360" in str(err.value)
    with pytest.raises(camera.CameraInfoMismatchError):
        camera.intrinsics_for_image(K_full, (1280, 960), (641, 480))
