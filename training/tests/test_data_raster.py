"""Tests of the numpy z-buffer rasteriser (cse_pose.core.raster; it renders training's synthetic frames)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cse_pose.core.raster import RasterMesh, rasterize
from cse_train.shapes import build_shape

K = np.array([[150.0, 0.0, 79.5], [0.0, 140.0, 59.5], [0.0, 0.0, 1.0]])
W, H = 160, 120


def _brute_force_depth(meshes: list[RasterMesh], K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per-triangle Python reference: pixel centres inside the projected triangle, nearest 1/z wins."""
    uu, vv = np.meshgrid(np.arange(width), np.arange(height))
    inv = np.zeros((height, width))
    for m in meshes:
        for f in np.asarray(m.faces):
            P = np.asarray(m.vertices_cam, float)[f]
            u = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]
            v = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
            A = np.array([[u[1] - u[0], u[2] - u[0]], [v[1] - v[0], v[2] - v[0]]])
            if abs(np.linalg.det(A)) < 1e-12:
                continue
            b = np.einsum("ij,jhw->ihw", np.linalg.inv(A), np.stack([uu - u[0], vv - v[0]]))
            inside = (b[0] >= -1e-9) & (b[1] >= -1e-9) & (b[0] + b[1] <= 1 + 1e-9)
            iz = (1 - b[0] - b[1]) / P[0, 2] + b[0] / P[1, 2] + b[1] / P[2, 2]
            upd = inside & (iz > inv)
            inv[upd] = iz[upd]
    return np.where(inv > 0, 1.0 / np.maximum(inv, 1e-12), 0.0)


def _object(category: str, offset: tuple[float, float, float], yaw: float, inst: int) -> RasterMesh:
    mesh = build_shape(category, resolution=16)
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag([1.0, -1.0, -1.0])  # y up -> image up
    v = mesh.vertices.astype(np.float64) @ R.T + np.asarray(offset)
    return RasterMesh(v, mesh.faces, v.copy(), inst)


def test_matches_brute_force_depth_and_coverage() -> None:
    meshes = [_object("mug", (-0.05, 0.0, 0.5), 0.3, 1), _object("bottle", (0.06, 0.0, 0.62), 1.0, 2),
              _object("camera", (0.0, 0.05, 0.45), 2.0, 3)]
    out = rasterize(meshes, K, W, H)
    ref = _brute_force_depth(meshes, K, W, H)
    cov, ref_cov = out.depth_m > 0, ref > 0
    # Pixel centres exactly on a shared edge may go either way; allow a handful.
    assert (cov != ref_cov).sum() <= 3
    both = cov & ref_cov
    assert np.abs(out.depth_m[both] - ref[both]).max() < 1e-5
    assert set(np.unique(out.instance_id)) == {0, 1, 2, 3}
    assert ((out.mesh_index >= 0) == cov).all() and ((out.face_index >= 0) == cov).all()
    # Culling back faces of closed meshes changes nothing visible.
    culled = rasterize(meshes, K, W, H, cull_backfaces=True)
    assert (culled.instance_id != out.instance_id).sum() <= 3


def test_attributes_are_perspective_correct_and_near_clipping() -> None:
    # A tilted floor plane y = 0.2 (camera frame) from z = -1 (behind the camera) to z = 5: clipping
    # must keep the visible part, and the interpolated attribute (the 3D point) must match the ray.
    v = np.array([[-3.0, 0.2, -1.0], [3.0, 0.2, -1.0], [3.0, 0.2, 5.0], [-3.0, 0.2, 5.0]])
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    out = rasterize([RasterMesh(v, faces, v.copy(), 7)], K, W, H, near=0.05)
    rows = np.arange(H)[:, None].repeat(W, 1)
    expected = rows > K[1, 2] + K[1, 1] * 0.2 / 5.0 + 1  # below the plane's far edge
    covered = out.depth_m > 0
    assert covered[expected].all()
    assert not covered[rows < K[1, 2]].any()  # the floor never appears above the horizon
    uu, vv = np.meshgrid(np.arange(W), np.arange(H))
    z = out.depth_m[covered]
    np.testing.assert_allclose(z, 0.2 * K[1, 1] / (vv[covered] - K[1, 2]), rtol=1e-4)
    pts = out.attributes[covered]
    np.testing.assert_allclose(pts[:, 2], z, rtol=1e-4)
    np.testing.assert_allclose(pts[:, 0], (uu[covered] - K[0, 2]) / K[0, 0] * z, atol=1e-4)
    np.testing.assert_allclose(pts[:, 1], 0.2, atol=1e-5)


def test_speed_640x480_five_objects_and_table() -> None:
    K640 = np.array([[560.0, 0, 319.5], [0, 560.0, 239.5], [0, 0, 1]])
    meshes = []
    for i, (cat, x) in enumerate(zip(["mug", "bottle", "bowl", "can", "camera"], np.linspace(-0.2, 0.2, 5),
                                     strict=True)):
        m = build_shape(cat, resolution=60)
        v = m.vertices.astype(np.float64) @ np.diag([1.0, -1.0, -1.0]).T + np.array([x, 0.0, 0.7])
        meshes.append(RasterMesh(v, m.faces, v.copy(), i + 1))
    table = np.array([[-2.0, 0.12, -1.0], [2.0, 0.12, -1.0], [2.0, 0.12, 4.0], [-2.0, 0.12, 4.0]])
    meshes.append(RasterMesh(table, np.array([[0, 2, 1], [0, 3, 2]]), table.copy(), 9))
    assert sum(len(m.faces) for m in meshes[:5]) > 8000
    rasterize(meshes, K640, 640, 480)
    best = min(_timed(lambda: rasterize(meshes, K640, 640, 480)) for _ in range(3))
    assert best < 0.5, f"{best:.3f} s per 640x480 frame"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


_O3D_SCRIPT = r"""
import os, sys, numpy as np
os.environ["OPEN3D_CPU_RENDERING"] = "true"
import open3d as o3d
from cse_train.shapes import build_shape
from cse_pose.core.raster import RasterMesh, rasterize
W, H = 160, 120
K = np.array([[150.0, 0, 79.5], [0, 140.0, 59.5], [0, 0, 1]])
m = build_shape("mug", resolution=32)
v = m.vertices.astype(np.float64) @ np.diag([1.0, -1.0, -1.0]).T + np.array([0.0, 0.0, 0.4])
ours = rasterize([RasterMesh(v, m.faces)], K, W, H).depth_m
r = o3d.visualization.rendering.OffscreenRenderer(W, H)
tm = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(m.faces.astype(np.int32)))
mat = o3d.visualization.rendering.MaterialRecord()
mat.shader = "defaultUnlit"
r.scene.add_geometry("m", tm, mat)
# open3d / filament put pixel centres at half-integer coordinates; ours (OpenCV) at integers.
intr = o3d.camera.PinholeCameraIntrinsic(W, H, K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5)
r.setup_camera(intr, np.eye(4))
d = np.asarray(r.render_to_depth_image(z_in_view_space=True))
d = np.where(np.isfinite(d), d, 0.0)
both = (d > 0) & (ours > 0)
print("IOU", both.sum() / max(((d > 0) | (ours > 0)).sum(), 1), "MED", float(np.median(np.abs(d - ours)[both])))
"""


@pytest.mark.skipif(os.environ.get("CSE_SKIP_OPEN3D") == "1", reason="CSE_SKIP_OPEN3D=1")
def test_depth_agrees_with_open3d_offscreen_renderer() -> None:
    """Optional: open3d's CPU offscreen renderer (EGL/OSMesa) gives the same depth; skipped if unavailable."""
    try:
        proc = subprocess.run([sys.executable, "-c", _O3D_SCRIPT], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "OPEN3D_CPU_RENDERING": "true"})
    except subprocess.TimeoutExpired:
        pytest.skip("open3d offscreen renderer timed out")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("IOU")]
    if not line:
        pytest.skip(f"open3d offscreen rendering unavailable here: {(proc.stderr or proc.stdout)[-300:]}")
    _, iou, _, med = line[0].split()
    assert float(iou) > 0.995
    assert float(med) < 1e-5
