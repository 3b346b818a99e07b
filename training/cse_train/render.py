"""Differentiable soft rasteriser with SoftRas semantics, in plain torch (CPU and GPU).

The reference trains with SoftRas (Liu et al. 2019), a CUDA-only extension (docs/reference.md §3.4). This
module reproduces its forward model for the four renderers the reference uses:

- per face ``f`` and pixel ``p``: ``D_f(p) = sigmoid(δ · d²(p, f) / σ)``, ``d`` the 2D distance from the
  pixel centre to the triangle boundary measured in SoftRas NDC units (the longer image side spans
  [-1, 1]), ``δ = +1`` inside the triangle and ``-1`` outside. A face only counts at a pixel when the pixel
  is inside or ``D ≥ dist_eps`` (1e-4, i.e. ``d² < σ · ln(1/dist_eps − 1)``), as in SoftRas.
- silhouette (``aggr_func_alpha='prod'``): ``alpha = 1 − Π_f (1 − D_f)``.
- ``softmax`` aggregation of per-vertex attributes:
  ``A = (Σ_f D_f e^{(z̄_f − z̄_max)/γ} A_f + e^{(ε − z̄_max)/γ} A_bg) / (Σ_f D_f e^{(z̄_f − z̄_max)/γ} + e^{(ε − z̄_max)/γ})``
  with the normalised depth ``z̄ = (far − z) / (far − near)`` (1 at the near plane), ``ε = 1e-3`` and
  ``A_f`` the perspective-correct interpolation of the face's vertex attributes at the pixel, using
  barycentrics clipped to the triangle (SoftRas's ``barycentric_clip``).
- ``hard`` aggregation: the attributes of the front-most face covering the pixel centre, the background
  value where no face covers it.
- ``fill_back=True`` (all four reference renderers): every face also counts with reversed winding, so it is
  double-sided and each face enters the alpha product and the softmax twice, exactly as SoftRas's
  duplicated faces do. No back-face culling happens anywhere (SoftRas has none either). Consequence (as in
  SoftRas): ``alpha = 0.5`` lies outside the geometric silhouette, by ≈ 0.009 NDC for an open surface and
  ≈ 0.013 NDC for a closed mesh (front and back face: 4 copies), i.e. 1–2 px at 256 px with σ = 1e-4
  (1.8 px measured on a closed sphere); the exact coverage is ``RenderOutput.mask``.

Departures from SoftRas (deliberate, small): vertices come in the camera frame and are projected here
with a pixel-unit ``K`` (SoftRas receives pre-projected NDC vertices whose z is shifted by the look-at eye,
which changes no depth difference); faces with a vertex at ``z ≤ near`` are culled whole instead of being
clipped per pixel (their projection is undefined); faces of zero projected area (< 1e-6 px²) are culled.

Efficiency: work is restricted to the (face, pixel) pairs where the pixel centre lies within the distance
at which ``D`` drops below ``dist_eps`` of the face: per face and image row, the x-interval of that grown
triangle is computed in closed form, and the pixel runs are enumerated exactly (no padding, > 99 % of the
enumerated pairs contribute). The pairs are processed in chunks of ``chunk_pairs``; each chunk is a
custom autograd function that saves only its (small, shared) inputs and recomputes its pairs in a
hand-derived backward, so peak memory is one chunk's temporaries plus a few dense ``B·H·W``
accumulators, never a ``B×F×H×W`` tensor. Three passes over the pairs: a no-grad pass for the z-buffer
(front face per pixel) and the per-pixel softmax maximum, the soft pass (alpha and softmax sums), and a
dense per-pixel pass on the front face for depth and hard attributes.

Conventions: OpenCV camera frame (x right, y down, z forward), ``u = fx X/Z + s Y/Z + cx``,
``v = fy Y/Z + cy`` in pixels; the centre of pixel (row i, column j) is at ``(u, v) = (j, i)``. Depth is the
camera z of the surface, in the units of the vertices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DEPTH",
    "HARD_TEXTURE",
    "MASK",
    "SOFT_TEXTURE",
    "RenderOutput",
    "RenderSettings",
    "project_points",
    "render",
    "vertex_visibility",
]

_MIN_AREA_PX2 = 1e-6  # faces with a smaller projected area are culled
# Soft pass gradient: hand-derived backward (fast, default) or autograd through activation checkpointing
# (the reference the tests compare it with).
_ANALYTIC_BACKWARD = True
_KEY_EMPTY = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class RenderSettings:
    """One SoftRas renderer configuration.

    Attributes:
        sigma: sharpness of the coverage probability ``D`` (NDC² units; SoftRas ``sigma_val``).
        gamma: temperature of the softmax over normalised depth (SoftRas ``gamma_val``).
        aggregation: ``"softmax"`` or ``"hard"`` attribute aggregation (SoftRas ``aggr_func_rgb``).
        background: attribute value of the background (0 = black, 1 = white).
        fill_back: count every face twice (both windings), as SoftRas ``fill_back=True``.
        dist_eps: faces count at outside pixels only while ``D ≥ dist_eps`` (SoftRas ``dist_eps``).
        bg_eps: normalised depth of the background in the softmax (SoftRas ``eps``).
    """

    sigma: float
    gamma: float
    aggregation: Literal["softmax", "hard"]
    background: float
    fill_back: bool = True
    dist_eps: float = 1e-4
    bg_eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.aggregation not in ("softmax", "hard"):
            raise ValueError(f"aggregation must be 'softmax' or 'hard', got {self.aggregation!r}")
        if not (self.sigma > 0 and self.gamma > 0 and 0 < self.dist_eps < 0.5):
            raise ValueError("sigma and gamma must be > 0 and dist_eps in (0, 0.5)")

    @property
    def threshold_ndc2(self) -> float:
        """Squared NDC distance beyond which an outside pixel ignores a face (SoftRas ``threshold``)."""
        return self.sigma * math.log(1.0 / self.dist_eps - 1.0)


# The four renderers of the reference (docs/reference.md §3.4).
MASK = RenderSettings(sigma=1e-4, gamma=1e-4, aggregation="hard", background=0.0)
DEPTH = RenderSettings(sigma=1e-4, gamma=1e-4, aggregation="softmax", background=1.0)
SOFT_TEXTURE = RenderSettings(sigma=1e-3, gamma=1e-2, aggregation="softmax", background=1.0)
HARD_TEXTURE = RenderSettings(sigma=1e-4, gamma=1e-3, aggregation="hard", background=0.0)


@dataclass
class RenderOutput:
    """Result of :func:`render`.

    Attributes:
        alpha: [B, H, W] soft silhouette ``1 − Π(1 − D)`` in [0, 1].
        depth: [B, H, W] camera z of the front-most face covering each pixel centre (perspective-correct,
            differentiable w.r.t. the vertices), 0 where no face covers the pixel.
        attributes: [B, C, H, W] aggregated per-vertex attributes (softmax or hard, see the settings), or
            None when no attributes were given.
        face_index: [B, H, W] int64 index of the front-most covering face, −1 where none.
        hard_attributes: [B, C2, H, W] ``hard_attributes`` of :func:`render` interpolated on the front face
            (background 0), or None.
    """

    alpha: Tensor
    depth: Tensor
    attributes: Tensor | None
    face_index: Tensor
    hard_attributes: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        """[B, H, W] bool, hard silhouette (a face covers the pixel centre)."""
        return self.face_index >= 0


@dataclass
class _Plan:
    """Exact enumeration of the (face, pixel) pairs to evaluate, as runs of pixels along rows.

    Flat faces are indexed ``b * F + f``. A segment is one pixel run ``[seg_x0, seg_x0 + count)`` on row
    ``seg_y`` for face ``seg_face``; segments are ordered by face. ``chunks`` lists
    ``(segment_start, segment_end, pair_start, n_pairs)``.
    """

    seg_face: Tensor  # [S] int64
    seg_y: Tensor  # [S] int64
    seg_x0: Tensor  # [S] int64
    starts: Tensor  # [S] int64 exclusive cumulative pair count
    chunks: list[tuple[int, int, int, int]]


def project_points(points_cam: Tensor, K: Tensor, near: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Pinhole projection with a pixel-unit K.

    Args:
        points_cam: [B, N, 3] points in the camera frame (OpenCV optical).
        K: [B, 3, 3] or [3, 3] intrinsics in pixels (third row 0 0 1).
        near: points with ``z ≤ near`` are marked invalid; their pixel coordinates are finite but meaningless.

    Returns:
        uv_px: [B, N, 2] pixel coordinates (u = column, v = row; integer = pixel centre).
        valid: [B, N] bool, ``z > near``.
    """
    K = K.to(points_cam.dtype).expand(points_cam.shape[0], 3, 3)
    z = points_cam[..., 2]
    valid = z > near
    z_safe = torch.where(valid, z, torch.ones_like(z))
    xn = points_cam[..., 0] / z_safe
    yn = points_cam[..., 1] / z_safe
    u = K[:, 0, 0, None] * xn + K[:, 0, 1, None] * yn + K[:, 0, 2, None]
    v = K[:, 1, 0, None] * xn + K[:, 1, 1, None] * yn + K[:, 1, 2, None]
    return torch.stack((u, v), dim=-1), valid


# Row names of the per-face constants built by ``_face_setup`` (one [B*F] tensor each).
_X0, _Y0, _E1X, _E1Y, _E2X, _E2Y, _IL0, _IL1, _IL2, _C1X, _C1Y, _C2X, _C2Y, _IZ0, _IZ1, _IZ2 = range(16)


def _face_setup(
    uv: Tensor, z: Tensor, vert_ok: Tensor, faces: Tensor, far: float
) -> tuple[list[Tensor], Tensor]:
    """Per-face constants for the pair kernels.

    Args:
        uv: [B, N, 2] projected vertices in pixels.
        z: [B, N] vertex camera depth.
        vert_ok: [B, N] bool, vertex in front of the near plane.
        faces: [F, 3] int64 vertex indices.
        far: far plane; faces entirely beyond it are culled.

    Returns:
        cols: 16 tensors [B*F]: ``x0 y0 e1x e1y e2x e2y il0 il1 il2 c1x c1y c2x c2y iz0 iz1 iz2`` with
            ``p0 = (x0, y0)``, ``e1 = p1 − p0``, ``e2 = p2 − p0``, ``il_k`` the inverse squared length of edge k
            (p0→p1, p1→p2, p2→p0), screen barycentrics ``w1 = c1 · (p − p0)``, ``w2 = c2 · (p − p0)``,
            ``w0 = 1 − w1 − w2``, and ``iz_k = 1 / z_k``.
        valid: [B*F] bool, face kept (all vertices in front of near, not all beyond far, non-degenerate).
    """
    fv = uv[:, faces]  # [B, F, 3, 2]
    fz = z[:, faces]  # [B, F, 3]
    p0 = fv[:, :, 0]
    e1 = fv[:, :, 1] - p0
    e2 = fv[:, :, 2] - p0
    area = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    valid = (vert_ok[:, faces].all(-1) & (area.abs() > _MIN_AREA_PX2) & (fz.amin(-1) < far)).detach()
    inv_area = 1.0 / torch.where(valid, area, torch.ones_like(area))
    e12 = e2 - e1

    def inv_len2(e: Tensor) -> Tensor:
        return 1.0 / (e * e).sum(-1).clamp_min(1e-12)

    iz = 1.0 / torch.where(vert_ok[:, faces], fz, torch.ones_like(fz))
    cols = [
        p0[..., 0], p0[..., 1], e1[..., 0], e1[..., 1], e2[..., 0], e2[..., 1],
        inv_len2(e1), inv_len2(e12), inv_len2(e2),
        e2[..., 1] * inv_area, -e2[..., 0] * inv_area, -e1[..., 1] * inv_area, e1[..., 0] * inv_area,
        iz[..., 0], iz[..., 1], iz[..., 2],
    ]  # fmt: skip
    return [c.reshape(-1).contiguous() for c in cols], valid.reshape(-1)


def _solve_linear(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Interval of u with ``lo ≤ a·u ≤ hi`` (elementwise): (−inf, inf) or empty (inf, −inf) when a = 0."""
    inf = torch.full_like(a, math.inf)
    nz = a.abs() > 1e-12
    a_safe = torch.where(nz, a, torch.ones_like(a))
    u1, u2 = lo / a_safe, hi / a_safe
    all_ok = (lo <= 0) & (hi >= 0)
    low = torch.where(nz, torch.minimum(u1, u2), torch.where(all_ok, -inf, inf))
    high = torch.where(nz, torch.maximum(u1, u2), torch.where(all_ok, inf, -inf))
    return low, high


def _row_spans(corners: Tensor, y: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """x-interval of the points of row ``y`` within ``margin`` of a filled triangle.

    The set is convex, so it is the hull of its intersections with the three capsules (edge ⊕ disk of
    radius ``margin``); each capsule meets the row in the union of two endpoint-disk chords and the
    chord of the edge's rectangle.

    Args:
        corners: [S, 3, 2] triangle corners (pixels, float64); y: [S] row coordinate.

    Returns:
        (lo, hi): [S] each; ``lo > hi`` where the row misses the grown triangle.
    """
    lo = torch.full_like(y, math.inf)
    hi = torch.full_like(y, -math.inf)
    for k in range(3):
        p, q = corners[:, k], corners[:, (k + 1) % 3]
        r2 = margin * margin - (y - p[:, 1]) ** 2  # disk around the edge start (each corner once)
        r = r2.clamp_min(0.0).sqrt()
        lo = torch.where(r2 >= 0, torch.minimum(lo, p[:, 0] - r), lo)
        hi = torch.where(r2 >= 0, torch.maximum(hi, p[:, 0] + r), hi)
        ex, ey = q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]
        len2 = ex * ex + ey * ey
        length = len2.sqrt()
        dy = y - p[:, 1]
        # u = x − p_x; along-edge parameter in [0, 1]: 0 ≤ u·ex + dy·ey ≤ len2
        t_lo, t_hi = _solve_linear(ex, -dy * ey, len2 - dy * ey)
        # perpendicular distance ≤ margin: |u·ey − dy·ex| ≤ margin·length
        s_lo, s_hi = _solve_linear(ey, dy * ex - margin * length, dy * ex + margin * length)
        r_lo = torch.maximum(t_lo, s_lo) + p[:, 0]
        r_hi = torch.minimum(t_hi, s_hi) + p[:, 0]
        ok = (len2 > 1e-12) & (r_lo <= r_hi)
        lo = torch.where(ok, torch.minimum(lo, r_lo), lo)
        hi = torch.where(ok, torch.maximum(hi, r_hi), hi)
    return lo, hi


def _make_plan(
    uv_faces: Tensor, valid: Tensor, margin_px: float, height: int, width: int, chunk_pairs: int
) -> _Plan:
    """Pixels within ``margin_px`` of each face (exact per row), clipped to the image, and their chunking.

    Args:
        uv_faces: [B*F, 3, 2] projected face corners in pixels (no grad needed).
        valid: [B*F] bool, faces to rasterise.
    """
    device = uv_faces.device
    corners = uv_faces.double()
    big = float(max(height, width)) + 2.0
    lo = corners.amin(1).clamp(-2.0, big)
    hi = corners.amax(1).clamp(-2.0, big)
    y0 = torch.ceil(lo[:, 1] - margin_px).long().clamp_min(0)
    y1 = torch.floor(hi[:, 1] + margin_px).long().clamp(max=height - 1)
    n_rows = torch.where(valid, (y1 - y0 + 1).clamp_min(0), torch.zeros_like(y0))
    # One segment per (face, row) of the face's box; faces in order, rows ascending.
    seg_face = torch.repeat_interleave(torch.arange(n_rows.numel(), device=device), n_rows)
    row_starts = torch.cumsum(n_rows, 0) - n_rows
    seg_y = y0.index_select(0, seg_face) + (
        torch.arange(seg_face.numel(), device=device) - row_starts.index_select(0, seg_face)
    )
    x_lo, x_hi = _row_spans(corners.index_select(0, seg_face), seg_y.double(), margin_px)
    slack = 1e-2  # px: rounding never drops a pixel (the kernels apply the exact test)
    seg_x0 = torch.ceil(x_lo.clamp(-2.0, big) - slack).long().clamp_min(0)
    seg_x1 = torch.floor(x_hi.clamp(-2.0, big) + slack).long().clamp(max=width - 1)
    counts = (seg_x1 - seg_x0 + 1).clamp_min(0)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1]) if ends.numel() else 0
    chunks: list[tuple[int, int, int, int]] = []
    if total > 0:
        marks = torch.arange(chunk_pairs, max(total, chunk_pairs), chunk_pairs, device=device)
        cuts = torch.searchsorted(ends, marks, right=True)
        bounds = torch.unique(torch.cat((cuts.new_zeros(1), cuts, cuts.new_full((1,), ends.numel()))))
        bounds_l = bounds.tolist()
        starts_l = torch.cat((starts, ends[-1:])).index_select(0, bounds).tolist()
        for i in range(len(bounds_l) - 1):
            n = starts_l[i + 1] - starts_l[i]
            if n > 0:
                chunks.append((bounds_l[i], bounds_l[i + 1], starts_l[i], n))
    return _Plan(seg_face=seg_face, seg_y=seg_y, seg_x0=seg_x0, starts=starts, chunks=chunks)


def _chunk_pairs(plan: _Plan, chunk: tuple[int, int, int, int], hw: tuple[int, int], n_faces: int):
    """Enumerate one chunk's pairs.

    Returns:
        face: [P] int64 flat face index ``b * F + f``; x, y: [P] int64 pixel column and row;
        pix: [P] int64 flat pixel index ``(b * H + y) * W + x``.
    """
    s_start, s_end, p_start, n = chunk
    device = plan.seg_face.device
    counts = torch.diff(torch.cat((plan.starts[s_start:s_end], plan.starts.new_full((1,), p_start + n))))
    seg = torch.repeat_interleave(torch.arange(s_start, s_end, device=device), counts, output_size=n)
    local = torch.arange(p_start, p_start + n, device=device) - plan.starts.index_select(0, seg)
    face = plan.seg_face.index_select(0, seg)
    y = plan.seg_y.index_select(0, seg)
    x = plan.seg_x0.index_select(0, seg) + local
    height, width = hw
    pix = (torch.div(face, n_faces, rounding_mode="floor") * height + y) * width + x
    return face, x, y, pix


def _gather(cols: list[Tensor], rows: tuple[int, ...], face: Tensor) -> dict[int, Tensor]:
    """Per-pair copies [P] of the requested face constants."""
    return {r: cols[r].index_select(0, face) for r in rows}


def _barycentric(g: dict[int, Tensor], dx: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Screen-space barycentrics (w0, w1, w2), each [P], from offsets (dx, dy) [P] to p0 in pixels."""
    w1 = dx * g[_C1X] + dy * g[_C1Y]
    w2 = dx * g[_C2X] + dy * g[_C2Y]
    return 1.0 - w1 - w2, w1, w2


def _segments(g: dict[int, Tensor], dx: Tensor, dy: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Closest points on the 3 edges (p0→p1, p1→p2, p2→p0): per edge (d², t, rx, ry), each [P].

    ``t`` is the clamped segment parameter and ``r = q − t·E`` the offset from the closest point to the
    pixel centre, ``q`` the pixel relative to the edge start.
    """
    e1x, e1y, e2x, e2y = g[_E1X], g[_E1Y], g[_E2X], g[_E2Y]
    edges = (
        (dx, dy, e1x, e1y, g[_IL0]),
        (dx - e1x, dy - e1y, e2x - e1x, e2y - e1y, g[_IL1]),
        (dx - e2x, dy - e2y, -e2x, -e2y, g[_IL2]),
    )
    out = []
    for qx, qy, ex, ey, il in edges:
        t = ((qx * ex + qy * ey) * il).clamp(0.0, 1.0)
        rx = qx - t * ex
        ry = qy - t * ey
        out.append((rx * rx + ry * ry, t, rx, ry))
    return out


def _edge_dist2(g: dict[int, Tensor], dx: Tensor, dy: Tensor) -> Tensor:
    """[P] squared pixel distance from the pixel centre to the triangle boundary (closest of 3 segments)."""
    (d0, *_), (d1, *_), (d2, *_) = _segments(g, dx, dy)
    return torch.minimum(torch.minimum(d0, d1), d2)


def _perspective(
    g: dict[int, Tensor], w: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Perspective-correct depth and weights from screen barycentrics clipped to the triangle.

    Returns:
        z: [P] interpolated camera depth; (wp0, wp1, wp2): [P] perspective-correct weights (sum 1).
    """
    wc = [wk.clamp(0.0, 1.0) for wk in w]
    a = [wc[0] * g[_IZ0], wc[1] * g[_IZ1], wc[2] * g[_IZ2]]
    t = a[0] + a[1] + a[2]  # (Σ wc / z) = (Σ wc) / z_interp
    z = (wc[0] + wc[1] + wc[2]) / t
    return z, (a[0] / t, a[1] / t, a[2] / t)


_ROWS_BARY = (_X0, _Y0, _C1X, _C1Y, _C2X, _C2Y)
_ROWS_EDGE = (_E1X, _E1Y, _E2X, _E2Y, _IL0, _IL1, _IL2)
_ROWS_Z = (_IZ0, _IZ1, _IZ2)


def _pair_geometry(
    cols: list[Tensor], face: Tensor, x: Tensor, y: Tensor, need_d2: bool, need_z: bool
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor] | None]:
    """Barycentrics, squared edge distance (px²), depth and perspective weights for pairs.

    Args:
        cols: face constants from ``_face_setup``; face: [P] flat face index; x, y: [P] pixel column and row.

    Returns:
        w (3 × [P]), d2 [P] or None, z [P] or None, wp (3 × [P]) or None.
    """
    rows = _ROWS_BARY + (_ROWS_EDGE if need_d2 else ()) + (_ROWS_Z if need_z else ())
    g = _gather(cols, rows, face)
    dx = x.to(cols[0].dtype) - g[_X0]
    dy = y.to(cols[0].dtype) - g[_Y0]
    w = _barycentric(g, dx, dy)
    d2 = _edge_dist2(g, dx, dy) if need_d2 else None
    z, wp = _perspective(g, w) if need_z else (None, None)
    return w, d2, z, wp


def _inside(w: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """[P] bool, the pixel centre lies in the closed triangle."""
    return (w[0] >= 0) & (w[1] >= 0) & (w[2] >= 0)


@torch.no_grad()
def _visibility_pass(
    cols: list[Tensor],
    plan: _Plan,
    hw: tuple[int, int],
    n_faces: int,
    n_pix: int,
    settings: RenderSettings,
    ndc2: float,
    near: float,
    far: float,
    want_zmax: bool,
) -> tuple[Tensor, Tensor | None]:
    """Non-differentiable pass: z-buffer key of the front covering face, and the softmax depth maximum.

    Returns:
        key: [B*H*W] int64 ``(float32 bits of z) << 32 | f``, minimum over covering faces (``_KEY_EMPTY`` if
            none); positive float32 bit patterns order like the values, so the minimum is the front face.
        zmax: [B*H*W] max over counted faces of the normalised depth, at least ``bg_eps`` (None unless asked).
    """
    device = cols[0].device
    key = torch.full((n_pix,), _KEY_EMPTY, dtype=torch.int64, device=device)
    zmax = torch.full((n_pix,), settings.bg_eps, dtype=cols[0].dtype, device=device) if want_zmax else None
    thr_px2 = settings.threshold_ndc2 / ndc2
    for chunk in plan.chunks:
        face, x, y, pix = _chunk_pairs(plan, chunk, hw, n_faces)
        w, d2, z, _ = _pair_geometry(cols, face, x, y, need_d2=want_zmax, need_z=True)
        assert z is not None
        inside = _inside(w)
        z_ok = (z >= near) & (z <= far)
        sel = (inside & z_ok).nonzero().squeeze(1)
        zbits = z.index_select(0, sel).float().view(torch.int32).long()
        fkey = (zbits << 32) | torch.remainder(face.index_select(0, sel), n_faces)
        key.scatter_reduce_(0, pix.index_select(0, sel), fkey, reduce="amin", include_self=True)
        if zmax is not None:
            assert d2 is not None
            counted = ((inside | (d2 < thr_px2)) & z_ok).nonzero().squeeze(1)
            z_norm = (far - z.index_select(0, counted)) / (far - near)
            zmax.scatter_reduce_(0, pix.index_select(0, counted), z_norm, reduce="amax", include_self=True)
    return key, zmax


def _soft_chunk(
    zmax: Tensor | None,
    *tensors: Tensor,
    plan: _Plan,
    chunk: tuple[int, int, int, int],
    hw: tuple[int, int],
    n_faces: int,
    n_pix: int,
    settings: RenderSettings,
    ndc2: float,
    near: float,
    far: float,
) -> Tensor:
    """Per-chunk sums over pairs, dense over pixels (differentiable when run under autograd).

    Args:
        zmax: [B*H*W] per-pixel maximum normalised depth from ``_visibility_pass``; None = alpha only.
        tensors: the 16 face-constant tensors of ``_face_setup``, then (softmax only) 3·C per-face attribute
            columns [B*F], vertex-major (``k * C + c`` = channel c of face vertex k).

    Returns:
        [K, B*H*W]: row 0 = Σ mult·log(1 − D); with ``zmax``, row 1 = Σ softmax weights and rows 2.. =
        Σ weight · interpolated attribute channel.
    """
    cols, attr_cols = list(tensors[:16]), tensors[16:]
    face, x, y, pix = _chunk_pairs(plan, chunk, hw, n_faces)
    soft = zmax is not None
    w, d2, z, wp = _pair_geometry(cols, face, x, y, need_d2=True, need_z=soft)
    assert d2 is not None
    with torch.no_grad():
        inside = _inside(w)
        keep = inside | (d2 < settings.threshold_ndc2 / ndc2)
    mult = 2.0 if settings.fill_back else 1.0
    arg = torch.where(inside, d2, -d2) * (ndc2 / settings.sigma)  # δ d² / σ
    vals = [torch.where(keep, F.logsigmoid(-arg), 0.0) * mult]
    if soft:
        assert zmax is not None and z is not None and wp is not None
        n_ch = len(attr_cols) // 3
        counted = keep & (z >= near) & (z <= far)
        expo = (((far - z) / (far - near) - zmax.index_select(0, pix)) / settings.gamma).clamp_max(0.0)
        weight = torch.where(counted, torch.sigmoid(arg) * torch.exp(expo), 0.0) * mult
        vals.append(weight)
        for c in range(n_ch):
            a = [attr_cols[k * n_ch + c].index_select(0, face) for k in range(3)]
            vals.append(weight * (wp[0] * a[0] + wp[1] * a[1] + wp[2] * a[2]))
    out = vals[0].new_zeros((len(vals), n_pix))
    for row, v in enumerate(vals):
        out[row].index_add_(0, pix, v)
    return out


_GRAD_ROWS = (_X0, _Y0, _E1X, _E1Y, _E2X, _E2Y, _C1X, _C1Y, _C2X, _C2Y, _IZ0, _IZ1, _IZ2)


def _soft_chunk_backward(
    g_out: Tensor, zmax: Tensor | None, tensors: list[Tensor], spec: dict, need_attr: bool = True
) -> list[Tensor | None]:
    """Hand-derived gradient of ``_soft_chunk`` (recomputes the chunk's pairs, no autograd graph).

    Args:
        g_out: [K, B*H*W] gradient of the chunk's dense output; zmax, tensors: as ``_soft_chunk``.
        need_attr: compute the gradients of the attribute columns.

    Returns:
        gradients of ``tensors`` (None for the inverse edge lengths: at the closest point the squared
        distance is stationary in the segment parameter, so they do not influence it to first order).
    """
    settings: RenderSettings = spec["settings"]
    ndc2, near, far = spec["ndc2"], spec["near"], spec["far"]
    cols, attr_cols = tensors[:16], tensors[16:]
    n_rows = cols[0].shape[0]
    face, x, y, pix = _chunk_pairs(spec["plan"], spec["chunk"], spec["hw"], spec["n_faces"])
    g = _gather(cols, tuple(range(16)), face)
    dx = x.to(cols[0].dtype) - g[_X0]
    dy = y.to(cols[0].dtype) - g[_Y0]
    w = _barycentric(g, dx, dy)
    segs = _segments(g, dx, dy)
    d2 = torch.minimum(torch.minimum(segs[0][0], segs[1][0]), segs[2][0])
    inside = _inside(w)
    keep = inside | (d2 < settings.threshold_ndc2 / ndc2)
    mult = 2.0 if settings.fill_back else 1.0
    scale = ndc2 / settings.sigma
    dprob = torch.sigmoid(torch.where(inside, d2, -d2) * scale)
    g_arg = torch.where(keep, -mult * dprob * g_out[0].index_select(0, pix), 0.0)

    grads: dict[int, Tensor] = {}
    g_attr: list[Tensor | None] = [None] * len(attr_cols)
    g_w: list[Tensor] | None = None
    if zmax is not None:
        n_ch = len(attr_cols) // 3
        wc = [wk.clamp(0.0, 1.0) for wk in w]
        iz = (g[_IZ0], g[_IZ1], g[_IZ2])
        a_k = [wc[k] * iz[k] for k in range(3)]
        t_sum = a_k[0] + a_k[1] + a_k[2]
        z = (wc[0] + wc[1] + wc[2]) / t_sum
        wp = [a_k[k] / t_sum for k in range(3)]
        counted = keep & (z >= near) & (z <= far)
        expo_raw = ((far - z) / (far - near) - zmax.index_select(0, pix)) / settings.gamma
        weight = torch.where(counted, mult * dprob * torch.exp(expo_raw.clamp_max(0.0)), 0.0)
        g_weight = g_out[1].index_select(0, pix)
        g_wp = [torch.zeros_like(weight) for _ in range(3)]
        for c in range(n_ch):
            a = [attr_cols[k * n_ch + c].index_select(0, face) for k in range(3)]
            g_val_out = g_out[2 + c].index_select(0, pix)
            g_weight = g_weight + g_val_out * (wp[0] * a[0] + wp[1] * a[1] + wp[2] * a[2])
            g_val = g_val_out * weight
            for k in range(3):
                if need_attr:
                    g_attr[k * n_ch + c] = attr_cols[0].new_zeros(n_rows).index_add_(0, face, wp[k] * g_val)
                g_wp[k] = g_wp[k] + a[k] * g_val
        g_arg = g_arg + g_weight * weight * (1.0 - dprob)
        g_z = torch.where(expo_raw <= 0, g_weight * weight * (-1.0 / ((far - near) * settings.gamma)), 0.0)
        s_wp = g_wp[0] * wp[0] + g_wp[1] * wp[1] + g_wp[2] * wp[2]
        g_ak = [(g_wp[k] - s_wp) / t_sum for k in range(3)]
        g_w = [(g_z * (1.0 - z * iz[k]) / t_sum + g_ak[k] * iz[k]) * ((w[k] >= 0) & (w[k] <= 1)) for k in range(3)]
        for k, row in enumerate((_IZ0, _IZ1, _IZ2)):
            grads[row] = -g_z * z * wc[k] / t_sum + g_ak[k] * wc[k]

    g_d2 = torch.where(inside, g_arg, -g_arg) * scale
    # Route the distance gradient to the closest edge; ∂d²/∂q = 2r, ∂d²/∂E = −2t·r (envelope theorem).
    e01 = segs[0][0] <= segs[1][0]
    which = torch.where(segs[2][0] < torch.where(e01, segs[0][0], segs[1][0]), 2, torch.where(e01, 0, 1))
    is0, is1, is2 = which == 0, which == 1, which == 2

    def pick(i: int) -> Tensor:
        return torch.where(is0, segs[0][i], torch.where(is1, segs[1][i], segs[2][i]))

    t_sel = pick(1)
    grx, gry = 2.0 * pick(2) * g_d2, 2.0 * pick(3) * g_d2
    # edge 0: q = d, E = e1; edge 1: q = d − e1, E = e2 − e1; edge 2: q = d − e2, E = −e2.
    f_e1 = torch.where(is0, -t_sel, torch.where(is1, t_sel - 1.0, 0.0))
    f_e2 = torch.where(is1, -t_sel, torch.where(is2, t_sel - 1.0, 0.0))
    grads.update({_E1X: f_e1 * grx, _E1Y: f_e1 * gry, _E2X: f_e2 * grx, _E2Y: f_e2 * gry})
    g_dx, g_dy = grx, gry
    if g_w is not None:
        g1 = g_w[1] - g_w[0]
        g2 = g_w[2] - g_w[0]
        grads.update({_C1X: g1 * dx, _C1Y: g1 * dy, _C2X: g2 * dx, _C2Y: g2 * dy})
        g_dx = g_dx + g1 * g[_C1X] + g2 * g[_C2X]
        g_dy = g_dy + g1 * g[_C1Y] + g2 * g[_C2Y]
    grads[_X0] = -g_dx
    grads[_Y0] = -g_dy
    g_cols: list[Tensor | None] = [None] * 16
    for row, gr in grads.items():
        g_cols[row] = cols[0].new_zeros(n_rows).index_add_(0, face, gr)
    return g_cols + g_attr


class _SoftChunk(torch.autograd.Function):
    """``_soft_chunk`` with the hand-derived backward of ``_soft_chunk_backward`` (saves only its inputs)."""

    @staticmethod
    def forward(ctx, spec: dict, zmax: Tensor | None, *tensors: Tensor) -> Tensor:
        ctx.spec = spec
        ctx.save_for_backward(zmax, *tensors)
        return _soft_chunk(zmax, *tensors, **spec)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: Tensor):
        zmax, *tensors = ctx.saved_tensors
        need_attr = any(ctx.needs_input_grad[2 + 16 :])
        return (None, None, *_soft_chunk_backward(g_out.contiguous(), zmax, tensors, ctx.spec, need_attr))


def render(
    vertices_cam: Tensor,
    faces: Tensor,
    K: Tensor,
    image_size: tuple[int, int],
    attributes: Tensor | None = None,
    settings: RenderSettings = MASK,
    *,
    hard_attributes: Tensor | None = None,
    near: float = 1e-2,
    far: float = 100.0,
    chunk_pairs: int = 1 << 20,
) -> RenderOutput:
    """Render a batch of meshes sharing one topology with SoftRas semantics.

    Args:
        vertices_cam: [B, N, 3] vertices in the camera frame (OpenCV optical), any length unit.
        faces: [F, 3] integer vertex indices (winding irrelevant: faces are double-sided).
        K: [B, 3, 3] or [3, 3] pixel-unit intrinsics of the rendered image.
        image_size: (H, W) in pixels.
        attributes: [B, N, C] per-vertex attributes to interpolate (colours, camera or canonical
            coordinates), or None. The reference's depth renderer is ``attributes=vertices_cam`` with
            ``DEPTH`` (channel 2 is then the soft depth).
        settings: one of MASK, DEPTH, SOFT_TEXTURE, HARD_TEXTURE or a custom RenderSettings.
        hard_attributes: optional [B, N, C2] per-vertex attributes interpolated on the front face whatever
            the settings (cheap: one evaluation per covered pixel). MASK, DEPTH and HARD_TEXTURE share sigma
            and so give the same alpha: one DEPTH render with ``hard_attributes`` = canonical vertices
            replaces the reference's mask, depth and hard-texture renders.
        near: faces with a vertex at ``z ≤ near`` are culled; pixels whose interpolated depth is outside
            ``[near, far]`` ignore the face in the attribute aggregation; ``(far − near)`` normalises depth
            for the softmax (SoftRas's defaults 1 and 100 give the same span to 1 %).
        far: far plane (vertex units).
        chunk_pairs: (face, pixel) pairs processed at once; bounds peak memory (a few hundred bytes per
            pair); with more than one chunk the chunks run under activation checkpointing.

    Returns:
        RenderOutput with alpha [B,H,W], depth [B,H,W], attributes [B,C,H,W] or None, face_index [B,H,W].
        Everything except face_index is differentiable w.r.t. ``vertices_cam`` and ``attributes``.
    """
    if vertices_cam.ndim != 3 or vertices_cam.shape[-1] != 3:
        raise ValueError(f"vertices_cam must be [B, N, 3], got {tuple(vertices_cam.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    for name, a in (("attributes", attributes), ("hard_attributes", hard_attributes)):
        if a is not None and (a.ndim != 3 or a.shape[:2] != vertices_cam.shape[:2]):
            raise ValueError(f"{name} must be [B, N, C] with the batch and vertex count of vertices_cam")
    if not 0.0 < near < far:
        raise ValueError("need 0 < near < far")
    height, width = int(image_size[0]), int(image_size[1])
    batch, n_faces = vertices_cam.shape[0], faces.shape[0]
    n_pix = batch * height * width
    hw = (height, width)
    dtype = vertices_cam.dtype
    faces = faces.to(device=vertices_cam.device, dtype=torch.long)
    ndc2 = (2.0 / max(height, width)) ** 2  # squared NDC length of one pixel

    uv, vert_ok = project_points(vertices_cam, K, near)
    cols, face_ok = _face_setup(uv, vertices_cam[..., 2], vert_ok, faces, far)
    uv_faces = uv.detach()[:, faces].reshape(-1, 3, 2)

    soft_attr = attributes is not None and settings.aggregation == "softmax"
    margin_px = math.sqrt(settings.threshold_ndc2 / ndc2) + 1e-3
    plan_soft = _make_plan(uv_faces, face_ok, margin_px, height, width, chunk_pairs)
    plan_vis = plan_soft if soft_attr else _make_plan(uv_faces, face_ok, 1e-3, height, width, chunk_pairs)
    key, zmax = _visibility_pass(cols, plan_vis, hw, n_faces, n_pix, settings, ndc2, near, far, soft_attr)

    tensors = list(cols)
    if soft_attr:
        assert attributes is not None
        attr_faces = attributes.to(dtype)[:, faces]  # [B, F, 3, C]
        tensors += [attr_faces[:, :, k, c].reshape(-1) for k in range(3) for c in range(attr_faces.shape[-1])]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    acc: Tensor | None = None
    for chunk in plan_soft.chunks:
        kwargs = dict(
            plan=plan_soft, chunk=chunk, hw=hw, n_faces=n_faces, n_pix=n_pix,
            settings=settings, ndc2=ndc2, near=near, far=far,
        )  # fmt: skip
        if needs_grad and _ANALYTIC_BACKWARD:
            part = _SoftChunk.apply(kwargs, zmax, *tensors)
        elif needs_grad and len(plan_soft.chunks) > 1:
            part = checkpoint(_soft_chunk, zmax, *tensors, use_reentrant=False, **kwargs)
        else:
            part = _soft_chunk(zmax, *tensors, **kwargs)
        acc = part if acc is None else acc + part
    if acc is None:  # nothing on screen: zeros that still belong to the graph (zero gradient)
        acc = vertices_cam.new_zeros((1 if zmax is None else 2 + len(tensors[16:]) // 3, n_pix))
        acc = acc + 0.0 * cols[0].sum() if cols[0].numel() else acc
    alpha = (1.0 - torch.exp(acc[0])).reshape(batch, height, width)

    # Front-most covering face per pixel, then differentiable depth / hard attributes there.
    covered = key != _KEY_EMPTY
    face_index = torch.where(covered, key & 0xFFFFFFFF, torch.full_like(key, -1))
    pix = covered.nonzero().squeeze(1)
    flat_face = torch.div(pix, height * width, rounding_mode="floor") * n_faces + face_index[pix]
    col = torch.remainder(pix, width)
    row = torch.remainder(torch.div(pix, width, rounding_mode="floor"), height)
    _, _, z_front, wp = _pair_geometry(cols, flat_face, col, row, need_d2=False, need_z=True)
    assert z_front is not None and wp is not None
    depth = vertices_cam.new_zeros(n_pix).index_put((pix,), z_front).reshape(batch, height, width)

    def hard(values: Tensor, background: float) -> Tensor:
        """[B, N, C] per-vertex values → [B, C, H, W] on the front face, ``background`` elsewhere."""
        n_ch = values.shape[-1]
        af = values.to(dtype)[:, faces].reshape(batch * n_faces, 3, n_ch).index_select(0, flat_face)
        value = wp[0].unsqueeze(1) * af[:, 0] + wp[1].unsqueeze(1) * af[:, 1] + wp[2].unsqueeze(1) * af[:, 2]
        dense = vertices_cam.new_full((n_pix, n_ch), background).index_put((pix,), value)
        return dense.reshape(batch, height, width, n_ch).permute(0, 3, 1, 2)

    out_attr = None
    if attributes is not None:
        if soft_attr:
            assert zmax is not None
            w_bg = torch.exp((settings.bg_eps - zmax) / settings.gamma)
            out_attr = (acc[2:] + w_bg * settings.background) / (acc[1] + w_bg)  # [C, B*H*W]
            out_attr = out_attr.reshape(-1, batch, height, width).transpose(0, 1)
        else:
            out_attr = hard(attributes, settings.background)
    return RenderOutput(
        alpha=alpha,
        depth=depth,
        attributes=out_attr,
        face_index=face_index.reshape(batch, height, width),
        hard_attributes=None if hard_attributes is None else hard(hard_attributes, 0.0),
    )


@torch.no_grad()
def vertex_visibility(
    vertices_cam: Tensor,
    rendered_depth: Tensor,
    K: Tensor,
    rate: float = 5.0,
    near: float = 1e-2,
) -> Tensor:
    """Soft per-vertex visibility ``w_vis = exp(−rate · relu(z_vertex − z_rendered))`` (docs/reference.md §3.4),
    detached.

    ``z_rendered`` is the rendered front depth bilinearly interpolated at the vertex's projection, using only
    neighbouring pixels that a face covers (depth > 0). A vertex whose projection falls on no covered pixel
    gets weight 1 (nothing in front of it); a vertex behind the near plane or projecting outside the image
    gets 0 (not seen in this image).

    Args:
        vertices_cam: [B, N, 3] vertices in the camera frame.
        rendered_depth: [B, H, W] front depth from :func:`render` (0 = empty), same units as the vertices.
        K: [B, 3, 3] or [3, 3] pixel-unit intrinsics.
        rate: decay per unit of depth difference (5 per canonical unit in the reference; scale it for
            metric vertices).
        near: near plane.

    Returns:
        [B, N] weights in [0, 1].
    """
    batch, height, width = rendered_depth.shape
    uv, ok = project_points(vertices_cam, K, near)
    u, v = uv[..., 0], uv[..., 1]
    ok = ok & (u > -0.5) & (u < width - 0.5) & (v > -0.5) & (v < height - 0.5)
    u = u.clamp(0.0, width - 1.0)
    v = v.clamp(0.0, height - 1.0)
    u0 = u.floor().clamp(max=width - 2 if width > 1 else 0).long()
    v0 = v.floor().clamp(max=height - 2 if height > 1 else 0).long()
    fu = (u - u0).clamp(0.0, 1.0)
    fv = (v - v0).clamp(0.0, 1.0)
    flat = rendered_depth.reshape(batch, -1).to(vertices_cam.dtype)
    num = torch.zeros_like(u)
    den = torch.zeros_like(u)
    for du, dv, wgt in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        uu = (u0 + du).clamp(max=width - 1)
        vv = (v0 + dv).clamp(max=height - 1)
        d = flat.gather(1, vv * width + uu)
        valid = (d > 0).to(d.dtype)
        num = num + wgt * valid * d
        den = den + wgt * valid
    has = den > 1e-6
    z_r = torch.where(has, num / den.clamp_min(1e-6), vertices_cam[..., 2])
    vis = torch.exp(-rate * torch.relu(vertices_cam[..., 2] - z_r))
    return torch.where(ok, vis, torch.zeros_like(vis))
