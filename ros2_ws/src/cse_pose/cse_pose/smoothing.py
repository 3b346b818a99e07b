"""Temporal smoothing of each instance's pose (exponential, on translation and rotation)."""

from __future__ import annotations

import numpy as np

from .core.rotation import matrix_from_quaternion, quaternion_from_matrix, slerp


class PoseSmoother:
    """Exponential smoothing of each instance's pose over time (translation and rotation).

    ``new = alpha * previous + (1 - alpha) * measured`` on the translation, and the slerp with the same
    weight on the rotation; an instance unseen for more than ``timeout_s`` (message time) restarts.
    Keys are (category, instance id).
    """

    def __init__(self) -> None:
        self._tracks: dict[tuple[str, int], tuple[float, np.ndarray, np.ndarray]] = {}

    def update(self, key: tuple[str, int], stamp_s: float, R: np.ndarray, t_m: np.ndarray, alpha: float,
               timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed (R (3, 3), t (3,)) of instance ``key`` given its measurement at ``stamp_s``."""
        q = quaternion_from_matrix(R)
        t = np.asarray(t_m, np.float64).reshape(3)
        prev = self._tracks.get(key)
        if alpha > 0.0 and prev is not None and 0.0 <= stamp_s - prev[0] <= timeout_s:
            q = slerp(prev[1], q, 1.0 - alpha)
            t = alpha * prev[2] + (1.0 - alpha) * t
        self._tracks[key] = (stamp_s, q, t)
        return matrix_from_quaternion(q), t

    def forget_older_than(self, stamp_s: float) -> None:
        """Drop tracks last seen before ``stamp_s`` (keeps the dict bounded)."""
        for key in [k for k, v in self._tracks.items() if v[0] < stamp_s]:
            del self._tracks[key]

    def reset(self) -> None:
        """Forget every track (e.g. after the stream's clock jumped)."""
        self._tracks.clear()
