"""Fast, non-differentiable numpy z-buffer rasteriser: the project's one triangle renderer.

Renders several triangle meshes at once with a pinhole camera ``K`` and gives, per pixel, the depth
(z along the optical axis, metres), the instance id, the mesh and face that won the z-test, and any
per-vertex attributes (colours, object coordinates, normals, UVs) interpolated with perspective-correct
barycentric weights. Used at run time by the pose verification (``cse_pose.verify``: low-resolution
silhouettes and depth of pose candidates) and by training's synthetic data generator and evaluation
(``cse_train.data.synthetic``, ``cse_train.evaluate``). Not differentiable and torch-free on purpose:
the differentiable soft rasteriser used by the losses lives in training (``cse_train.render``).

Conventions: camera frame = OpenCV optical frame (x right, y down, z forward); pixel (column j, row i)
has its centre at image coordinates (u, v) = (j, i) with ``u = fx * X / Z + s * Y / Z + cx`` (the
convention of ``cse_pose.core.camera``). A pixel is covered by a triangle when its centre lies
inside the projected triangle (no anti-aliasing).

Algorithm: triangles are clipped against the near plane ``z = near`` in camera space (one or two new
triangles per partially visible one, attributes interpolated along the clipped edges) and projected;
each triangle is cut into scanline spans (per pixel row, the covered columns from its three edges),
spans are expanded into pixels in chunks of at most ``chunk`` pixels (vectorised over triangles), 1/z
comes from affine coefficients precomputed per triangle, and a z-buffer on 1/z keeps the nearest.
Barycentric weights and attributes are computed once per covered pixel at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RasterMesh", "RasterResult", "rasterize"]

#: Tolerance (pixels) of the scanline spans; a tiny overlap closes cracks on shared edges.
_SPAN_EPS = 1e-4


@dataclass(frozen=True)
class RasterMesh:
    """One mesh to rasterise, already in the camera frame.

    Attributes:
        vertices_cam: (N, 3) vertex positions in metres, camera frame.
        faces: (F, 3) integer vertex indices.
        attributes: optional (N, C) float per-vertex attributes; every mesh of one call must have the
            same C (or all None).
        instance_id: value written to the instance image where this mesh is visible (> 0; 0 = nothing).
    """

    vertices_cam: np.ndarray
    faces: np.ndarray
    attributes: np.ndarray | None = None
    instance_id: int = 1


@dataclass(frozen=True)
class RasterResult:
    """Per-pixel outputs of :func:`rasterize` (H, W = image size).

    Attributes:
        depth_m: (H, W) float32 z of the visible surface in metres, 0 where nothing is visible.
        instance_id: (H, W) int32 ``RasterMesh.instance_id`` of the visible mesh, 0 where none.
        mesh_index: (H, W) int32 index of the visible mesh in the input sequence, -1 where none.
        face_index: (H, W) int32 index of the visible face within its mesh, -1 where none.
        attributes: (H, W, C) float32 perspective-correct interpolated attributes (0 where none), or
            None when no mesh had attributes.
    """

    depth_m: np.ndarray
    instance_id: np.ndarray
    mesh_index: np.ndarray
    face_index: np.ndarray
    attributes: np.ndarray | None

    @property
    def covered(self) -> np.ndarray:
        """(H, W) bool: some surface is visible."""
        return self.mesh_index >= 0


def _gather_meshes(
    meshes: Sequence[RasterMesh],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Concatenate meshes: vertices (V, 3) f64, attributes (V, C) f64 | None, faces (T, 3) i64, src (T,)."""
    has_attr = [m.attributes is not None for m in meshes]
    if any(has_attr) and not all(has_attr):
        raise ValueError("either every mesh or no mesh must have attributes")
    verts, attrs, faces = [], [], []
    offset = 0
    for m in meshes:
        v = np.asarray(m.vertices_cam, dtype=np.float64).reshape(-1, 3)
        f = np.asarray(m.faces, dtype=np.int64).reshape(-1, 3)
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"face index out of range for a mesh with {len(v)} vertices")
        verts.append(v)
        faces.append(f + offset)
        if m.attributes is not None:
            a = np.asarray(m.attributes, dtype=np.float64)
            if a.ndim != 2 or len(a) != len(v):
                raise ValueError(f"attributes must be (N, C) with N = {len(v)}, got {a.shape}")
            attrs.append(a)
        offset += len(v)
    if attrs and len({a.shape[1] for a in attrs}) != 1:
        raise ValueError("all meshes must have the same number of attribute channels")
    vertices = np.concatenate(verts) if verts else np.zeros((0, 3))
    attributes = np.concatenate(attrs) if attrs else None
    all_faces = np.concatenate(faces) if faces else np.zeros((0, 3), np.int64)
    return vertices, attributes, all_faces, np.arange(len(all_faces))


def _clip_near(
    vertices: np.ndarray, attributes: np.ndarray | None, faces: np.ndarray, src: np.ndarray, near: float
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Clip triangles against the plane z = near (camera frame), keeping winding order.

    Args:
        vertices: (V, 3) camera-frame positions; attributes: (V, C) or None.
        faces: (T, 3) vertex indices; src: (T,) index of the input face each triangle comes from.
    Returns:
        vertices (V', 3), attributes (V', C) | None, faces (T', 3), src (T',) with every triangle in
        front of the near plane; new vertices are appended after the input ones.
    """
    front = vertices[:, 2] >= near
    n_front = front[faces].sum(axis=1)
    keep = n_front == 3
    out_faces, out_src = [faces[keep]], [src[keep]]
    new_v, new_a = [], []
    next_index = len(vertices)

    def cut(i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
        """New vertices where edges (i0 in front, i1 behind) cross the near plane; returns their ids."""
        nonlocal next_index
        z0, z1 = vertices[i0, 2], vertices[i1, 2]
        w = ((near - z0) / (z1 - z0))[:, None]
        new_v.append(vertices[i0] + w * (vertices[i1] - vertices[i0]))
        if attributes is not None:
            new_a.append(attributes[i0] + w * (attributes[i1] - attributes[i0]))
        ids = next_index + np.arange(len(i0))
        next_index += len(i0)
        return ids

    for n_in in (1, 2):
        sel = np.flatnonzero(n_front == n_in)
        if not len(sel):
            continue
        f = faces[sel]
        flags = front[f]
        # Rotate each triangle cyclically (winding kept) so that the odd vertex comes first (one in
        # front) or last (one behind).
        k = np.argmax(flags, axis=1) if n_in == 1 else np.argmin(flags, axis=1)
        order = (k[:, None] + (np.array([0, 1, 2]) if n_in == 1 else np.array([1, 2, 0]))) % 3
        a, b, c = (np.take_along_axis(f, order[:, i : i + 1], axis=1)[:, 0] for i in range(3))
        if n_in == 1:  # a in front: triangle (a, ab', ac')
            ab, ac = cut(a, b), cut(a, c)
            out_faces.append(np.stack([a, ab, ac], axis=1))
            out_src.append(src[sel])
        else:  # c behind: triangles (a, b, bc') and (a, bc', ac')
            bc, ac = cut(b, c), cut(a, c)
            out_faces += [np.stack([a, b, bc], axis=1), np.stack([a, bc, ac], axis=1)]
            out_src += [src[sel], src[sel]]
    if new_v:
        vertices = np.concatenate([vertices, *new_v])
        if attributes is not None:
            attributes = np.concatenate([attributes, *new_a])
    return vertices, attributes, np.concatenate(out_faces), np.concatenate(out_src)


def rasterize(
    meshes: Sequence[RasterMesh],
    K: np.ndarray,
    width: int,
    height: int,
    near: float = 0.01,
    cull_backfaces: bool = False,
    chunk: int = 1 << 20,
) -> RasterResult:
    """Z-buffer rasterisation of several meshes with a pinhole camera.

    Args:
        meshes: meshes in the camera frame (metres); see :class:`RasterMesh`.
        K: (3, 3) intrinsics in pixels (skew allowed), for a ``width`` x ``height`` image.
        width, height: image size in pixels.
        near: near clipping plane (metres); geometry closer than this is clipped away.
        cull_backfaces: drop faces whose front side (counter-clockwise seen from outside) looks away
            from the camera; only valid for closed, outward-oriented meshes (it is a speed-up only).
        chunk: maximum number of candidate pixels processed at once (memory / speed trade-off).
    Returns:
        :class:`RasterResult` with (H, W) depth, instance, mesh and face images and (H, W, C) attributes.
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    H, W = int(height), int(width)
    if H <= 0 or W <= 0:
        raise ValueError(f"image size must be positive, got {W}x{H}")
    mesh_ids = np.array([int(m.instance_id) for m in meshes], dtype=np.int64)
    face_counts = np.array([len(np.asarray(m.faces).reshape(-1, 3)) for m in meshes], dtype=np.int64)
    face_start = np.concatenate([[0], np.cumsum(face_counts)])
    vertices, attributes, faces, src = _gather_meshes(meshes)
    n_channels = 0 if attributes is None else attributes.shape[1]

    if cull_backfaces and len(faces):
        a, b, c = (vertices[faces[:, i]] for i in range(3))
        facing = np.einsum("ij,ij->i", np.cross(b - a, c - a), a) < 0.0
        faces, src = faces[facing], src[facing]
    vertices, attributes, faces, src = _clip_near(vertices, attributes, faces, src, near)

    # Projection (all remaining vertices referenced by faces are in front of the near plane).
    z = np.maximum(vertices[:, 2], near)
    inv_z = 1.0 / z
    u = (K[0, 0] * vertices[:, 0] + K[0, 1] * vertices[:, 1]) * inv_z + K[0, 2]
    v = K[1, 1] * vertices[:, 1] * inv_z + K[1, 2]
    u0, u1, u2 = (u[faces[:, i]] for i in range(3))
    v0, v1, v2 = (v[faces[:, i]] for i in range(3))
    iz0, iz1, iz2 = (inv_z[faces[:, i]] for i in range(3))
    area2 = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)

    # Pixel bounding boxes (pixel centres at integer coordinates), clipped to the image.
    x_lo = np.maximum(np.ceil(np.minimum(np.minimum(u0, u1), u2) - 1e-9), 0)
    x_hi = np.minimum(np.floor(np.maximum(np.maximum(u0, u1), u2) + 1e-9), W - 1)
    y_lo = np.maximum(np.ceil(np.minimum(np.minimum(v0, v1), v2) - 1e-9), 0)
    y_hi = np.minimum(np.floor(np.maximum(np.maximum(v0, v1), v2) + 1e-9), H - 1)
    ok = (np.abs(area2) > 1e-12) & (x_hi >= x_lo) & (y_hi >= y_lo)
    idx = np.flatnonzero(ok)
    faces, src = faces[idx], src[idx]
    u0, v0, u1, v1, u2, v2 = u0[idx], v0[idx], u1[idx], v1[idx], u2[idx], v2[idx]
    iz0, iz1, iz2, area2 = iz0[idx], iz1[idx], iz2[idx], area2[idx]
    bx = x_lo[idx].astype(np.int64)
    by = y_lo[idx].astype(np.int64)
    bw = (x_hi[idx] - x_lo[idx]).astype(np.int64) + 1
    bh = (y_hi[idx] - y_lo[idx]).astype(np.int64) + 1

    # Affine coefficients in float64: b1 = a1 x + c1 y + d1, b2 likewise, 1/z = az x + cz y + dz.
    a1, c1 = (v2 - v0) / area2, -(u2 - u0) / area2
    a2, c2 = -(v1 - v0) / area2, (u1 - u0) / area2
    d1, d2 = -(a1 * u0 + c1 * v0), -(a2 * u0 + c2 * v0)
    az = (iz1 - iz0) * a1 + (iz2 - iz0) * a2
    cz = (iz1 - iz0) * c1 + (iz2 - iz0) * c2
    dz = iz0 + (iz1 - iz0) * d1 + (iz2 - iz0) * d2
    coef = np.stack([a1, c1, d1, a2, c2, d2, az, cz, dz], axis=1)
    # The z-test works in float32 on offsets from each box's top-left pixel, so every term stays small
    # (no cancellation); the winner's values are recomputed in float64 afterwards.
    fx_, fy_ = bx.astype(np.float64), by.astype(np.float64)
    z_coef = np.stack([az, cz, az * fx_ + cz * fy_ + dz], axis=1).astype(np.float32)

    # Scanline spans: per (triangle, row) the covered columns [xs, xe], from the three edges.
    n_rows = bh
    tri_r = np.repeat(np.arange(len(bh)), n_rows)
    dy_r = np.arange(len(tri_r)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    yf = (by[tri_r] + dy_r).astype(np.float64)
    xl = np.full(len(tri_r), np.inf)
    xr = np.full(len(tri_r), -np.inf)
    for ua, va, ub, vb in ((u0, v0, u1, v1), (u1, v1, u2, v2), (u2, v2, u0, v0)):
        ua_r, va_r, ub_r, vb_r = ua[tri_r], va[tri_r], ub[tri_r], vb[tri_r]
        lo, hi = np.minimum(va_r, vb_r), np.maximum(va_r, vb_r)
        spans = (yf >= lo - _SPAN_EPS) & (yf <= hi + _SPAN_EPS) & (hi > lo)
        x = ua_r + (np.clip(yf, lo, hi) - va_r) * (ub_r - ua_r) / np.where(hi > lo, vb_r - va_r, 1.0)
        xl = np.where(spans, np.minimum(xl, x), xl)
        xr = np.where(spans, np.maximum(xr, x), xr)
    xs = np.maximum(np.ceil(xl - _SPAN_EPS), bx[tri_r])
    xe = np.minimum(np.floor(xr + _SPAN_EPS), bx[tri_r] + bw[tri_r] - 1)
    row_ok = np.isfinite(xl) & (xe >= xs)
    tri_r, dy_r = tri_r[row_ok], dy_r[row_ok]
    dx0_r = (xs[row_ok] - bx[tri_r]).astype(np.int64)
    row_len = (xe[row_ok] - xs[row_ok]).astype(np.int64) + 1

    # The z-buffer holds 1/z in float32: relative depth resolution ~1e-7 (0.1 um at 1 m).
    zbuf = np.zeros(H * W, dtype=np.float32)  # 1/z of the nearest surface so far (0 = empty)
    tbuf = np.full(H * W, -1, dtype=np.int64)
    ends = np.cumsum(row_len)
    starts = ends - row_len
    pix_r = (by[tri_r] + dy_r) * W + bx[tri_r] + dx0_r  # flat index of each span's first pixel
    s = 0
    while s < len(row_len):
        # Greedy chunk: as many spans as fit in `chunk` pixels (at least one).
        e = max(int(np.searchsorted(ends, starts[s] + chunk, side="right")), s + 1)
        cnt = row_len[s:e]
        local = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(starts[s:e] - starts[s], cnt)
        pix = np.repeat(pix_r[s:e], cnt) + local
        tri = np.repeat(tri_r[s:e], cnt)
        fdx = (np.repeat(dx0_r[s:e], cnt) + local).astype(np.float32)
        fdy = np.repeat(dy_r[s:e], cnt).astype(np.float32)
        k = z_coef[tri]
        iz = k[:, 0] * fdx + k[:, 1] * fdy + k[:, 2]
        keep = iz > 0.0
        if not keep.all():
            pix, iz, tri = pix[keep], iz[keep], tri[keep]
        np.maximum.at(zbuf, pix, iz)
        win = iz >= zbuf[pix]
        tbuf[pix[win]] = tri[win]
        s = e

    # Per covered pixel: depth, ids and perspective-correct attribute interpolation.
    cov = np.flatnonzero(tbuf >= 0)
    t = tbuf[cov]
    y = (cov // W).astype(np.float64)
    x = (cov % W).astype(np.float64)
    k = coef[t]
    b1 = k[:, 0] * x + k[:, 1] * y + k[:, 2]
    b2 = k[:, 3] * x + k[:, 4] * y + k[:, 5]
    iz = k[:, 6] * x + k[:, 7] * y + k[:, 8]
    depth = np.zeros(H * W, dtype=np.float32)
    depth[cov] = 1.0 / iz
    source = src[t]
    mesh_of = np.searchsorted(face_start, source, side="right") - 1
    mesh_index = np.full(H * W, -1, dtype=np.int32)
    mesh_index[cov] = mesh_of
    face_index = np.full(H * W, -1, dtype=np.int32)
    face_index[cov] = source - face_start[mesh_of]
    inst = np.zeros(H * W, dtype=np.int32)
    inst[cov] = mesh_ids[mesh_of] if len(mesh_ids) else 0
    attr_img = None
    if attributes is not None:
        w = np.empty((len(t), 3), dtype=np.float32)
        w[:, 1] = b1 * iz1[t] / iz
        w[:, 2] = b2 * iz2[t] / iz
        w[:, 0] = 1.0 - w[:, 1] - w[:, 2]
        vals = np.einsum("nk,nkc->nc", w, attributes.astype(np.float32)[faces[t]])
        attr_img = np.zeros((H * W, n_channels), dtype=np.float32)
        attr_img[cov] = vals
        attr_img = attr_img.reshape(H, W, n_channels)
    return RasterResult(
        depth_m=depth.reshape(H, W),
        instance_id=inst.reshape(H, W),
        mesh_index=mesh_index.reshape(H, W),
        face_index=face_index.reshape(H, W),
        attributes=attr_img,
    )
