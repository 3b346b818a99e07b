"""Which trusted instance the node's single-pose output (``~/pose``) follows from frame to frame, ROS-free.

Taking the best-quality instance of every frame makes that output hop between objects whenever their
qualities cross (measured on tabletop masks with several objects: 25 cm jumps frame to frame). The rule
of :class:`PoseTarget`:

1. While an object is followed, the trusted instance of its category whose box centre is nearest to the
   followed position is the same object if it lies within ``follow_radius_m``; it is published and its
   position becomes the followed one. Instance ids are not used (a segmenter may renumber every frame).
2. When no such instance is in the frame, nothing is published until the object has been missing for
   ``switch_after_s`` of stream time (a brief occlusion or an untrusted frame does not move the output to
   another object).
3. Otherwise (nothing followed yet, the followed object gone for longer, or after :meth:`PoseTarget.reset`)
   the trusted instance of highest quality is published and followed.

``follow_radius_m = 0`` gives the plain rule: the best-quality trusted instance of each frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Followed:
    category: str
    t_m: np.ndarray  # (3,) box centre, camera frame, metres
    seen_s: float  # stream time it was last published


class PoseTarget:
    """State of the followed object (see the module docstring for the rule)."""

    def __init__(self) -> None:
        self._followed: _Followed | None = None

    def reset(self) -> None:
        """Follow nothing (e.g. after a time jump of the stream)."""
        self._followed = None

    def select(self, instances: Sequence[Any], stamp_s: float, follow_radius_m: float,
               switch_after_s: float) -> Any | None:
        """The instance to publish for this frame, or None.

        Args:
            instances: objects with ``category``, ``trusted`` and ``pose`` (``t_m`` (3,), ``quality``), e.g.
                :class:`cse_pose.pipeline.InstanceResult`.
            stamp_s: the frame's stream time, seconds.
            follow_radius_m: largest frame-to-frame move (m) of the followed object; 0 = best quality always.
            switch_after_s: how long (s) the followed object may be missing before another one is taken.
        """
        trusted = [i for i in instances if i.trusted and i.pose is not None]
        followed = self._followed
        if followed is not None and stamp_s < followed.seen_s:  # the stream went back in time
            followed = self._followed = None
        if followed is not None and follow_radius_m > 0:
            same = [i for i in trusted if i.category == followed.category]
            if same:
                dist = [float(np.linalg.norm(np.asarray(i.pose.t_m, np.float64) - followed.t_m)) for i in same]
                k = int(np.argmin(dist))
                if dist[k] <= follow_radius_m:
                    return self._follow(same[k], stamp_s)
            if stamp_s - followed.seen_s < switch_after_s:
                return None
        if not trusted:
            return None
        return self._follow(max(trusted, key=lambda i: i.pose.quality), stamp_s)

    def _follow(self, instance: Any, stamp_s: float) -> Any:
        self._followed = _Followed(instance.category, np.asarray(instance.pose.t_m, np.float64).copy(), stamp_s)
        return instance
