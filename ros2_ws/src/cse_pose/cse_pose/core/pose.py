"""From a solved similarity and the deformed prior to the published pose, size and quality.

docs/reference.md §2.8, with the deviations docs/reference.md §D3 asks for: the rotation is expressed in
the published object frame through a *proper* base rotation B (``v_pub = B v``), the translation is the
centre of the deformed mesh's bounding box in that frame (not the canonical origin), the size is the box
extent times the solved scale, and fit statistics become a 0..1 quality score and a covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .metrics import box_corners
from .solver import SolverResult


@dataclass(frozen=True)
class ObjectPose:
    """Pose of one object in the camera frame.

    Attributes:
        R: (3, 3) rotation, published object frame -> camera frame, det +1.
        t_m: (3,) box centre in the camera frame, metres.
        size_m: (3,) full box extents along the object axes, metres.
        scale: metres per canonical unit.
        quality: fit quality in [0, 1] (see ``quality_score``).
        inlier_ratio, rms_m, mean_confidence, n_correspondences: the fit statistics behind ``quality``.
    """

    R: np.ndarray
    t_m: np.ndarray
    size_m: np.ndarray
    scale: float
    quality: float
    inlier_ratio: float
    rms_m: float
    mean_confidence: float
    n_correspondences: int

    @property
    def T_cam_obj(self) -> np.ndarray:
        """(4, 4) homogeneous transform object -> camera (metres)."""
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.t_m
        return T

    def corners(self) -> np.ndarray:
        """(8, 3) box corners in the camera frame (objectron order)."""
        return box_corners(self.R, self.t_m, self.size_m)

    def covariance(self) -> np.ndarray:
        """(6, 6) diagonal covariance (x, y, z in m^2; roll, pitch, yaw in rad^2) from the fit residual.

        Translation variance ``rms^2 / n_inliers``; rotation variance ``(rms / radius)^2 / n_inliers`` with the
        box half-diagonal as lever arm. A rough, honest-order-of-magnitude figure, not a calibrated one.
        """
        n = max(1.0, self.inlier_ratio * self.n_correspondences)
        radius = max(0.5 * float(np.linalg.norm(self.size_m)), 1e-3)
        var_t = self.rms_m**2 / n
        var_r = (self.rms_m / radius) ** 2 / n
        return np.diag([var_t] * 3 + [var_r] * 3)


def quality_score(inlier_ratio: float, rms_m: float, threshold_m: float, mean_confidence: float) -> float:
    """``inlier_ratio * (1 - rms/threshold) * mean_confidence``, each factor clipped to [0, 1]."""
    if threshold_m <= 0:
        raise InvalidInputError(f"threshold_m must be positive, got {threshold_m}")
    factors = (inlier_ratio, 1.0 - rms_m / threshold_m, mean_confidence)
    return float(np.prod([min(max(f, 0.0), 1.0) for f in factors]))


_EYE3 = np.eye(3)
_ORTHONORMAL_TOL = 1e-6 + 1e-5 * _EYE3  # np.allclose(B @ B.T, I, atol=1e-6)'s bound, element by element


def _orthonormal(B: np.ndarray) -> bool:
    """B (3, 3) satisfies ``np.allclose(B @ B.T, I, atol=1e-6)`` (the same test, a sixth of its cost per pose)."""
    return bool((np.abs(B @ B.T - _EYE3) <= _ORTHONORMAL_TOL).all())


def pose_from_similarity(
    result: SolverResult,
    vertices: np.ndarray,
    base_rotation: np.ndarray,
    mean_confidence: float,
    threshold_m: float,
) -> ObjectPose:
    """Published pose from ``p_cam = scale * R @ v + t`` (v canonical) and the deformed prior.

    Args:
        result: solver output (canonical -> camera similarity and fit statistics).
        vertices: (N, 3) deformed prior vertices, canonical frame and units.
        base_rotation: (3, 3) proper rotation B, canonical -> published object frame.
        mean_confidence: mean model confidence over the instance mask, in [0, 1].
        threshold_m: the solver's inlier threshold (normalises the residual in the quality score).
    Returns:
        ``ObjectPose`` with ``R = R_solver @ B^T`` and ``t_m`` at the box centre.
    """
    v = np.asarray(vertices, dtype=np.float64)
    B = np.asarray(base_rotation, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 2 or not np.isfinite(v).all():
        raise InvalidInputError(f"vertices must be finite (N, 3), got shape {v.shape}")
    if B.shape != (3, 3) or not _orthonormal(B) or np.linalg.det(B) < 0:
        raise InvalidInputError("base_rotation must be a proper rotation (orthonormal, det +1)")
    v_pub = v @ B.T
    lo, hi = v_pub.min(axis=0), v_pub.max(axis=0)
    R = result.R @ B.T
    t_box = result.scale * (R @ (0.5 * (lo + hi))) + result.t
    return ObjectPose(
        R=R,
        t_m=t_box,
        size_m=(hi - lo) * result.scale,
        scale=result.scale,
        quality=quality_score(result.inlier_ratio, result.rms_m, threshold_m, mean_confidence),
        inlier_ratio=result.inlier_ratio,
        rms_m=result.rms_m,
        mean_confidence=float(mean_confidence),
        n_correspondences=len(result.inliers),
    )
