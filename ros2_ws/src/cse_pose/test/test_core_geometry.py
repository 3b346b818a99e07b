"""Core: camera, crop (numpy only)."""

import subprocess
import sys

import numpy as np
import pytest

from cse_pose.core import camera, crop
from cse_pose.core.errors import (
    EmptyMaskError,
    InvalidDepthError,
    InvalidInputError,
    InvalidIntrinsicsError,
    PoseError,
)

K = np.array([[600.0, 0.0, 320.0], [0.0, 590.0, 240.0], [0.0, 0.0, 1.0]])


def test_core_imports_no_torch_or_ros():
    code = (
        "import sys, cse_pose.core as c\n"
        "import cse_pose.core.camera, cse_pose.core.crop, cse_pose.core.categories, cse_pose.core.rotation\n"
        "import cse_pose.core.correspondence, cse_pose.core.solver, cse_pose.core.pose\n"
        "import cse_pose.core.metrics\n"
        "bad = [m for m in ('torch', 'rclpy', 'onnxruntime', 'cse_train') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core pulled in {out.stdout.strip()}"


# ---------------------------------------------------------------- camera
def test_validate_intrinsics_accepts_good_and_rejects_bad():
    assert camera.validate_intrinsics(K.ravel(), 640, 480).shape == (3, 3)
    bad_cases = {
        "zero focal": np.array([[0.0, 0, 320], [0, 590, 240], [0, 0, 1]]),
        "nan": np.where(np.eye(3) > 0, np.nan, K),
        "pp outside": np.array([[600.0, 0, 900], [0, 590, 240], [0, 0, 1]]),
    }
    for name, bad in bad_cases.items():
        with pytest.raises(InvalidIntrinsicsError) as err:
            camera.validate_intrinsics(bad, 640, 480)
        assert str(err.value), name
    with pytest.raises(InvalidIntrinsicsError, match="9 numbers"):
        camera.validate_intrinsics([1.0, 2.0], 640, 480)


def test_scale_intrinsics_matches_resized_projection():
    K2 = camera.intrinsics_for_image(K, (640, 480), (320, 240))
    p = np.array([[0.1, -0.05, 0.7]])
    uv_full = camera.project(p, K)[0]
    uv_half = camera.project(p, K2)[0]
    # Pixel-centre convention: u_half = (u_full + 0.5) / 2 - 0.5.
    np.testing.assert_allclose(uv_half, (uv_full + 0.5) / 2 - 0.5, atol=1e-9)


def test_decode_depth_units_and_invalid_values():
    mm = np.array([[0, 500, 12000], [65535, 1000, 99]], dtype=np.uint16)
    d = camera.decode_depth(mm, "16UC1", min_depth_m=0.1, max_depth_m=10.0)
    np.testing.assert_allclose(d, [[0, 0.5, 0], [0, 1.0, 0]], atol=1e-6)
    assert d.dtype == np.float32
    m = np.array([[np.nan, np.inf, -1.0, 0.0, 2.5]], dtype=np.float32)
    np.testing.assert_array_equal(camera.decode_depth(m, "32FC1"), [[0, 0, 0, 0, 2.5]])
    with pytest.raises(InvalidDepthError, match="encoding"):
        camera.decode_depth(mm, "rgb8")
    with pytest.raises(InvalidDepthError, match="float32"):
        camera.decode_depth(mm, "32FC1")


@pytest.mark.parametrize("min_m, max_m", [(0.1, 10.0), (0.0, 10.0), (0.5, 3.0), (0.3, 0.301), (0.25, 65.535)])
def test_decode_depth_millimetres_keep_exactly_the_samples_in_range(min_m, max_m):
    """The uint16 path (scaling + in-place thresholds) keeps a sample iff min <= z <= max and z > 0, with z the
    float32 metres, at the range's ends too."""
    rng = np.random.default_rng(3)
    mm = rng.integers(0, 65536, (48, 64)).astype(np.uint16)
    ends = [0, 1, 100, 250, 299, 300, 301, 302, 500, 3000, 3001, 9999, 10000, 10001, 65535]
    mm[0, : len(ends)] = ends
    z = mm.astype(np.float32) * np.float32(0.001)
    keep = (z >= min_m) & (z <= max_m) & (z > 0)
    d = camera.decode_depth(mm, "16UC1", min_depth_m=min_m, max_depth_m=max_m)
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, np.where(keep, z, np.float32(0)))


def test_backproject_inverts_project():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-0.3, 0.3, (50, 2)), rng.uniform(0.3, 2.0, 50)]
    uv = camera.project(pts, K)
    np.testing.assert_allclose(camera.backproject(uv[:, 0], uv[:, 1], pts[:, 2], K), pts, atol=1e-12)
    with pytest.raises(InvalidInputError):
        camera.backproject([1.0, 2.0], [1.0], [1.0], K)


# ---------------------------------------------------------------- crop
def test_crop_box_matches_reference_integer_arithmetic():
    mask = np.zeros((480, 640), bool)
    mask[100:181, 200:331] = True  # x 200..330, y 100..180
    box = crop.crop_box_from_mask(mask, 128)
    assert (box.center_x, box.center_y) == ((200 + 330) // 2, (100 + 180) // 2)
    assert (box.half_x, box.half_y) == (int(1.35 * (130 // 2)), int(1.35 * (80 // 2)))


def test_crop_matches_torch_resized_crop_with_padding():
    torch = pytest.importorskip("torch", reason="torch is the reference implementation of the resampling")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    img = rng.random((48, 64, 3)).astype(np.float32)
    mask = np.zeros((48, 64), bool)
    mask[3:30, 44:63] = True  # near the border: the crop leaves the image
    box = crop.crop_box_from_mask(mask, 32)
    patch = np.zeros((2 * box.half_y, 2 * box.half_x, 3), np.float32)
    for yy in range(patch.shape[0]):
        for xx in range(patch.shape[1]):
            y, x = box.y0 + yy, box.x0 + xx
            if 0 <= y < 48 and 0 <= x < 64:
                patch[yy, xx] = img[y, x]
    t = torch.from_numpy(patch).permute(2, 0, 1)[None]
    ref_bl = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    ref_nn = F.interpolate(t, size=(32, 32), mode="nearest")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(crop.crop_image(img, box, "bilinear"), ref_bl, atol=1e-6)
    np.testing.assert_array_equal(crop.crop_image(img, box, "nearest"), ref_nn)
    ref_ne = F.interpolate(t, size=(32, 32), mode="nearest-exact")[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(crop.crop_image(img, box, "nearest-exact"), ref_ne)
    m = rng.random((32, 32)) > 0.5
    ref_m = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(8, 8), mode="nearest")
    np.testing.assert_array_equal(crop.downsample_mask(m, 8), ref_m[0, 0].numpy() > 0)


def test_crop_round_trip_projection_agrees():
    """A 3D point projected into the full image and into the crop (crop K) lands on the same spot."""
    rng = np.random.default_rng(2)
    mask = np.zeros((480, 640), bool)
    mask[150:260, 280:420] = True
    box = crop.crop_box_from_mask(mask, 128)
    Kc = crop.crop_intrinsics(K, box)
    for _ in range(20):
        p = np.array([rng.uniform(-0.05, 0.1), rng.uniform(-0.05, 0.05), rng.uniform(0.5, 1.0)])
        x, y = camera.project(p[None], K)[0]
        u, v = camera.project(p[None], Kc)[0]
        # Crop K follows the reference: crop coordinate u <-> image x0 + u * 2l / S.
        assert abs(box.x0 + u * 2 * box.half_x / box.size - x) < 0.5
        assert abs(box.y0 + v * 2 * box.half_y / box.size - y) < 0.5
        # And the pixel that contains it maps back (crop_to_image) within half a crop pixel.
        xb, yb = crop.crop_to_image(np.floor(u), np.floor(v), box)
        assert abs(xb - x) <= 0.5 * 2 * box.half_x / box.size + 1e-9
        assert abs(yb - y) <= 0.5 * 2 * box.half_y / box.size + 1e-9


def test_crop_dot_lands_where_crop_intrinsics_say():
    """Resampling and crop intrinsics agree: a bright pixel appears at its crop-K projection (+- 1 px)."""
    img = np.zeros((480, 640), np.float32)
    img[200, 350] = 1.0
    mask = np.zeros((480, 640), bool)
    mask[180:230, 300:380] = True
    box = crop.crop_box_from_mask(mask, 256)  # upsampling: the dot spreads over a few crop pixels
    out = crop.crop_image(img, box)
    v, u = np.unravel_index(np.argmax(out), out.shape)
    Kc = crop.crop_intrinsics(K, box)
    p = camera.backproject([350.0], [200.0], [1.0], K)
    uc, vc = camera.project(p, Kc)[0]
    assert abs(u - uc) <= 1.5 and abs(v - vc) <= 1.5


def test_crop_bad_inputs_raise_project_errors():
    with pytest.raises(EmptyMaskError, match="empty"):
        crop.crop_box_from_mask(np.zeros((10, 10)), 32)
    one = np.zeros((10, 10))
    one[4, 4] = 1
    with pytest.raises(EmptyMaskError, match="too small"):
        crop.crop_box_from_mask(one, 32)
    with pytest.raises(InvalidInputError):
        crop.crop_box_from_mask(np.zeros((2, 3, 4)), 32)
    with pytest.raises(InvalidInputError):
        crop.crop_image(np.zeros((4, 4)), crop.CropBox(2, 2, 1, 1, 4), "cubic")
    with pytest.raises(InvalidIntrinsicsError):
        crop.crop_intrinsics(np.zeros((3, 3)), crop.CropBox(2, 2, 1, 1, 4))
    assert issubclass(EmptyMaskError, PoseError)


def test_ndc_grid_cell_centres():
    g = crop.ndc_grid(4)
    np.testing.assert_allclose(g[0], [-0.75, -0.75])
    np.testing.assert_allclose(g[1], [-0.25, -0.75])  # row-major: x varies fastest
    np.testing.assert_allclose(g[-1], [0.75, 0.75])
