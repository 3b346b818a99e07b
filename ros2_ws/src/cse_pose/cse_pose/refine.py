"""ICP refinement of a pose against the observed depth (open3d point-to-plane ICP), per category.

Partial observation -> complete model is the well-posed direction: every observed point of the instance has
a true partner on the predicted (deformed, posed) model surface. Point-to-plane converges in a few
iterations where point-to-point creeps (on the mug's validation frames, 20 point-to-point iterations were
still 0.8 deg median from their own fixed point). Frames: everything in the camera optical frame, metres.
"""

from __future__ import annotations

import numpy as np

from .core.camera import backproject
from .core.crop import CropBox

#: ICP corrections supported by fewer observed points than this fraction are ignored.
MIN_ICP_FITNESS = 0.5
#: Fewer observed points than this: no refinement.
MIN_OBSERVED_POINTS = 10
#: The observed points are strided to at most this many. ICP's time grows with them; measured with the
#: point-to-point ICP this module used first (20 iterations): a mug at 0.5 m, 2,599 points 13.0 ms, 866 points
#: 2.9 ms, and on the mug's validation split 1,000 points kept the 10deg5cm gain of 3,000 (85.0 vs 84.2 %).
MAX_OBSERVED_POINTS = 1000
#: Points sampled on the model surface (area-weighted, fixed seed). On the mug's validation split (120 frames)
#: 1,000 against 2,000: 10deg5cm 87.5 / 87.5 %, 5deg2cm 58.3 / 51.7 % (500: 85.8 / 37.5 %); make bench's
#: `refine` column 1.8-2.0 ms a mug with 1,000 (2.2-2.7 in the run before, with 2,000).
SURFACE_SAMPLES = 1000


def observed_points(depth_m: np.ndarray, mask: np.ndarray, instance_id: int, K: np.ndarray,
                    max_points: int = MAX_OBSERVED_POINTS, box: CropBox | None = None) -> np.ndarray:
    """(n, 3) camera-frame points (m) of the instance's pixels with valid depth, strided to <= max_points.
    ``box``: look only inside this rectangle (the instance's crop box), not over the whole image."""
    r0, c0 = 0, 0
    if box is not None:
        r0, c0 = max(box.y0, 0), max(box.x0, 0)
        r1, c1 = box.y0 + 2 * box.half_y, box.x0 + 2 * box.half_x
        depth_m, mask = depth_m[r0:r1, c0:c1], mask[r0:r1, c0:c1]
    v, u = np.nonzero((mask == instance_id) & (depth_m > 0))
    if len(u) > max_points:
        step = int(np.ceil(len(u) / max_points))
        v, u = v[::step], u[::step]
    return backproject(u + c0, v + r0, depth_m[v, u], K)


def icp_refine(observed_m: np.ndarray, model_points_m: np.ndarray, model_normals: np.ndarray,
               max_distance_m: float, iterations: int) -> tuple[np.ndarray, float]:
    """Point-to-plane ICP (open3d) of the observed points (n, 3) onto the model points (m, 3) with their
    unit normals (m, 3).

    Returns (T (4, 4) rigid correction to apply to the model: ``p' = T p``, fitness = fraction of observed
    points with a partner within ``max_distance_m``).
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(observed_m, np.float64)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(model_points_m, np.float64)))
    dst.normals = o3d.utility.Vector3dVector(np.asarray(model_normals, np.float64))
    result = reg.registration_icp(src, dst, float(max_distance_m), np.eye(4),
                                  reg.TransformationEstimationPointToPlane(),
                                  reg.ICPConvergenceCriteria(max_iteration=int(iterations)))
    T_obs_to_model = np.asarray(result.transformation)
    return np.linalg.inv(T_obs_to_model), float(result.fitness)


class SurfaceSampler:
    """Fixed sample positions on a mesh's triangles (triangle, barycentric weights): ``n`` of them, drawn
    area-weighted on a reference shape with a fixed seed, then placed on any shape of the same triangles
    (the deformed, posed prior of each frame) without drawing again.

    ``sampler(vertices (N, 3))`` -> points (n, 3) and their unit face normals (n, 3), in the vertices' frame.
    """

    def __init__(self, reference_vertices: np.ndarray, faces: np.ndarray, n: int = SURFACE_SAMPLES,
                 seed: int = 0) -> None:
        """Raises ValueError for a mesh without area."""
        faces = np.asarray(faces)
        tri = np.asarray(reference_vertices, np.float64)[faces]  # (F, 3, 3)
        double_area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        if len(tri) == 0 or not double_area.sum() > 0:
            raise ValueError("the mesh has no area")
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(tri), size=n, p=double_area / double_area.sum())
        r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
        self.corners = faces[pick]  # (n, 3) vertex indices of each sample's triangle
        self.weights = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # uniform barycentric samples
        self._corner_columns = [np.ascontiguousarray(self.corners[:, k]) for k in range(3)]
        self._weight_columns = [np.ascontiguousarray(self.weights[:, k:k + 1]) for k in range(3)]

    def __call__(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(vertices, np.float64)
        a, b, c = (v.take(k, axis=0) for k in self._corner_columns)  # (n, 3) corners of each sample
        wa, wb, wc = self._weight_columns
        points = a * wa + b * wb + c * wc
        normals = np.cross(b - a, c - a)
        normals /= np.maximum(np.sqrt((normals * normals).sum(axis=1)), 1e-300)[:, None]
        return points, normals


def refine_pose(observed_m: np.ndarray, vertices_cam: np.ndarray, sampler: SurfaceSampler, max_distance_m: float,
                iterations: int) -> tuple[np.ndarray, str]:
    """ICP correction of one instance's posed model against its observed depth.

    Args:
        observed_m: (n, 3) the instance's observed points, camera frame (:func:`observed_points`).
        vertices_cam: (N, 3) the deformed, posed model in the camera frame; sampler: its surface samples.
    Returns:
        (T (4, 4) rigid correction, camera frame, ``p' = T p``; identity when not applied,
        note: "" when applied, else why not: ``too_few_points``, ``refine_rejected`` (fitness below
        :data:`MIN_ICP_FITNESS`) or ``refine_failed: <error>``).
    """
    if len(observed_m) < MIN_OBSERVED_POINTS:
        return np.eye(4), "too_few_points"
    try:
        T, fitness = icp_refine(observed_m, *sampler(vertices_cam), max_distance_m, iterations)
    except Exception as exc:  # noqa: BLE001 - refinement is optional: the caller keeps the unrefined pose
        return np.eye(4), f"refine_failed: {type(exc).__name__}: {exc}"
    if fitness < MIN_ICP_FITNESS:
        return np.eye(4), f"refine_rejected: ICP matched only {fitness:.0%} of the depth points"
    return T, ""
