"""From the model's per-cell outputs to 3D-3D pairs: confidence threshold, selection, lifting.

Reference behaviour (docs/reference.md §2.4-2.6), per instance instead of per batch: the G x G confidence
is upsampled bilinearly to the S x S crop, ``theta = min(mean confidence over the mask, floor)``; every
crop pixel with mask, valid depth and confidence >= theta is kept; its source point is the canonical
``match`` of its grid cell (nearest upsampling) and its target point is its depth back-projected with the
*original* intrinsics at the pixel's original-image coordinate (``crop.lift_coordinates``: for the
``"aligned"`` depth sampling the original pixel the depth was read from; for ``"reference"`` the
reference's ``crop.crop_to_image`` cell centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .camera import backproject
from .crop import CropBox, crop_image, lift_coordinates
from .errors import DegenerateGeometryError, EmptyMaskError, InvalidDepthError, InvalidInputError

#: Upper bound of the per-instance confidence threshold (reference: 0.5, about 17.7 px of a 256 crop).
DEFAULT_CONFIDENCE_FLOOR = 0.5


@dataclass(frozen=True)
class Correspondences:
    """Selected pairs of one instance.

    Attributes:
        src: (n, 3) canonical points (model units).
        dst: (n, 3) camera-frame points, metres.
        weights: (n,) confidence of each pair in (0, 1].
        pixels: (n, 2) original-image (u, v) coordinates of the pairs.
        threshold: the confidence threshold theta that was applied.
        mean_confidence: mean confidence over the instance's mask (before thresholding).
    """

    src: np.ndarray
    dst: np.ndarray
    weights: np.ndarray
    pixels: np.ndarray
    threshold: float
    mean_confidence: float


def upsample_grid(grid: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """(G, G[, C]) grid -> (size, size[, C]) with PyTorch semantics (bilinear align_corners=False / nearest).

    A whole-grid ``CropBox`` turns this into the crop resampler, so both share one implementation.
    """
    g = np.asarray(grid)
    n = g.shape[0]
    if g.ndim not in (2, 3) or g.shape[1] != n or n % 2:
        raise InvalidInputError(f"grid must be (G, G[, C]) with even G, got shape {g.shape}")
    return crop_image(g, CropBox(n // 2, n // 2, n // 2, n // 2, int(size)), interpolation)


def confidence_threshold(confidence: np.ndarray, mask: np.ndarray, floor: float = DEFAULT_CONFIDENCE_FLOOR) -> float:
    """``theta = min(mean(confidence[mask]), floor)``; raises ``EmptyMaskError`` for an empty mask."""
    sel = np.asarray(confidence)[np.asarray(mask, dtype=bool)]
    if sel.size == 0:
        raise EmptyMaskError("mask selects no confidence value")
    return float(min(sel.mean(), floor))


@dataclass(frozen=True)
class PixelSelection:
    """Crop pixels kept by :func:`select_pixels` (the pairs before lifting).

    Attributes:
        v, u: (n,) int64 crop row and column of each kept pixel.
        weights: (n,) float64 upsampled confidence of each kept pixel, in (0, 1].
        threshold: the confidence threshold theta that was applied.
        mean_confidence: mean upsampled confidence over the instance's mask (before thresholding).
    """

    v: np.ndarray
    u: np.ndarray
    weights: np.ndarray
    threshold: float
    mean_confidence: float


@lru_cache(maxsize=16)
def cell_centre_pixels(size: int, grid: int) -> np.ndarray:
    """(size,) bool: the crop rows (or columns) in the central half of their grid cell, the cell of row ``v``
    being ``(v * grid) // size`` (the legacy-nearest upsampling of the match).

    Every pixel of a cell pairs the cell's one canonical point with its own depth sample, so the cell's point
    sits at the centre of its pixels; keeping a subset symmetric about that centre (rows 1-2 of a 4-row cell,
    1-3 of 5; a cell of 1-2 rows keeps all) thins the pairs without shifting them. Read-only.
    """
    cell = (np.arange(size) * grid) // size
    first = np.searchsorted(cell, cell, side="left")
    count = np.searchsorted(cell, cell, side="right") - first
    offset = np.arange(size) - first
    keep = (np.abs(offset - 0.5 * (count - 1)) < 0.25 * count) | (count <= 2)
    keep.flags.writeable = False
    return keep


@lru_cache(maxsize=16)
def _cell_centre_mask(size: int, grid: int) -> np.ndarray:
    """(size, size) bool, read-only: :func:`cell_centre_pixels` along both axes."""
    centre = cell_centre_pixels(size, grid)
    mask = centre[:, None] & centre[None, :]
    mask.flags.writeable = False
    return mask


def select_pixels(
    match: np.ndarray,
    confidence: np.ndarray,
    mask_crop: np.ndarray,
    depth_crop_m: np.ndarray,
    box: CropBox,
    confidence_floor: float = DEFAULT_CONFIDENCE_FLOOR,
    min_pairs: int = 3,
    max_pairs: int | None = None,
) -> PixelSelection:
    """Confidence threshold and pixel selection (docs/reference.md §2.4-2.5), without lifting.

    Arguments, checks and errors as :func:`select_correspondences` (``match`` is only shape-checked here);
    ``max_pairs``: when more pixels are kept, only those in the central half of their grid cell along both axes
    (:func:`cell_centre_pixels`, a quarter of them), then, if still more, only those of every k-th cell in
    row-major order (k = ceil(n / max_pairs)): whole cells, so that no cell's pixels are thinned off-centre;
    None = all, as the reference. ``min_pairs`` applies before thinning.
    Returns:
        :class:`PixelSelection`.
    """
    S = box.size
    match = np.asarray(match)
    confidence = np.asarray(confidence)
    G = confidence.shape[0] if confidence.ndim == 2 else -1
    if confidence.ndim != 2 or confidence.shape != (G, G) or match.shape != (G, G, 3):
        raise InvalidInputError(
            f"need match (G,G,3) and confidence (G,G); got {match.shape} and {confidence.shape}"
        )
    if np.shape(mask_crop) != (S, S) or np.shape(depth_crop_m) != (S, S):
        raise InvalidInputError(
            f"mask and depth crops must be ({S}, {S}); got {np.shape(mask_crop)} and {np.shape(depth_crop_m)}"
        )
    mask = np.asarray(mask_crop)
    if mask.dtype != bool:
        mask = mask != 0
    if not mask.any():
        raise EmptyMaskError("instance mask is empty inside its crop")
    depth = np.asarray(depth_crop_m, dtype=np.float32)
    conf_up = upsample_grid(confidence, S, "bilinear")
    mean_conf = float(conf_up[mask].mean())
    theta = min(mean_conf, float(confidence_floor))
    valid_depth = mask & (depth > 0)  # decode_depth already turned NaN/inf/out-of-range into 0
    if not valid_depth.any():
        raise InvalidDepthError("no valid depth inside the instance mask")
    keep = valid_depth & (conf_up >= theta) & (conf_up > 0)
    n = int(np.count_nonzero(keep))
    if n < max(3, min_pairs):
        raise DegenerateGeometryError(
            f"only {n} confident pixels with valid depth (need {max(3, min_pairs)}; theta={theta:.2f})"
        )
    thin = max_pairs is not None and n > max_pairs
    if thin:
        keep &= _cell_centre_mask(S, G)
    v, u = np.nonzero(keep)
    if thin and len(u) > max_pairs:
        step = -(-len(u) // max(int(max_pairs), 1))
        cell = ((v * G) // S) * G + (u * G) // S
        occupied = np.zeros(G * G, bool)
        occupied[cell] = True
        rank = np.cumsum(occupied) - 1  # of each occupied cell, row-major
        kept = np.flatnonzero(rank[cell] % step == 0)
        v, u = v[kept], u[kept]
    return PixelSelection(v, u, conf_up[v, u].astype(np.float64), theta, mean_conf)


def lift_pixels(
    selection: PixelSelection,
    match: np.ndarray,
    depth_crop_m: np.ndarray,
    box: CropBox,
    K: np.ndarray,
    depth_sampling: str = "reference",
) -> Correspondences:
    """Selected crop pixels -> canonical/camera point pairs (docs/reference.md §2.6).

    Args:
        selection: from :func:`select_pixels` on the same ``match``, depth crop and box.
        match: (G, G, 3) canonical point per grid cell (legacy-nearest upsampled to the crop).
        depth_crop_m: (S, S) depth of the crop in metres.
        box: the crop. K: (3, 3) intrinsics of the ORIGINAL image.
        depth_sampling: how ``depth_crop_m`` was sampled (``crop.crop_instance``): ``"aligned"`` lifts each
            depth at the original pixel it was read from; ``"reference"`` (default, the reference) at the
            crop cell centre ``crop.crop_to_image``.
    Returns:
        ``Correspondences`` (float64 arrays).
    """
    match = np.asarray(match)
    G, S = match.shape[0], box.size
    v, u = selection.v, selection.u
    cell = (v * G) // S, (u * G) // S  # legacy-nearest upsampling of the match grid
    src = match[cell].astype(np.float64)
    x, y = lift_coordinates(u, v, box, depth_sampling)
    depth = np.asarray(depth_crop_m, dtype=np.float32)
    dst = backproject(x, y, depth[v, u], K)
    return Correspondences(
        src, dst, selection.weights, np.stack([x, y], 1), selection.threshold, selection.mean_confidence
    )


def select_correspondences(
    match: np.ndarray,
    confidence: np.ndarray,
    mask_crop: np.ndarray,
    depth_crop_m: np.ndarray,
    box: CropBox,
    K: np.ndarray,
    confidence_floor: float = DEFAULT_CONFIDENCE_FLOOR,
    min_pairs: int = 3,
    depth_sampling: str = "reference",
    max_pairs: int | None = None,
) -> Correspondences:
    """Confident, depth-valid crop pixels -> canonical/camera point pairs (docs/reference.md §2.4-2.6).

    :func:`select_pixels` followed by :func:`lift_pixels` (the node times the two separately).

    Args:
        match: (G, G, 3) canonical point per grid cell.
        confidence: (G, G) cycle confidence per cell in [0, 1].
        mask_crop: (S, S) instance mask of the crop (non-zero = object).
        depth_crop_m: (S, S) depth of the crop in metres (nearest-resampled, 0 = invalid).
        box: the crop (S = ``box.size``).
        K: (3, 3) intrinsics of the ORIGINAL image.
        confidence_floor: upper bound of theta.
        min_pairs: fewer selected pairs raise ``DegenerateGeometryError``.
        depth_sampling: how the mask and depth crops were sampled (see :func:`lift_pixels`).
        max_pairs: above this many selected pixels, thin them to about this many, centred in their cells
            (:func:`select_pixels`; None = all).
    Returns:
        ``Correspondences`` (float64 arrays).
    Raises:
        EmptyMaskError, InvalidDepthError, DegenerateGeometryError, InvalidInputError.
    """
    selection = select_pixels(
        match, confidence, mask_crop, depth_crop_m, box, confidence_floor, min_pairs, max_pairs
    )
    return lift_pixels(selection, match, depth_crop_m, box, K, depth_sampling)
