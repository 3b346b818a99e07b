"""Which instances a mask holds, and their category."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def instance_classes(mask: np.ndarray, category: str, class_map: Mapping[int, str]) -> dict[int, str]:
    """{mask value: category} of the instances present in ``mask`` (H, W) integer.

    Instance-id masks (empty ``class_map``): every non-zero id is one instance of ``category``.
    Per-class label masks: every label listed in ``class_map`` that is present is one instance.
    """
    if mask.dtype in (np.uint8, np.uint16):
        counts = np.bincount(mask.ravel(), minlength=1)
        present = np.flatnonzero(counts)
    else:
        present = np.unique(mask)
    present = present[present > 0]
    if class_map:
        return {int(i): class_map[int(i)] for i in present if int(i) in class_map}
    return {int(i): category for i in present}
