"""Test helpers (numpy + onnx only): an "oracle" model that follows the model contract, and frames for it.

The oracle reads canonical coordinates that the renderer encodes in the colours (NOCS-map style), so the
whole path crop -> ONNX -> selection -> solver -> pose can be checked against a known pose without a
trained network:

* :func:`render_oracle_frame` ray-casts oriented boxes; a pixel's colour ``c`` in [0, 1]^3 is the hit
  point ``p`` in the box's (published) object frame, ``c = p / size_m + 0.5``.
* :func:`write_oracle_model` writes an ONNX graph (opset 17, every contract metadata key) that maps colour
  back to canonical coordinates, ``p_can = B^T ((2c - 1) * extents / 2)``, sampled bilinearly at the G x G
  cell centres (``match``), returns the input grid mask as ``confidence`` and a canonical box (8 corners
  and 6 face centres, 24 outward triangles) as ``vertices``.

A frame rendered with ``size_m = k * extents`` then has the exact similarity ``p_cam = R (k B p_can) + t``
(canonical -> camera), so a correct pipeline recovers ``R``, ``t`` and ``size_m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cse_pose.core.rotation import random_rotation  # noqa: F401 - part of the oracle API used by tests

#: Default canonical box extents of the oracle (full lengths, max |coordinate| = 1 like a normalised prior).
DEFAULT_EXTENTS: tuple[float, float, float] = (1.4, 2.0, 1.2)


@dataclass(frozen=True)
class OracleObject:
    """One box in a rendered frame.

    Attributes:
        R: (3, 3) rotation object -> camera (column vectors, ``p_cam = R p_obj + t``).
        t: (3,) box centre in the camera frame, metres.
        size_m: (3,) full box extents along the object axes, metres.
    """

    R: np.ndarray
    t: np.ndarray
    size_m: np.ndarray


def box_mesh(extents: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-oriented triangulated box centred at the origin.

    Args:
        extents: (3,) full lengths along x, y, z.
    Returns:
        vertices (14, 3) float32 (8 corners in objectron order, then 6 face centres), faces (24, 3) int32.
    """
    half = np.asarray(extents, dtype=np.float64).reshape(3) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    corners = signs * half
    centres, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            centre_index = 8 + len(centres)
            normal = np.zeros(3)
            normal[axis] = sign
            centres.append(normal * half)
            on_face = np.flatnonzero(signs[:, axis] == sign)
            # order the 4 corners of this face by angle around the face normal
            u, v = [a for a in range(3) if a != axis]
            angle = np.arctan2(signs[on_face, v], signs[on_face, u])
            ring = on_face[np.argsort(angle)]
            for k in range(4):
                a, b = ring[k], ring[(k + 1) % 4]
                tri = [a, b, centre_index]
                pa, pb = corners[a], corners[b]
                if np.dot(np.cross(pb - pa, normal * half - pa), normal) < 0:
                    tri = [b, a, centre_index]
                faces.append(tri)
    vertices = np.concatenate([corners, np.asarray(centres)], axis=0)
    return vertices.astype(np.float32), np.asarray(faces, dtype=np.int32)


def write_oracle_model(
    path: str | Path,
    category: str = "mug",
    crop_size: int = 128,
    grid_size: int = 32,
    extents: Sequence[float] = DEFAULT_EXTENTS,
    base_rotation: np.ndarray | None = None,
    symmetry: str = "none",
    version: str = "oracle-1",
) -> Path:
    """Write the oracle ONNX model (see the module docstring) following the model contract.

    Args:
        path: output ``.onnx`` file (parent folders are created).
        category: metadata category.
        crop_size, grid_size: S and G; S must be a multiple of G.
        extents: (3,) canonical box extents in the published frame (full lengths).
        base_rotation: (3, 3) proper rotation B (canonical -> published); identity by default.
        symmetry: ``"y"`` or ``"none"`` (metadata only).
    Returns:
        ``path`` as a Path.
    """
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if crop_size % grid_size:
        raise ValueError(f"crop_size {crop_size} must be a multiple of grid_size {grid_size}")
    s, g = int(crop_size), int(grid_size)
    B = np.eye(3) if base_rotation is None else np.asarray(base_rotation, dtype=np.float64).reshape(3, 3)
    verts_pub, faces = box_mesh(extents)
    verts_can = (verts_pub.astype(np.float64) @ B).astype(np.float32)  # row form of B^T v
    n = len(verts_can)
    half = (np.asarray(extents, np.float32).reshape(1, 3, 1, 1) / 2).astype(np.float32)

    def const(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name=name)

    initializers = [
        const("roi", np.zeros(0, np.float32)),
        const("scales", np.array([1.0, 1.0, g / s, g / s], np.float32)),
        const("two", np.array(2.0, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("half_extents", half),
        const("base_rotation_rows", B.astype(np.float32)),
        const("squeeze_axes", np.array([1], np.int64)),
        const("vertices_const", verts_can.reshape(1, n, 3)),
        const("vertex_dims", np.array([n, 3], np.int64)),
    ]
    nodes = [
        helper.make_node(
            "Resize", ["rgb", "roi", "scales"], ["rgb_grid"], mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Mul", ["rgb_grid", "two"], ["c2"]),
        helper.make_node("Sub", ["c2", "one"], ["signed"]),
        helper.make_node("Mul", ["signed", "half_extents"], ["pub_nchw"]),
        helper.make_node("Transpose", ["pub_nchw"], ["pub_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["pub_nhwc", "base_rotation_rows"], ["match"]),
        helper.make_node("Squeeze", ["mask", "squeeze_axes"], ["confidence"]),
        helper.make_node("Shape", ["rgb"], ["batch_dim"], start=0, end=1),
        helper.make_node("Concat", ["batch_dim", "vertex_dims"], ["vertices_shape"], axis=0),
        helper.make_node("Expand", ["vertices_const", "vertices_shape"], ["vertices"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "cse_pose_oracle",
        inputs=[
            helper.make_tensor_value_info("rgb", f32, ["batch", 3, s, s]),
            helper.make_tensor_value_info("mask", f32, ["batch", 1, g, g]),
        ],
        outputs=[
            helper.make_tensor_value_info("vertices", f32, ["batch", n, 3]),
            helper.make_tensor_value_info("match", f32, ["batch", g, g, 3]),
            helper.make_tensor_value_info("confidence", f32, ["batch", g, g]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cse_pose")
    model.ir_version = 8
    metadata = {
        "contract": "cse_pose/1",
        "category": category,
        "crop_size": str(s),
        "grid_size": str(g),
        "num_vertices": str(n),
        "tau": "10",
        "base_rotation": json.dumps([float(x) for x in B.reshape(-1)]),
        "symmetry": symmetry,
        "faces": json.dumps(faces.tolist()),
        "training_data": "none (oracle test model: reads NOCS colours)",
        "version": version,
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _as_object(obj: OracleObject | Sequence[np.ndarray]) -> OracleObject:
    if isinstance(obj, OracleObject):
        R, t, size = obj.R, obj.t, obj.size_m
    else:
        R, t, size = obj
    return OracleObject(
        np.asarray(R, np.float64).reshape(3, 3),
        np.asarray(t, np.float64).reshape(3),
        np.asarray(size, np.float64).reshape(3),
    )


def _pixels_near(obj: OracleObject, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Flat indices of the pixels inside the projected bounding rectangle of a box (all if any z <= 0)."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    corners = (obj.R @ (signs * obj.size_m / 2.0).T).T + obj.t
    if (corners[:, 2] <= 1e-6).any():
        return np.arange(width * height)
    uv = (corners @ K.T)[:, :2] / corners[:, 2:3]
    u0, v0 = np.floor(uv.min(axis=0)).astype(int) - 1
    u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 1
    u0, u1 = max(u0, 0), min(u1, width - 1)
    v0, v1 = max(v0, 0), min(v1, height - 1)
    if u0 > u1 or v0 > v1:
        return np.zeros(0, np.int64)
    cols, rows = np.meshgrid(np.arange(u0, u1 + 1), np.arange(v0, v1 + 1))
    return (rows * width + cols).ravel()


def render_oracle_frame(
    R: np.ndarray,
    t: np.ndarray,
    size_m: Sequence[float],
    K: np.ndarray,
    width: int,
    height: int,
    extra_objects: Sequence[OracleObject | Sequence[np.ndarray]] = (),
    background_depth_m: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ray casting of oriented boxes with NOCS colours.

    Pixel (u, v) (integer = pixel centre, as in ``core.camera``) casts the ray ``K^-1 [u, v, 1]`` from the
    camera centre; each box is intersected with the slab method in its own frame; the nearest hit wins.

    Args:
        R, t, size_m: the first object (instance id 1): rotation object -> camera (3, 3), box centre (3,)
            in metres (camera frame, z forward), full extents (3,) in metres.
        K: (3, 3) intrinsics in pixels.
        width, height: image size in pixels.
        extra_objects: more boxes (instance ids 2, 3, ...), each an :class:`OracleObject` or (R, t, size_m).
        background_depth_m: depth written where no box is hit (0 = invalid).
    Returns:
        rgb (H, W, 3) uint8 (colour = ``round(255 (p_obj / size_m + 0.5))``), depth_m (H, W) float32
        (z of the hit point; ``background_depth_m`` elsewhere), instance_mask (H, W) int32 (0 = background).
    """
    objects = [_as_object((R, t, size_m)), *(_as_object(o) for o in extra_objects)]
    depth, ids, points = ray_cast_boxes(objects, K, width, height)
    hit = ids > 0
    colour = np.zeros((height, width, 3))
    for index, obj in enumerate(objects, start=1):
        sel = ids == index
        colour[sel] = points[sel] / obj.size_m + 0.5
    rgb = np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)
    depth = np.where(hit, depth, background_depth_m).astype(np.float32)
    return rgb, depth, ids


def ray_cast_boxes(objects: Sequence[OracleObject | Sequence[np.ndarray]], K: np.ndarray, width: int, height: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ray casting of oriented boxes (slab method); the nearest hit wins.

    Pixel (u, v) (integer = pixel centre, as in ``core.camera``) casts the ray ``K^-1 [u, v, 1]``.
    Returns depth_m (H, W) float64 (0 where nothing is hit), ids (H, W) int32 (1-based object index, 0 = none)
    and points_obj (H, W, 3) float64: the hit point in its box's own frame (metres; 0 where nothing is hit).
    """
    objects = [_as_object(o) for o in objects]
    K = np.asarray(K, np.float64).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)  # (3, HW)
    rays = np.linalg.solve(K, pix)  # (3, HW), z = 1 so the ray parameter is the depth
    best = np.full(u.size, np.inf)
    points = np.zeros((u.size, 3))
    ids = np.zeros(u.size, np.int32)
    for index, obj in enumerate(objects, start=1):
        sel = _pixels_near(obj, K, width, height)
        if sel.size == 0:
            continue
        origin = -obj.R.T @ obj.t  # camera centre in the object frame
        d = obj.R.T @ rays[:, sel]  # (3, n) ray directions in the object frame
        half = obj.size_m / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1 = (-half[:, None] - origin[:, None]) * inv
            t2 = (half[:, None] - origin[:, None]) * inv
        near = np.nanmax(np.minimum(t1, t2), axis=0)
        far = np.nanmin(np.maximum(t1, t2), axis=0)
        hit = (far >= near) & (near > 0) & (near < best[sel])
        if not hit.any():
            continue
        target = sel[hit]
        points[target] = (origin[:, None] + near[hit][None, :] * d[:, hit]).T
        best[target] = near[hit]
        ids[target] = index
    depth = np.where(np.isfinite(best), best, 0.0).reshape(height, width)
    return depth, ids.reshape(height, width), points.reshape(height, width, 3)


def look_at_rotation(
    eye: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, -1.0, 0.0)
) -> np.ndarray:
    """Rotation object -> camera for a camera at ``eye`` looking at ``target`` (both in object coordinates).

    Returns the (3, 3) R with ``p_cam = R (p_obj - eye)``; ``up`` is the object-frame direction that
    appears as image-up (camera -y). Handy for generating varied test views.
    """
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross([0.0, 0.0, 1.0], z) if abs(z[2]) < 0.9 else np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=0)


def default_intrinsics(width: int = 640, height: int = 480, f_px: float = 600.0) -> np.ndarray:
    """A pinhole K (3, 3) with the principal point at the image centre."""
    return np.array([[f_px, 0.0, (width - 1) / 2.0], [0.0, f_px, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def table_scene(width: int = 640, height: int = 480, noise_mm_at_1m: float = 0.0, seed: int = 0,
                wall: bool = False):
    """Exact depth of a table (1.2 x 0.8 m, top at world y = 0) with three boxes standing on it.

    World: y up. Camera 0.75 m from the table centre at 40 deg elevation; with ``wall`` a wall 25 cm behind
    the table's far edge (from 0.7 m below to 1 m above the table top). Returns (depth_m (H, W) float32,
    K (3, 3), gt (H, W) int32: 0 table/wall/background, 1..3 the boxes left to right in the image).
    """
    K = default_intrinsics(width, height, 600.0 * width / 640.0)
    el = np.deg2rad(40.0)
    eye = 0.75 * np.array([0.0, np.sin(el), np.cos(el)])
    R_cw = look_at_rotation(eye, np.array([0.0, 0.0, 0.0]), up=(0.0, 1.0, 0.0))
    boxes = [  # (centre x, z on the table, size x, y, z), all resting on y = 0
        (-0.18, 0.02, 0.06, 0.10, 0.06),
        (0.0, -0.05, 0.08, 0.16, 0.05),
        (0.17, 0.06, 0.05, 0.07, 0.09),
    ]
    objects = [(R_cw, R_cw @ (np.array([0.0, -0.01, 0.0]) - eye), np.array([1.2, 0.02, 0.8]))]
    for cx, cz, sx, sy, sz in boxes:
        objects.append((R_cw, R_cw @ (np.array([cx, sy / 2, cz]) - eye), np.array([sx, sy, sz])))
    if wall:
        objects.append((R_cw, R_cw @ (np.array([0.0, 0.15, -0.66]) - eye), np.array([4.0, 1.7, 0.02])))
    _, depth, ids = render_oracle_frame(*objects[0], K, width, height, extra_objects=objects[1:])
    if noise_mm_at_1m > 0:
        rng = np.random.default_rng(seed)
        depth = depth + (depth > 0) * rng.normal(0.0, noise_mm_at_1m * 1e-3, depth.shape) * depth**2
    gt = np.where((ids >= 2) & (ids <= 4), ids - 1, 0)
    return depth.astype(np.float32), K, gt


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    return float((a & b).sum() / max((a | b).sum(), 1))
