"""Tests of the torch soft rasteriser (``cse_train.render``).

Ground truths: per-pixel ray casting against an exact box and sphere (closed form), and open3d's
offscreen renderer (Filament, CPU/llvmpipe) run in a subprocess on the same mesh and camera.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cse_train.render import (
    DEPTH,
    HARD_TEXTURE,
    MASK,
    SOFT_TEXTURE,
    RenderSettings,
    render,
    vertex_visibility,
)

H, W = 480, 640
K_NP = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])
DEPTH_TOL_M = 2e-3
IOU_MIN = 0.97


# ----------------------------------------------------------------------------------------------- meshes
def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` (rad) about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _box(half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box centred at the origin: vertices (8, 3), faces (12, 3) outward."""
    v = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * half
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [[a, b, c] for a, b, c, _ in quads] + [[a, c, d] for a, _, c, d in quads]
    return v, np.array(f, np.int64)


def _icosphere(subdiv: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices (N, 3) on the sphere, faces (20·4^subdiv, 3)."""
    p = (1 + 5**0.5) / 2
    v = [[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p],
         [0, -1, -p], [0, 1, -p], [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]]  # fmt: skip
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
         [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    verts = [np.array(x, float) / np.linalg.norm(x) for x in v]

    def mid(a: int, b: int, cache: dict[tuple[int, int], int]) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = verts[a] + verts[b]
            verts.append(m / np.linalg.norm(m))
            cache[key] = len(verts) - 1
        return cache[key]

    for _ in range(subdiv):
        c_: dict[tuple[int, int], int] = {}
        f = [
            t
            for a, b, c in f
            for ab, bc, ca in [(mid(a, b, c_), mid(b, c, c_), mid(c, a, c_))]
            for t in ([a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca])
        ]
    return np.array(verts), np.array(f, np.int64)


# ------------------------------------------------------------------------------ analytic ground truth
def _rays(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w, 3) ray directions with z = 1 through the pixel centres (pixel (i, j) at u = j, v = i)."""
    v, u = np.mgrid[0:h, 0:w].astype(float)
    return np.stack(((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)), -1)


def _box_truth(half: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab-method ray casting of the box ``R·[-half, half] + t``: hit mask (H, W), depth z in metres."""
    d = _rays(K_NP, H, W) @ R  # Rᵀ d, ray directions in the box frame
    o = -R.T @ t
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_near = np.nanmax(np.minimum(t1, t2), -1)
    t_far = np.nanmin(np.maximum(t1, t2), -1)
    hit = (t_near <= t_far) & (t_far > 0)
    return hit, np.where(hit, t_near, 0.0)  # ray z component is 1, so ray parameter = depth


def _sphere_truth(center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray casting of a sphere: hit mask (H, W), depth z of the front intersection."""
    d = _rays(K_NP, H, W)
    a = (d * d).sum(-1)
    b = -2 * d @ center
    c = center @ center - radius**2
    disc = b * b - 4 * a * c
    hit = disc >= 0
    s = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
    return hit, np.where(hit, s, 0.0)


@functools.cache
def _scenes() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (vertices_cam (N,3) m, faces (F,3), truth hit (H,W), truth depth (H,W))."""
    half = np.array([0.05, 0.03, 0.04])
    R = _rotation((1.0, 0.5, 0.2), 0.6)
    t = np.array([0.02, -0.01, 0.5])
    vb, fb = _box(half)
    hb, zb = _box_truth(half, R, t)
    center, radius = np.array([-0.01, 0.015, 0.5]), 0.05
    vs, fs = _icosphere(3)
    hs, zs = _sphere_truth(center, radius)
    return {
        "box": (vb @ R.T + t, fb, hb, zb),
        "sphere": (vs * radius + center, fs, hs, zs),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _render_np(vertices: np.ndarray, faces: np.ndarray, settings: RenderSettings = MASK):
    out = render(
        torch.tensor(vertices, dtype=torch.float32)[None],
        torch.tensor(faces),
        torch.tensor(K_NP, dtype=torch.float32),
        (H, W),
        settings=settings,
    )
    return out


# --------------------------------------------------------------------------------------------- tests
def test_settings_match_reference_table() -> None:
    """docs/reference.md §3.4: sigma, gamma, aggregation, background of the four SoftRas renderers."""
    assert (MASK.sigma, MASK.gamma, MASK.aggregation, MASK.background) == (1e-4, 1e-4, "hard", 0.0)
    assert (DEPTH.sigma, DEPTH.gamma, DEPTH.aggregation, DEPTH.background) == (1e-4, 1e-4, "softmax", 1.0)
    assert (SOFT_TEXTURE.sigma, SOFT_TEXTURE.gamma, SOFT_TEXTURE.aggregation) == (1e-3, 1e-2, "softmax")
    assert (HARD_TEXTURE.sigma, HARD_TEXTURE.gamma, HARD_TEXTURE.aggregation) == (1e-4, 1e-3, "hard")
    assert all(s.fill_back for s in (MASK, DEPTH, SOFT_TEXTURE, HARD_TEXTURE))


@pytest.mark.parametrize("name", ["box", "sphere"])
def test_matches_analytic_silhouette_and_depth(name: str) -> None:
    vertices, faces, hit, z_true = _scenes()[name]
    out = _render_np(vertices, faces)
    mask = out.mask[0].numpy()
    depth = out.depth[0].detach().numpy()
    iou = _iou(mask, hit)
    both = mask & hit
    med = float(np.median(np.abs(depth[both] - z_true[both])))
    print(f"{name}: IoU {iou:.4f}, median |dz| {med * 1e3:.4f} mm over {both.sum()} px")
    assert hit.sum() > 3000
    assert iou >= IOU_MIN
    assert med <= DEPTH_TOL_M
    assert np.all(depth[~mask] == 0)


@pytest.mark.parametrize("name", ["box", "sphere"])
def test_soft_alpha_covers_object_and_stops_at_threshold(name: str) -> None:
    """alpha > 0.5 on the object; exactly 0 beyond the SoftRas distance threshold (D < dist_eps)."""
    vertices, faces, hit, _ = _scenes()[name]
    alpha = _render_np(vertices, faces).alpha[0].detach().numpy()
    margin_px = math.sqrt(MASK.threshold_ndc2) / (2.0 / max(H, W))
    dist_out = ndimage.distance_transform_edt(~hit)
    assert np.all(alpha[hit] > 0.5)
    assert np.all(alpha[dist_out > margin_px + 1.0] == 0.0)
    assert alpha[(dist_out > 0) & (dist_out < 1.5)].max() > 0.1  # soft edge exists


_OPEN3D_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import numpy as np
    os.environ["OPEN3D_CPU_RENDERING"] = "true"
    import open3d as o3d
    data = np.load(sys.argv[1])
    K = data["K"].copy()
    # open3d casts the ray of pixel (i, j) through (j + 0.5, i + 0.5); ours through (j, i).
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    h, w = int(data["hw"][0]), int(data["hw"][1])
    r = o3d.visualization.rendering.OffscreenRenderer(w, h)
    mat = o3d.visualization.rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(data["vertices"]), o3d.utility.Vector3iVector(data["faces"]))
    r.scene.add_geometry("mesh", mesh, mat)
    r.setup_camera(K, np.eye(4), w, h)
    depth = np.asarray(r.render_to_depth_image(z_in_view_space=True))
    np.save(sys.argv[2], depth)
    """
)


def _open3d_depth(vertices: np.ndarray, faces: np.ndarray, tmp: Path) -> np.ndarray:
    """Depth (H, W) in metres (inf = empty) from open3d in a subprocess; skips with the reason on failure."""
    if importlib.util.find_spec("open3d") is None:
        pytest.skip("open3d is not installed")
    np.savez(tmp / "in.npz", vertices=vertices, faces=faces.astype(np.int32), K=K_NP, hw=np.array([H, W]))
    env = dict(os.environ, OPEN3D_CPU_RENDERING="true")
    cmd = [sys.executable, "-c", _OPEN3D_SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npy")]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("open3d offscreen rendering timed out after 120 s")
    if proc.returncode != 0 or not (tmp / "out.npy").exists():
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(f"open3d offscreen rendering failed (rc {proc.returncode}): {json.dumps(reason)}")
    return np.load(tmp / "out.npy")


@pytest.mark.parametrize("name", ["box", "sphere"])
def test_matches_open3d_renderer(name: str, tmp_path: Path) -> None:
    vertices, faces, _, _ = _scenes()[name]
    ref = _open3d_depth(vertices, faces, tmp_path)
    assert ref.shape == (H, W)
    ref_mask = np.isfinite(ref) & (ref > 0)
    out = _render_np(vertices, faces)
    mask = out.mask[0].numpy()
    depth = out.depth[0].detach().numpy()
    both = mask & ref_mask
    iou = _iou(mask, ref_mask)
    med = float(np.median(np.abs(depth[both] - ref[both])))
    print(f"{name} vs open3d: IoU {iou:.4f}, median |dz| {med * 1e3:.4f} mm")
    assert ref_mask.sum() > 3000
    assert iou >= IOU_MIN
    assert med <= DEPTH_TOL_M


def _two_triangles(near_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two overlapping triangles at z = 2 (near) and z = 3 (far), colours red / blue; 32×32 camera."""
    near = torch.tensor([[-0.6, -0.5, 2.0], [0.5, -0.6, 2.0], [0.0, 0.6, 2.0]])
    far = torch.tensor([[-0.4, -0.9, 3.0], [1.2, -0.3, 3.0], [-0.2, 1.0, 3.0]])
    verts = torch.cat((near, far) if near_first else (far, near))[None]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    colours = torch.stack([red] * 3 + [blue] * 3 if near_first else [blue] * 3 + [red] * 3)[None]
    return verts, faces, colours


K_SMALL = torch.tensor([[20.0, 0.0, 15.5], [0.0, 20.0, 15.5], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("near_first", [True, False])
def test_hard_aggregation_picks_nearest_surface(near_first: bool) -> None:
    verts, faces, colours = _two_triangles(near_first)
    near_id = 0 if near_first else 1
    out = render(verts, faces, K_SMALL, (32, 32), attributes=colours, settings=HARD_TEXTURE)
    soft = render(verts, faces, K_SMALL, (32, 32), attributes=colours, settings=DEPTH)
    far_only = render(verts[:, 3:] if near_first else verts[:, :3], faces[:1], K_SMALL, (32, 32))
    near_only = render(verts[:, :3] if near_first else verts[:, 3:], faces[:1], K_SMALL, (32, 32))
    overlap = far_only.mask[0] & near_only.mask[0]
    assert overlap.sum() > 20
    assert torch.all(out.face_index[0][overlap] == near_id)
    assert torch.allclose(out.depth[0][overlap], torch.tensor(2.0), atol=1e-5)
    assert torch.allclose(out.attributes[0, 0][overlap], torch.tensor(1.0), atol=1e-6)  # red wins
    assert torch.all(out.attributes[0, 2][overlap] == 0)
    # Softmax with gamma 1e-4: the far face's weight is e^{-100} of the near one's inside the overlap.
    assert torch.allclose(soft.attributes[0, 0][overlap], torch.tensor(1.0), atol=1e-4)
    # The far face still shows where the near one is absent.
    far_vis = far_only.mask[0] & ~near_only.mask[0]
    assert far_vis.sum() > 20
    assert torch.allclose(out.depth[0][far_vis], torch.tensor(3.0), atol=1e-5)


def _sphere_scene(batch: int = 1, size: int = 64, radius: float = 1.0, z: float = 4.0):
    v, f = _icosphere(2)
    verts = torch.tensor(v * radius, dtype=torch.float32)[None].repeat(batch, 1, 1)
    verts = verts + torch.tensor([0.1, -0.05, z])
    focal = size * 1.2
    K = torch.tensor([[focal, 0.0, (size - 1) / 2], [0.0, focal, (size - 1) / 2], [0.0, 0.0, 1.0]])
    return verts, torch.tensor(f), K


def _backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[H, W] depth → [H, W, 3] camera points, pixel (i, j) at (u, v) = (j, i)."""
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype), indexing="ij")
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return torch.stack((x, y, depth), -1)


def test_hard_attributes_reproduce_linear_function_of_position() -> None:
    verts, faces, K = _sphere_scene()
    A = torch.tensor([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3]])
    b = torch.tensor([0.2, -0.1])
    attr = verts @ A.T + b
    out = render(verts, faces, K, (64, 64), attributes=attr, settings=HARD_TEXTURE, hard_attributes=attr)
    mask = out.mask[0]
    assert mask.sum() > 500
    expected = _backproject(out.depth[0], K) @ A.T + b  # [H, W, 2]
    for got in (out.attributes[0], out.hard_attributes[0]):
        err = (got.permute(1, 2, 0)[mask] - expected[mask]).abs().max()
        assert err < 1e-4
    assert torch.all(out.attributes[0][:, ~mask] == HARD_TEXTURE.background)


def test_softmax_attributes_exact_inside_single_face() -> None:
    """Deep inside one face (beyond the D threshold from every edge), softmax = the interpolated value."""
    verts = torch.tensor([[[-1.5, -1.2, 3.0], [1.4, -1.0, 4.0], [0.1, 1.5, 3.5]]])
    faces = torch.tensor([[0, 1, 2]])
    attr = verts @ torch.tensor([[0.5, -0.25, 0.3]]).T + 0.1
    K = torch.tensor([[25.0, 0.0, 15.5], [0.0, 25.0, 15.5], [0.0, 0.0, 1.0]])
    out = render(verts, faces, K, (32, 32), attributes=attr, settings=SOFT_TEXTURE)
    margin_px = math.sqrt(SOFT_TEXTURE.threshold_ndc2) / (2.0 / 32)
    core = torch.from_numpy(ndimage.distance_transform_edt(out.mask[0].numpy()) > margin_px + 1.5)
    assert core.sum() > 10
    expected = _backproject(out.depth[0], K) @ torch.tensor([0.5, -0.25, 0.3]) + 0.1
    assert (out.attributes[0, 0][core] - expected[core]).abs().max() < 1e-4
    assert torch.allclose(out.alpha[0][core], torch.tensor(1.0))


def test_gradcheck_tiny_scene() -> None:
    """Analytic gradients (autograd through the kernels and checkpointing) vs finite differences."""
    verts0, faces, colours = _two_triangles(True)
    verts0 = verts0.double() + 0.0123
    colours = colours.double() + 0.1 * torch.arange(18, dtype=torch.float64).reshape(1, 6, 3)
    settings = RenderSettings(sigma=3e-2, gamma=5e-2, aggregation="softmax", background=0.5)
    K = torch.tensor([[4.1, 0.0, 4.3], [0.0, 4.2, 3.6], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def fn(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = render(v, faces, K, (8, 9), attributes=c, settings=settings, hard_attributes=c, chunk_pairs=37)
        return torch.cat((out.alpha.flatten(), out.attributes.flatten(), out.depth.flatten(),
                          out.hard_attributes.flatten()))  # fmt: skip

    v = verts0.clone().requires_grad_()
    c = colours.clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (v, c), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("settings", [MASK, DEPTH, SOFT_TEXTURE], ids=["mask", "depth", "soft"])
def test_analytic_backward_matches_autograd(settings: RenderSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-derived soft-pass backward equals autograd through the same kernels (float64)."""
    import cse_train.render as render_module

    verts, faces, K = _sphere_scene(batch=2, size=48)
    verts = (verts + torch.tensor([[[0.0, 0.0, 0.0]], [[0.3, 0.1, 0.5]]])).double()
    colours = torch.rand(verts.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = torch.rand(2, 4, 48, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for analytic in (True, False):
        monkeypatch.setattr(render_module, "_ANALYTIC_BACKWARD", analytic)
        v = verts.clone().requires_grad_()
        c = colours.clone().requires_grad_()
        out = render(v, faces, K.double(), (48, 48), attributes=c, settings=settings, chunk_pairs=3000)
        ((out.alpha * weights[:, 0]).sum() + (out.attributes * weights[:, 1:]).sum()).backward()
        grads.append((v.grad, c.grad))
    for a, b in zip(*grads, strict=True):
        assert b.abs().max() > 0
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


@pytest.mark.parametrize("settings", [MASK, SOFT_TEXTURE], ids=["mask", "soft"])
def test_pair_enumeration_misses_nothing(settings: RenderSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Growing the enumerated region by 3 px (pairs the kernels then reject) changes nothing."""
    import cse_train.render as render_module

    verts, faces, K = _sphere_scene(batch=2, size=64)
    verts = verts + torch.tensor([[[0.0, 0.0, 0.0]], [[0.3, 0.1, 0.5]]])
    box_v, box_f = _box(np.array([0.3, 0.2, 0.25]))  # axis-aligned edges exercise the degenerate cases
    box_v = torch.tensor(box_v, dtype=torch.float32) + torch.tensor([-0.5, 0.4, 2.5])
    verts = torch.cat((verts, box_v[None].expand(2, -1, -1)), 1)
    faces = torch.cat((faces, torch.tensor(box_f) + _sphere_scene()[0].shape[1]))
    colours = torch.rand(verts.shape, generator=torch.Generator().manual_seed(0))
    ref = render(verts, faces, K, (64, 64), attributes=colours, settings=settings)
    make_plan = render_module._make_plan
    monkeypatch.setattr(render_module, "_make_plan", lambda uv, ok, m, *a: make_plan(uv, ok, m + 3.0, *a))
    grown = render(verts, faces, K, (64, 64), attributes=colours, settings=settings)
    assert torch.equal(ref.face_index, grown.face_index)
    assert torch.allclose(ref.alpha, grown.alpha, atol=1e-6)
    assert torch.allclose(ref.attributes, grown.attributes, atol=1e-6)


def test_chunking_does_not_change_results() -> None:
    verts, faces, K = _sphere_scene(batch=2)
    verts = verts + torch.tensor([[[0.0, 0.0, 0.0]], [[0.3, 0.1, 0.5]]])
    colours = torch.rand(verts.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for chunk in (1 << 20, 4000):
        v = verts.clone().requires_grad_()
        c = colours.clone().requires_grad_()
        out = render(v, faces, K, (64, 64), attributes=c, settings=SOFT_TEXTURE, chunk_pairs=chunk)
        (out.alpha.square().sum() + out.attributes.square().sum() + out.depth.sum()).backward()
        results.append((out.alpha, out.attributes, out.depth, v.grad, c.grad))
    for a, b in zip(*results, strict=True):  # equal up to float32 summation order
        assert torch.allclose(a, b, atol=1e-5 * float(b.detach().abs().max()), rtol=1e-3)
    # Batch elements are independent: element 1 alone gives the same image.
    single = render(verts[1:], faces, K, (64, 64), attributes=colours[1:], settings=SOFT_TEXTURE)
    assert torch.allclose(single.attributes[0], results[0][1][1], atol=1e-6)


@pytest.mark.parametrize("settings", [MASK, DEPTH, SOFT_TEXTURE, HARD_TEXTURE], ids=["mask", "depth", "soft", "hard"])
def test_no_nan_with_degenerate_and_behind_camera_faces(settings: RenderSettings) -> None:
    verts = torch.tensor(
        [[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0],  # a normal face
          [0.2, 0.2, 2.5], [0.2, 0.2, 2.5], [0.4, 0.1, 2.5],  # zero area (repeated vertex)
          [-0.3, 0.0, 2.2], [0.0, 0.0, 2.2], [0.3, 0.0, 2.2],  # zero area (collinear)
          [-0.2, 0.1, -1.0], [0.3, 0.2, 1.5], [0.1, -0.4, 2.0],  # one vertex behind the camera
          [0.0, 0.0, 0.0], [0.3, 0.3, 1.0], [-0.3, 0.3, 1.0]]],  # one vertex at the camera centre
        requires_grad=True,
    )  # fmt: skip
    faces = torch.arange(15).reshape(5, 3)
    attr = torch.rand(1, 15, 3, requires_grad=True)
    out = render(verts, faces, K_SMALL, (32, 32), attributes=attr, settings=settings, hard_attributes=attr)
    for t in (out.alpha, out.depth, out.attributes, out.hard_attributes):
        assert torch.isfinite(t).all()
    assert set(out.face_index.unique().tolist()) <= {-1, 0}  # only the valid face is ever in front
    (out.alpha.sum() + out.depth.sum() + out.attributes.sum() + out.hard_attributes.sum()).backward()
    assert torch.isfinite(verts.grad).all() and torch.isfinite(attr.grad).all()
    assert verts.grad[0, :3].abs().sum() > 0 and attr.grad[0, :3].abs().sum() > 0
    assert torch.all(verts.grad[0, 9:] == 0)  # culled faces receive no gradient


def test_everything_behind_camera_renders_empty() -> None:
    verts = torch.tensor([[[-0.5, -0.5, -2.0], [0.5, -0.5, -2.0], [0.0, 0.5, -2.0]]], requires_grad=True)
    out = render(verts, torch.tensor([[0, 1, 2]]), K_SMALL, (16, 16), attributes=verts, settings=DEPTH)
    assert torch.all(out.alpha == 0) and torch.all(out.face_index == -1) and torch.all(out.depth == 0)
    assert torch.allclose(out.attributes, torch.tensor(DEPTH.background))
    out.alpha.sum().backward()  # graph exists, gradient zero
    assert torch.all(verts.grad == 0)


def test_silhouette_iou_gradient_moves_vertices_outward() -> None:
    """A square smaller than the target mask grows under gradient descent on a soft-IoU loss."""
    size = 128
    K = torch.tensor([[100.0, 0.0, 63.5], [0.0, 100.0, 63.5], [0.0, 0.0, 1.0]])
    corners = torch.tensor([[[-0.4, -0.4, 2.0], [0.4, -0.4, 2.0], [0.4, 0.4, 2.0], [-0.4, 0.4, 2.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    target = torch.zeros(1, size, size)
    target[:, 64 - 30 : 64 + 30, 64 - 30 : 64 + 30] = 1.0  # 60 px square vs the rendered 40 px one

    def loss_fn(v: torch.Tensor) -> tuple[torch.Tensor, float]:
        out = render(v, faces, K, (size, size), settings=MASK)
        inter = (out.alpha * target).sum()
        union = (out.alpha + target - out.alpha * target).sum()
        hard_iou = (out.mask & target.bool()).sum() / (out.mask | target.bool()).sum()
        return 1.0 - inter / union, float(hard_iou)

    v = corners.clone().requires_grad_()
    loss, iou0 = loss_fn(v)
    loss.backward()
    outward = corners[0, :, :2]  # corner directions from the square's centre (0, 0)
    assert torch.all((-v.grad[0, :, :2] * outward).sum(-1) > 0)
    opt = torch.optim.Adam([v], lr=0.01)
    for _ in range(25):
        opt.zero_grad()
        loss, iou = loss_fn(v)
        loss.backward()
        opt.step()
    _, iou_final = loss_fn(v)
    assert iou0 < 0.5 and iou_final > 0.85


def test_vertex_visibility_front_and_back_of_sphere() -> None:
    verts, faces, K = _sphere_scene(size=96)
    out = render(verts, faces, K, (96, 96), settings=MASK)
    vis = vertex_visibility(verts, out.depth, K)
    assert vis.shape == verts.shape[:2] and not vis.requires_grad
    z_rel = verts[0, :, 2] - 4.0  # sphere of radius 1 centred at z = 4; silhouette at z_rel ≈ -0.25
    assert vis[0][z_rel < -0.5].min() > 0.9  # near side, away from the silhouette
    assert vis[0][z_rel > 0.3].max() < 0.05  # far side (≥ 0.6 units behind the front surface)
    assert vis[0][z_rel < -0.3].mean() > 0.95
    # A vertex outside the image is not visible.
    moved = verts.clone()
    moved[0, 0] = torch.tensor([50.0, 0.0, 4.0])
    assert vertex_visibility(moved, out.depth, K)[0, 0] == 0
