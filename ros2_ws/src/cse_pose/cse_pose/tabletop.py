"""Tabletop instance masks from depth alone: the mask source for users without a trained segmenter.

Everything standing on the dominant plane of the depth image (a table, a shelf, the floor) becomes one
instance. ROS-free (numpy, OpenCV, scipy, open3d): the ROS node ``tabletop_mask_node``
(``cse_pose_ros.tabletop_mask``) publishes these masks live, and offline tools make masks for recorded
frames with the same code.

Algorithm (camera frame = OpenCV optical frame, metres):

1. Back-project every valid depth pixel (``z`` in ``[min_depth_m, max_depth_m]``).
2. Fit the dominant plane to a pixel-strided subset with open3d's RANSAC
   (``PointCloud.segment_plane``), then refine it by least squares on its inliers; orient the normal
   towards the camera, so that the signed distance ``h = n . p + d`` is the height above the table.
3. Estimate the depth noise from the inlier residuals, ``sigma(z) = sigma_1m * z^2`` (stereo / ToF noise
   grows with ``z^2``), and the table's extent: the convex hull, in the plane, of the largest connected
   region of inliers in the image.
4. Object candidates: pixels with ``grow < h < max_height_m`` whose foot on the plane lies over the
   table (walls behind the table are not objects). Connected components on the image grid, where two
   4-neighbours are connected unless their depths jump by more than ``jump_abs_m + jump_rel * z``
   (+ the noise): an object in front of another is cut from it; candidates separated only by a few
   invalid-depth pixels (``bridge_px``) are linked.
5. Hysteresis: a component is an object only if some pixel rises more than ``seed`` above the table
   (``grow`` and ``seed`` are ``max(absolute, k * sigma(z))``) and it covers ``min_area_fraction`` of
   the image.
6. Each instance's outer contour is filled (a bowl's inside, depth holes; an instance lying wholly
   inside another joins it), and invalid-depth pixels within ``fill_radius_px`` of an instance join it
   (grazing silhouettes).
7. Ids 1..n in left-to-right order of the instance centroids (per frame; no tracking).

Connected components on the image grid were measured against open3d's DBSCAN on the same candidate
points (``test_tabletop.py::test_grid_components_faster_than_dbscan``): the grid is more than
an order of magnitude faster at 640 x 480 and, unlike DBSCAN with a fixed radius, its neighbourhood
follows the pixel spacing at every depth; DBSCAN is not kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

# Reasons for an empty mask (diagnostics / log keys).
REASON_NO_VALID_DEPTH = "no_valid_depth"
REASON_NO_PLANE = "no_plane"
REASON_NO_OBJECTS = "no_objects"


@dataclass(frozen=True)
class TabletopParams:
    """Parameters of :func:`segment_tabletop` (lengths in metres, ``_px`` in pixels).

    The meaning of every field is in :data:`PARAM_HELP` (also the ROS parameter descriptions of the node).
    Invalid combinations raise ValueError on construction.
    """

    min_depth_m: float = 0.1
    max_depth_m: float = 2.5
    plane_stride_px: int = 4
    plane_distance_m: float = 0.01
    plane_iterations: int = 300
    min_plane_fraction: float = 0.15
    seed: int = 0
    min_height_m: float = 0.012
    grow_height_m: float = 0.004
    seed_sigmas: float = 4.0
    grow_sigmas: float = 2.0
    max_height_m: float = 0.5
    table_margin_m: float = 0.02
    jump_abs_m: float = 0.006
    jump_rel: float = 0.015
    jump_sigmas: float = 2.5
    min_area_fraction: float = 5e-4
    fill_radius_px: int = 3
    bridge_px: int = 4
    max_instances: int = 255

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.min_depth_m < self.max_depth_m:
            problems.append(f"need 0 <= min_depth_m < max_depth_m, got {self.min_depth_m}, "
                            f"{self.max_depth_m}")
        if self.plane_stride_px < 1 or self.plane_iterations < 1:
            problems.append("plane_stride_px and plane_iterations must be >= 1")
        if self.plane_distance_m <= 0:
            problems.append("plane_distance_m must be > 0")
        if not 0.0 <= self.grow_height_m <= self.min_height_m < self.max_height_m:
            problems.append("need 0 <= grow_height_m <= min_height_m < max_height_m")
        if not 0.0 < self.min_plane_fraction < 1.0:
            problems.append("min_plane_fraction must be in (0, 1)")
        if self.fill_radius_px < 0 or self.bridge_px < 0 or self.max_instances < 1:
            problems.append("fill_radius_px and bridge_px must be >= 0, max_instances >= 1")
        if problems:
            raise ValueError("invalid TabletopParams: " + "; ".join(problems))


PARAM_HELP: dict[str, str] = {
    "min_depth_m": "Depth samples nearer than this (m) are ignored.",
    "max_depth_m": "Depth samples farther than this (m) are ignored (keeps far walls and floors out of the "
                   "plane fit).",
    "plane_stride_px": "The table plane is fitted to every n-th pixel in both directions.",
    "plane_distance_m": "RANSAC inlier distance (m) of the plane fit (open3d segment_plane).",
    "plane_iterations": "RANSAC iterations of the plane fit.",
    "min_plane_fraction": "Fewer valid points on the dominant plane than this fraction: no table, empty "
                          "mask.",
    "seed": "RANSAC seed (open3d's generator is reseeded before each fit); -1 = not reseeded.",
    "min_height_m": "An object rises at least this far (m) above the table somewhere (hysteresis high).",
    "grow_height_m": "Pixels at least this high (m) above the table join a touching object (hysteresis low).",
    "seed_sigmas": "min_height_m is raised to this many depth-noise sigmas at the pixel's depth "
                   "(sigma(z) = sigma_1m z^2, estimated from the table).",
    "grow_sigmas": "grow_height_m is raised to this many depth-noise sigmas at the pixel's depth.",
    "max_height_m": "Points higher than this (m) above the table are not objects.",
    "table_margin_m": "An object's foot may lie this far (m) outside the convex hull of the table points.",
    "jump_abs_m": "Neighbouring pixels are cut apart when their depths differ by more than "
                  "jump_abs_m + jump_rel z + jump_sigmas sqrt(2) sigma(z) (m).",
    "jump_rel": "Depth-proportional part of the cut threshold (see jump_abs_m).",
    "jump_sigmas": "Noise part of the cut threshold, in depth-noise sigmas (see jump_abs_m).",
    "min_area_fraction": "Smaller instances (fraction of the image's pixels) are dropped.",
    "fill_radius_px": "Invalid-depth pixels up to this many pixels from an instance join it (holes enclosed "
                      "by one instance always do).",
    "bridge_px": "Object pixels separated by at most this many invalid-depth pixels in a row or column are "
                 "linked (depth holes must not cut a handle from its mug).",
    "max_instances": "At most this many instances (the largest); mono8 masks carry at most 255.",
}
"""One line per :class:`TabletopParams` field: its meaning (units in the name)."""


@dataclass(frozen=True)
class TablePlane:
    """The table: ``n . p + d = 0`` with ``n`` (3,) unit, pointing towards the camera (``d > 0``).

    ``sigma_1m``: depth noise at 1 m (metres; ``sigma(z) = sigma_1m * z^2``) from the inlier residuals.
    ``hull_uv`` (k, 2): convex hull of the inliers in plane coordinates ``(p . e1, p . e2)`` (metres),
    ``basis`` (2, 3) = (e1, e2). ``inlier_fraction``: of the strided valid points.
    """

    normal: np.ndarray
    offset: float
    sigma_1m: float
    hull_uv: np.ndarray
    basis: np.ndarray
    inlier_fraction: float


@dataclass(frozen=True)
class TabletopSegmentation:
    """Result of :func:`segment_tabletop`.

    Attributes:
        mask: (H, W) uint16 instance ids, 0 = background, 1..n left to right.
        n_instances: n.
        plane: the table, or None when none was found.
        reason: '' when objects were found, else why the mask is empty (``REASON_*``).
        timings_ms: per stage ('points', 'plane', 'candidates', 'components', 'fill', 'total').
    """

    mask: np.ndarray
    n_instances: int
    plane: TablePlane | None
    reason: str
    timings_ms: dict[str, float]


# ---------------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------------
def pixel_rays(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates of every pixel: (x/z (H, W) float32, y/z (H, W) float32)."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    v = (np.arange(height, dtype=np.float64) - K[1, 2]) / K[1, 1]
    u = np.arange(width, dtype=np.float64) - K[0, 2]
    ry = np.broadcast_to(v[:, None], (height, width))
    rx = (u[None, :] - K[0, 1] * ry) / K[0, 0]
    return rx.astype(np.float32), np.ascontiguousarray(ry, dtype=np.float32)


def _plane_basis(n: np.ndarray) -> np.ndarray:
    """(2, 3) orthonormal vectors spanning the plane with unit normal ``n``."""
    a = np.eye(3)[int(np.argmin(np.abs(n)))]
    e1 = np.cross(n, a)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(n, e1)])


def _refine_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane (unit normal (3,), offset) through (m, 3) points."""
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    n = vt[2]
    return n, float(-n @ c)


def fit_table_plane(points_grid: np.ndarray, valid_grid: np.ndarray, params: TabletopParams
                    ) -> TablePlane | None:
    """Dominant plane of a (strided) point grid by open3d RANSAC + least-squares refit.

    Args:
        points_grid: (h, w, 3) camera-frame points (metres) of a pixel-strided grid.
        valid_grid: (h, w) bool points with valid depth.
        params: ``plane_distance_m``, ``plane_iterations``, ``min_plane_fraction``, ``seed``.
    Returns:
        The plane, or None when fewer than ``min_plane_fraction`` of the valid points lie on it. Its
        extent (``hull_uv``) is the convex hull of the largest 8-connected region of inliers in the image
        grid: stray inliers (a far wall crossing the plane's height, noise) do not widen the table.
    """
    import open3d as o3d

    points = np.asarray(points_grid, dtype=np.float64)[valid_grid]
    m = len(points)
    if m < 3:
        return None
    if params.seed >= 0:
        o3d.utility.random.seed(int(params.seed))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    model, inliers = cloud.segment_plane(distance_threshold=float(params.plane_distance_m), ransac_n=3,
                                         num_iterations=int(params.plane_iterations))
    need = max(3, params.min_plane_fraction * m)
    if len(inliers) < need:
        return None
    n = np.asarray(model[:3], dtype=np.float64)
    scale = float(np.linalg.norm(n))
    if not scale > 0:
        return None
    n, d = n / scale, float(model[3]) / scale
    # One least-squares refit on the points within the threshold of the RANSAC plane.
    n, d = _refine_plane(points[np.abs(points @ n + d) < params.plane_distance_m])
    if d < 0:  # orient towards the camera (origin): heights above the table are positive
        n, d = -n, -d
    residual = points @ n + d
    on = np.abs(residual) < params.plane_distance_m
    if on.sum() < need:
        return None
    z = points[on, 2]
    # Robust noise scale at 1 m: MAD of residual / z^2.
    r1 = residual[on] / np.maximum(z, 1e-3) ** 2
    sigma_1m = float(1.4826 * np.median(np.abs(r1 - np.median(r1))))
    on_grid = np.zeros(valid_grid.shape, dtype=np.uint8)
    on_grid[valid_grid] = on
    _, regions, stats, _ = cv2.connectedComponentsWithStats(on_grid, connectivity=8)
    table = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    basis = _plane_basis(n)
    uv = (np.asarray(points_grid, dtype=np.float64)[regions == table] @ basis.T).astype(np.float32)
    hull = cv2.convexHull(uv.reshape(-1, 1, 2)).reshape(-1, 2).astype(np.float64)
    return TablePlane(n, d, sigma_1m, hull, basis, float(on.mean()))


def inside_hull(uv: np.ndarray, hull: np.ndarray, margin: float, cell: float = 0.005) -> np.ndarray:
    """(n,) bool: points (n, 2) inside the convex polygon ``hull`` (k, 2) grown by ``margin``.

    The polygon is rasterised with ``cell`` (same unit as the points; coarsened so that the raster has at
    most 2048 cells a side), so the test is O(n) and exact to about half a cell.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    hull = np.asarray(hull, dtype=np.float64).reshape(-1, 2)
    if len(hull) < 3 or len(uv) == 0:
        return np.zeros(len(uv), dtype=bool)
    pad = margin + 2 * cell
    lo = hull.min(axis=0) - pad
    extent = hull.max(axis=0) + pad - lo
    cell = max(cell, float(extent.max()) / 2048)
    size = np.ceil(extent / cell).astype(int) + 1
    raster = np.zeros((size[1], size[0]), dtype=np.uint8)
    cv2.fillConvexPoly(raster, np.round((hull - lo) / cell).astype(np.int32), 1)
    grow = int(np.ceil(margin / cell))
    if grow > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        raster = cv2.dilate(raster, disk)
    ij = np.floor((uv - lo) / cell + 0.5).astype(np.int64)
    inside = (ij[:, 0] >= 0) & (ij[:, 1] >= 0) & (ij[:, 0] < size[0]) & (ij[:, 1] < size[1])
    out = np.zeros(len(uv), dtype=bool)
    out[inside] = raster[ij[inside, 1], ij[inside, 0]].astype(bool)
    return out


# ---------------------------------------------------------------------------------------------------
# connected components on the image grid
# ---------------------------------------------------------------------------------------------------
def grid_components(candidates: np.ndarray, depth_m: np.ndarray, max_jump_m: np.ndarray,
                    invalid: np.ndarray | None = None, bridge_px: int = 0) -> tuple[int, np.ndarray]:
    """Connected components of candidate pixels, 4-neighbours linked when their depths are close.

    Args:
        candidates: (H, W) bool.
        depth_m: (H, W) float32 depth (metres).
        max_jump_m: (H, W) float32 largest depth difference (metres) still linking a pixel to its right
            and lower neighbours.
        invalid: (H, W) bool pixels without depth; with ``bridge_px > 0`` two candidates in one row or
            column separated only by 1..``bridge_px`` invalid pixels are linked too (depth holes along
            silhouettes and thin parts, e.g. a mug handle), with ``k`` times the jump for a step of ``k``.
    Returns:
        (number of components, (H, W) int32 labels: -1 outside ``candidates``, else 0..n-1).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    H, W = candidates.shape
    index = np.full((H, W), -1, dtype=np.int64)
    n = int(candidates.sum())
    index[candidates] = np.arange(n)
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, 0)):
        gap = None  # pixels whose 1..k-1 next pixels (in this direction) are all invalid
        for k in range(1, 2 + max(int(bridge_px), 0) if invalid is not None else 2):
            sy, sx = dy * k, dx * k
            if sy >= H or sx >= W:
                break
            a = (slice(0, H - sy), slice(0, W - sx))
            b = (slice(sy, H), slice(sx, W))
            link = candidates[a] & candidates[b]
            if k > 1:
                step = invalid[dy * (k - 1):H - sy + dy * (k - 1), dx * (k - 1):W - sx + dx * (k - 1)]
                gap = step if gap is None else gap[: H - sy, : W - sx] & step
                link &= gap
            link &= np.abs(depth_m[a] - depth_m[b]) <= k * max_jump_m[a]
            rows.append(index[a][link])
            cols.append(index[b][link])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    count, comp = connected_components(graph, directed=False)
    labels = np.full((H, W), -1, dtype=np.int32)
    labels[candidates] = comp
    return int(count), labels


def fill_instances(mask: np.ndarray, invalid: np.ndarray, radius_px: int) -> np.ndarray:
    """Close the instances: holes wholly, invalid-depth pixels within ``radius_px``.

    Each instance's outer contour is filled (largest instance first): what it encloses joins it, whatever
    its depth (a bowl's or mug's inside seen from above, depth holes), and so does any other instance
    lying wholly inside it. Then invalid-depth pixels (grazing silhouettes, dropouts) up to
    ``radius_px`` 4-neighbour steps from an instance join it.

    Args:
        mask: (H, W) uint16 instance ids 1..n (0 = background).
        invalid: (H, W) bool pixels without depth.
        radius_px: growth into invalid pixels.
    Returns:
        The filled (H, W) uint16 mask (a new array; ids may have gaps where an instance was absorbed).
    """
    out = mask.copy()
    n = int(mask.max())
    if n == 0:
        return out
    area = np.bincount(mask.ravel(), minlength=n + 1)
    for i in np.argsort(-area[1:], kind="stable") + 1:
        own = out == i
        if not own.any():
            continue  # absorbed by an enclosing instance
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = own[r0:r1, c0:c1].astype(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        filled = np.zeros_like(crop)
        cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
        inside = filled.astype(bool)
        window = out[r0:r1, c0:c1]
        enclosed = window[inside]
        inner = np.bincount(enclosed, minlength=n + 1)  # pixels of each id inside the filled contour
        inner[[0, i]] = 0
        absorbed = np.flatnonzero((inner > 0) & (inner == area))  # instances wholly inside
        take = (enclosed == 0) | np.isin(enclosed, absorbed)
        area[i] += int(take.sum())
        area[absorbed] = 0
        enclosed[take] = i
        window[inside] = enclosed
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for _ in range(int(radius_px)):
        grow = invalid & (out == 0)
        if not grow.any():
            break
        out = np.where(grow, cv2.dilate(out, kernel), out)
    return out


def relabel_left_to_right(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the ids of a (H, W) integer mask to 1..n by the column of their centroids.

    Returns (the (H, W) uint16 mask, n). Background (0) stays 0.
    """
    ids = np.unique(mask)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros(mask.shape, dtype=np.uint16), 0
    lut_size = int(ids[-1]) + 1
    area = np.bincount(mask.ravel(), minlength=lut_size).astype(np.float64)
    cols = np.broadcast_to(np.arange(mask.shape[1], dtype=np.float64), mask.shape)
    centre_u = np.bincount(mask.ravel(), weights=cols.ravel(), minlength=lut_size)[ids] / area[ids]
    lut = np.zeros(lut_size, dtype=np.uint16)
    lut[ids[np.argsort(centre_u, kind="stable")]] = np.arange(1, len(ids) + 1, dtype=np.uint16)
    return lut[mask], len(ids)


# ---------------------------------------------------------------------------------------------------
# the segmentation
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectCandidates:
    """Steps 1-4 of the algorithm on one depth image (all arrays (H, W); metres, camera frame).

    Attributes:
        depth_m: float32 depth, 0 where invalid. valid: bool valid depth.
        points_m: (H, W, 3) float32 back-projected points (0 where invalid).
        height_m: float32 signed height above the table (meaningful where valid).
        candidates: bool pixels that may belong to an object (above ``grow``, below ``max_height_m``,
            over the table). seeds: bool pixels high enough to start an object.
        max_jump_m: float32 depth difference still linking neighbours.
        plane: the table.
    """

    depth_m: np.ndarray
    valid: np.ndarray
    points_m: np.ndarray
    height_m: np.ndarray
    candidates: np.ndarray
    seeds: np.ndarray
    max_jump_m: np.ndarray
    plane: TablePlane


def object_candidates(depth_m: np.ndarray, K: np.ndarray, params: TabletopParams | None = None,
                      timings: dict[str, float] | None = None) -> tuple[ObjectCandidates | None, str]:
    """Back-project, fit the table, and mark the pixels that may belong to objects on it.

    Args:
        depth_m: (H, W) depth in metres along the optical axis (0, NaN, inf = invalid).
        K: (3, 3) intrinsics of the depth image (pixels).
        params: :class:`TabletopParams` (defaults when None).
        timings: optional dict that receives the 'points', 'plane' and 'candidates' stage times (ms).
    Returns:
        (candidates, '') or (None, reason) with reason ``REASON_NO_VALID_DEPTH`` or ``REASON_NO_PLANE``.
    """
    p = params or TabletopParams()
    timings = {} if timings is None else timings
    t = time.perf_counter()
    z = np.asarray(depth_m, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"depth_m must be (H, W), got shape {z.shape}")
    H, W = z.shape
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(z) & (z >= p.min_depth_m) & (z <= p.max_depth_m)
    if not valid.any():
        return None, REASON_NO_VALID_DEPTH
    z = np.where(valid, z, np.float32(0.0))
    rx, ry = pixel_rays(K, W, H)
    points = np.stack([rx * z, ry * z, z], axis=-1)
    s = p.plane_stride_px
    timings["points"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    plane = fit_table_plane(points[::s, ::s], valid[::s, ::s], p)
    timings["plane"] = (time.perf_counter() - t) * 1e3
    if plane is None:
        return None, REASON_NO_PLANE

    t = time.perf_counter()
    height = points @ plane.normal.astype(np.float32) + np.float32(plane.offset)
    sigma = np.float32(plane.sigma_1m) * z * z
    grow = np.maximum(np.float32(p.grow_height_m), np.float32(p.grow_sigmas) * sigma)
    high = np.maximum(np.float32(p.min_height_m), np.float32(p.seed_sigmas) * sigma)
    cand = valid & (height > grow) & (height < p.max_height_m)
    # Over the table: the foot of the point on the plane lies inside the (grown) hull of the table;
    # the plane coordinates of the foot are those of the point (the basis is orthogonal to the normal).
    rows, cols = np.nonzero(cand)
    if len(rows):
        uv = points[rows, cols] @ plane.basis.T.astype(np.float32)
        outside = ~inside_hull(uv, plane.hull_uv, p.table_margin_m)
        cand[rows[outside], cols[outside]] = False
    max_jump = (np.float32(p.jump_abs_m) + np.float32(p.jump_rel) * z
                + np.float32(p.jump_sigmas * math.sqrt(2.0)) * sigma)
    timings["candidates"] = (time.perf_counter() - t) * 1e3
    return ObjectCandidates(z, valid, points, height, cand, cand & (height > high), max_jump, plane), ""


def segment_tabletop(depth_m: np.ndarray, K: np.ndarray, params: TabletopParams | None = None
                     ) -> TabletopSegmentation:
    """Instances standing on the dominant plane of a depth image.

    Args:
        depth_m: (H, W) depth in metres along the optical axis (float; 0, NaN, inf = invalid).
        K: (3, 3) intrinsics of the depth image (pixels).
        params: :class:`TabletopParams` (defaults when None).
    Returns:
        :class:`TabletopSegmentation` (mask (H, W) uint16; see the module docstring for the algorithm).
    """
    p = params or TabletopParams()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    c, reason = object_candidates(depth_m, K, p, timings)
    H, W = np.shape(depth_m)
    if c is None:
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return TabletopSegmentation(np.zeros((H, W), dtype=np.uint16), 0, None, reason, timings)

    t = time.perf_counter()
    count, labels = grid_components(c.candidates, c.depth_m, c.max_jump_m, ~c.valid, p.bridge_px)
    mask = np.zeros((H, W), dtype=np.uint16)
    if count:
        flat = labels[c.candidates]
        area = np.bincount(flat, minlength=count)
        seeded = np.zeros(count, dtype=bool)
        seeded[np.unique(labels[c.seeds])] = True
        kept = np.flatnonzero(seeded & (area >= p.min_area_fraction * H * W))
        if len(kept) > p.max_instances:
            kept = kept[np.argsort(-area[kept], kind="stable")[: p.max_instances]]
        new_id = np.zeros(count, dtype=np.uint16)
        new_id[kept] = np.arange(1, len(kept) + 1, dtype=np.uint16)
        mask[c.candidates] = new_id[flat]
    timings["components"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    if mask.any():
        mask = fill_instances(mask, ~c.valid, p.fill_radius_px)
    mask, n_inst = relabel_left_to_right(mask)
    timings["fill"] = (time.perf_counter() - t) * 1e3
    timings["total"] = (time.perf_counter() - t0) * 1e3
    return TabletopSegmentation(mask, n_inst, c.plane, "" if n_inst else REASON_NO_OBJECTS, timings)


def tabletop_instances(depth_m: np.ndarray, K: np.ndarray, params: TabletopParams | None = None
                       ) -> np.ndarray:
    """(H, W) uint16 instance-id mask (0 = background) of the objects on the dominant plane.

    ``depth_m`` (H, W) metres (0/NaN = invalid), ``K`` (3, 3) pixels; see :func:`segment_tabletop`.
    """
    return segment_tabletop(depth_m, K, params).mask
