"""Optional ICP refinement of a pose against the observed depth (open3d point-to-point ICP).

Partial observation -> complete model is the well-posed direction: every observed point of the instance has
a true partner on the predicted (deformed, posed) model surface. Frames: everything in the camera optical
frame, metres.
"""

from __future__ import annotations

import numpy as np

from .core.camera import backproject

#: ICP corrections supported by fewer observed points than this fraction are ignored.
MIN_ICP_FITNESS = 0.5
#: Fewer observed points than this: no refinement.
MIN_OBSERVED_POINTS = 10


def observed_points(depth_m: np.ndarray, mask: np.ndarray, instance_id: int, K: np.ndarray,
                    max_points: int = 3000) -> np.ndarray:
    """(n, 3) camera-frame points (m) of the instance's pixels with valid depth, strided to <= max_points."""
    v, u = np.nonzero((mask == instance_id) & (depth_m > 0))
    if len(u) > max_points:
        step = int(np.ceil(len(u) / max_points))
        v, u = v[::step], u[::step]
    return backproject(u, v, depth_m[v, u], K)


def icp_refine(observed_m: np.ndarray, model_points_m: np.ndarray, max_distance_m: float, iterations: int
               ) -> tuple[np.ndarray, float]:
    """Point-to-point ICP (open3d) of the observed points (n, 3) onto the model points (m, 3).

    Returns (T (4, 4) rigid correction to apply to the model: ``p' = T p``, fitness = fraction of observed
    points with a partner within ``max_distance_m``).
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(observed_m, np.float64)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(model_points_m, np.float64)))
    result = reg.registration_icp(src, dst, float(max_distance_m), np.eye(4),
                                  reg.TransformationEstimationPointToPoint(with_scaling=False),
                                  reg.ICPConvergenceCriteria(max_iteration=int(iterations)))
    T_obs_to_model = np.asarray(result.transformation)
    return np.linalg.inv(T_obs_to_model), float(result.fitness)


def surface_points(vertices: np.ndarray, faces: np.ndarray | None, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Points on a mesh surface for ICP: the vertices plus ``n`` area-weighted samples on the triangles
    (fixed seed, so the same mesh gives the same points). vertices (N, 3), faces (F, 3) -> (N + n, 3)."""
    v = np.asarray(vertices, np.float64)
    if faces is None or len(faces) == 0:
        return v
    tri = v[np.asarray(faces)]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        return v
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    w = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # uniform barycentric samples
    return np.concatenate([v, np.einsum("nk,nkd->nd", w, tri[pick])], axis=0)


def refine_pose(depth_m: np.ndarray, mask: np.ndarray, instance_id: int, K: np.ndarray,
                vertices_cam: np.ndarray, faces: np.ndarray | None, max_distance_m: float, iterations: int
                ) -> tuple[np.ndarray, str]:
    """ICP correction of one instance's posed model against its observed depth.

    Args:
        depth_m: (H, W) depth in metres (0 = invalid); mask: (H, W) instance ids; K: (3, 3).
        vertices_cam: (N, 3) the deformed, posed model in the camera frame; faces: its (F, 3) triangles.
    Returns:
        (T (4, 4) rigid correction, camera frame, ``p' = T p``; identity when not applied,
        note: "" when applied, else why not: ``too_few_points``, ``refine_rejected`` (fitness below
        :data:`MIN_ICP_FITNESS`) or ``refine_failed: <error>``).
    """
    obs = observed_points(depth_m, mask, instance_id, K)
    if len(obs) < MIN_OBSERVED_POINTS:
        return np.eye(4), "too_few_points"
    try:
        T, fitness = icp_refine(obs, surface_points(vertices_cam, faces), max_distance_m, iterations)
    except Exception as exc:  # noqa: BLE001 - refinement is optional: the caller keeps the unrefined pose
        return np.eye(4), f"refine_failed: {type(exc).__name__}: {exc}"
    if fitness < MIN_ICP_FITNESS:
        return np.eye(4), f"refine_rejected: ICP matched only {fitness:.0%} of the depth points"
    return T, ""
