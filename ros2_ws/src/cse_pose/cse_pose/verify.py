"""Pose verification by render-and-compare: among a few discrete alternatives of a solved pose, keep the one
whose rendered deformed prior best explains the observed mask and depth.

The correspondence solver can land on a pose that fits most pairs but faces the wrong way: a camera seen
from behind with its lens pointing away, a laptop with the lid at the front, a mug with its handle on the
wrong side. Those alternatives are few and known per category, so each pose is scored against them:

* candidates: object-frame rotations ``F`` (:func:`candidate_rotations`) about a pivot, the solver's
  pose being ``F = I`` (index 0). Camera and laptop: the identity and 180 degrees about y (front/back).
  Mug: ``sweep_steps`` rotations about y. Bottle, bowl and can are symmetric about y: nothing to verify.
  The pivot (:func:`rotation_pivot`) is the box centre of the prior's main part (a mug's or camera's
  body, a laptop's base), so the part that dominates the observation stays where the solver put it and
  the rest (handle, lens, lid) turns around it.
* rendering (:func:`render_depth`): every candidate's deformed prior is z-buffered by ``core.raster`` (one
  call, candidates side by side, back faces dropped beforehand, a decimation of the prior's triangles:
  :func:`prepare_prior`) on a coarse grid over the instance crop: ``GRID`` cells per side plus ``MARGIN``
  cells around it, where the mask is known to be empty.
* observation (:func:`observe`): the pipeline's crop mask and depth, sampled at the grid cells.
* alignment (:func:`align_rendered`): the solver's pose is typically a few degrees and centimetres off
  even when it faces the right way, an error common to all candidates that would drown what tells them
  apart (a lens, a lid, a handle). Each rendering is moved onto the observation first: the integer image
  shift (at most ``MAX_SHIFT`` cells) of largest overlap with the mask, then a depth plane fitted to the
  observed minus rendered depth (a small tilt and a depth offset).
* score in [0, 1] (:func:`score_candidates`): one minus the mean cost over the cells the object occupies
  in the observation or in the rendering. A masked cell costs ``min(|rendered - observed depth|, tau) /
  tau`` when rendered, 0 when rendered without valid observed depth, 1 when not rendered; a rendered cell
  outside the mask costs 1, unless the observed depth there lies more than ``tau`` in front of the
  rendering (an occluder: the cell is left out).
* decision: the best candidate replaces the solver's pose only when its score is higher by more than
  ``switch_margin``; ties (a box-like body seen from a side) keep the solver's pose. The published pose
  is the candidate's rotation about the pivot; translation and size otherwise stay the solver's.
* quality (:func:`verified_quality`): the published quality is the fit quality times
  ``min(1, score / FULL_AGREEMENT)``: a pose whose rendering matches the observation as well as a good
  pose typically does keeps its fit quality, one that matches worse loses trust in proportion.

Conventions: camera optical frame, ``p_cam = R p_obj + t_m`` with ``p_obj`` in the published object frame
(y up; ``cse_pose.core.categories``), metres; grid images (rows, columns) with pixel centres on integers
(the rasteriser's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .core.crop import CropBox
from .core.errors import InvalidInputError
from .core.pose import ObjectPose
from .core.raster import RasterMesh, rasterize
from .display import _components, decimate_faces

#: Categories with discrete alternatives to verify (bottle, bowl and can are symmetric about y).
VERIFIABLE_CATEGORIES: tuple[str, ...] = ("camera", "laptop", "mug")
#: Compare grid: cells per crop side, and cells rendered around the crop on each side.
GRID = 32
MARGIN = 8
#: Mug sweep about the up axis: number of equally spaced rotations (the solver's pose is the first).
MUG_SWEEP_STEPS = 12
#: Depth disagreement (metres) at which a masked cell costs as much as a missing one.
DEPTH_TOLERANCE_M = 0.02
#: Largest image shift (grid cells per axis) of a rendering when aligning it to the observation.
MAX_SHIFT = 2
#: A candidate replaces the solver's pose only when its score is higher by more than this.
SWITCH_MARGIN = 0.02
#: Render score from which a pose keeps its full fit quality: about the median score of poses within
#: 10 deg / 5 cm with the shipped camera model (0.62 on make eval's split, 0.53 on a validation split; the
#: deformed prior never matches a real object exactly, an exact mesh scores above 0.95).
FULL_AGREEMENT = 0.6
#: Triangles of the rendered prior at most (:func:`prepare_prior`); a 32-cell grid needs no more.
RENDER_MAX_FACES = 400


@dataclass(frozen=True)
class PriorMesh:
    """What verification needs of a model's prior mesh, prepared once per model (:func:`prepare_prior`).

    Attributes:
        faces: (F, 3) int64 triangles to render (indices into the prior's N vertices).
        parts: (N,) connected-part label of every vertex (of the full mesh).
    """

    faces: np.ndarray
    parts: np.ndarray


@dataclass(frozen=True)
class Observation:
    """The observed instance on the compare grid (``n = GRID + 2 MARGIN`` cells per side).

    Attributes:
        mask: (n, n) bool instance mask (False in the margin).
        depth_m: (n, n) float32 observed depth, metres, 0 = invalid or unknown (the margin).
        K: (3, 3) intrinsics of the grid (pixel centres on integers): camera point -> grid cell.
    """

    mask: np.ndarray
    depth_m: np.ndarray
    K: np.ndarray

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_pose`.

    Attributes:
        pose: the kept pose (the solver's, or the chosen candidate), quality from :func:`verified_quality`.
        vertices_cam: (N, 3) deformed prior of the kept pose, camera frame, metres.
        index: the kept candidate (0 = the solver's pose).
        scores: (C,) score of every candidate, in [0, 1].
    """

    pose: ObjectPose
    vertices_cam: np.ndarray
    index: int
    scores: np.ndarray


def _rot_y(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def candidate_rotations(category: str, sweep_steps: int = MUG_SWEEP_STEPS) -> np.ndarray:
    """(C, 3, 3) object-frame rotations tried for a pose of ``category``; the first is the identity.

    Camera, laptop: identity and 180 degrees about y. Mug: ``sweep_steps`` rotations about y by
    ``2 pi k / sweep_steps``. Other categories: the identity only.
    """
    if category in ("camera", "laptop"):
        return np.stack([np.eye(3), _rot_y(np.pi)])
    if category == "mug":
        steps = max(int(sweep_steps), 1)
        return np.stack([_rot_y(2.0 * np.pi * k / steps) for k in range(steps)])
    return np.eye(3)[None]


def prepare_prior(faces: np.ndarray, n_vertices: int, vertices: np.ndarray | None = None,
                  max_faces: int = RENDER_MAX_FACES) -> PriorMesh:
    """The render triangles (``display.decimate_faces`` of ``faces`` chosen on ``vertices``; all of them
    when ``vertices`` is None) and the part labels of a prior mesh.

    Args:
        faces: (F, 3) the model's triangles (``model.info.faces``). n_vertices: N.
        vertices: (N, 3) a typical deformed prior of the model (``display.neutral_vertices``), or None.
        max_faces: triangles to render at most.
    """
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    render = faces if vertices is None else decimate_faces(vertices, faces, max_faces).astype(np.int64)
    return PriorMesh(render, _components(faces, int(n_vertices)))


def rotation_pivot(vertices_obj: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """(3,) object-frame point the candidates rotate about: the bounding-box centre of the main part.

    The main part is the connected part with the most vertices (a mug's or camera's body), the lowest one
    (smallest mean y) among equals (a laptop's base).

    Args:
        vertices_obj: (N, 3) deformed prior in the published object frame, metres.
        parts: (N,) part labels (:attr:`PriorMesh.parts`).
    """
    ids, inverse, counts = np.unique(parts, return_inverse=True, return_counts=True)
    mean_y = np.bincount(inverse, weights=vertices_obj[:, 1]) / counts
    main = ids[np.lexsort((mean_y, -counts))[0]]
    body = vertices_obj[parts == main]
    return 0.5 * (body.min(axis=0) + body.max(axis=0))


def observe(mask_crop: np.ndarray, depth_crop_m: np.ndarray, box: CropBox, K: np.ndarray,
            depth_sampling: str = "aligned", grid: int = GRID, margin: int = MARGIN) -> Observation:
    """Sample the pipeline's instance crop on the compare grid and build the grid's intrinsics.

    Grid cell ``j`` reads crop pixel ``u_j = floor((j + 0.5) S / grid)``, whose depth the crop read at
    original image coordinate ``x0 + (u + o) 2 l / S - o`` (``o`` = 0.5 for ``"aligned"`` depth sampling,
    0 for ``"reference"``); the grid intrinsics put cell ``j`` there (up to the crop's own rounding).

    Args:
        mask_crop: (S, S) bool selection mask of the crop. depth_crop_m: (S, S) metres, 0 = invalid.
        box: the crop. K: (3, 3) intrinsics of the original image.
        depth_sampling: how the crop was sampled (``PipelineParams.depth_sampling``).
        grid, margin: compare grid cells over the crop, and around it per side.
    """
    S = box.size
    if np.shape(mask_crop) != (S, S) or np.shape(depth_crop_m) != (S, S):
        raise InvalidInputError(f"crops must be ({S}, {S}), got {np.shape(mask_crop)} and {np.shape(depth_crop_m)}")
    idx = ((2 * np.arange(grid) + 1) * S) // (2 * grid)
    n = grid + 2 * margin
    mask = np.zeros((n, n), bool)
    depth = np.zeros((n, n), np.float32)
    inner = slice(margin, margin + grid)
    mask[inner, inner] = np.asarray(mask_crop)[idx[:, None], idx[None, :]]
    depth[inner, inner] = np.asarray(depth_crop_m)[idx[:, None], idx[None, :]]
    off = 0.5 if depth_sampling == "aligned" else 0.0
    K = np.asarray(K, np.float64)
    step_x, step_y = 2.0 * box.half_x / grid, 2.0 * box.half_y / grid  # image pixels per cell
    first_x = box.x0 + (S / (2.0 * grid) + off) * (2.0 * box.half_x / S) - off  # image x of cell 0
    first_y = box.y0 + (S / (2.0 * grid) + off) * (2.0 * box.half_y / S) - off
    Kg = np.array([
        [K[0, 0] / step_x, K[0, 1] / step_x, (K[0, 2] - first_x) / step_x + margin],
        [0.0, K[1, 1] / step_y, (K[1, 2] - first_y) / step_y + margin],
        [0.0, 0.0, 1.0],
    ])
    return Observation(mask, depth, Kg)


def render_depth(local: np.ndarray, faces: np.ndarray, M: np.ndarray, anchor: np.ndarray, K: np.ndarray,
                 size: int) -> np.ndarray:
    """Z-buffer depth of posed copies ``p = M_c v + anchor`` of one mesh, each in its own square image.

    The copies are rendered in one rasteriser call side by side (copy ``c`` shifted by ``c * size``
    pixels: ``X += c size Z / f_x``, an exact image-space shift); faces seen from behind are dropped first
    (the meshes are closed and outward oriented: counter-clockwise seen from outside), and pixels that a
    neighbour's overhanging copy drew into a tile are cleared.

    Args:
        local: (N, 3) the mesh's vertices in the object frame relative to the pivot, metres.
        faces: (F, 3) triangles. M: (C, 3, 3) rotations. anchor: (3,) camera-frame position of the pivot.
        K: (3, 3) grid intrinsics. size: image side in pixels.
    Returns:
        (C, size, size) float32 depth, metres, 0 where the copy is not visible.
    """
    C, N = len(M), len(local)
    a, b, c = local[faces[:, 0]], local[faces[:, 1]], local[faces[:, 2]]
    normal = np.cross(b - a, c - a)  # (F, 3); for copy k: (M_k n) . (M_k a + anchor) < 0 <=> facing
    facing = (np.einsum("fi,fi->f", normal, a)[:, None] + normal @ (M.transpose(0, 2, 1) @ anchor).T) < 0.0
    face_of, copy_of = np.nonzero(facing)
    vertices = local @ M.transpose(0, 2, 1) + anchor  # (C, N, 3)
    vertices[..., 0] += (np.arange(C, dtype=np.float64) * size / K[0, 0])[:, None] * vertices[..., 2]
    out = rasterize([RasterMesh(vertices.reshape(-1, 3), faces[face_of] + (copy_of * N)[:, None])],
                    K, C * size, size)
    tile = np.arange(C * size) // size
    spill = (out.face_index >= 0) & (copy_of[np.maximum(out.face_index, 0)] != tile[None, :])
    depth = np.where(spill, np.float32(0.0), out.depth_m)
    return np.ascontiguousarray(depth.reshape(size, C, size).transpose(1, 0, 2))


def align_rendered(depth_rendered: np.ndarray, obs: Observation, max_shift: int = MAX_SHIFT,
                   tolerance_m: float = DEPTH_TOLERANCE_M) -> np.ndarray:
    """Each rendering moved onto the observation: the integer image shift (at most ``max_shift`` cells per
    axis, smaller shifts first among equals) of largest silhouette overlap with the mask, then the depth
    plane ``a u + b v + c`` fitted by least squares to the observed minus rendered depth on the overlap
    (refitted once on the cells within ``tolerance_m`` of the first fit), added to the rendered depth.

    Args:
        depth_rendered: (C, n, n) rendered depth, metres, 0 = nothing. obs: the observation.
    Returns:
        (C, n, n) float32 aligned depth, 0 = nothing.
    """
    C, n, _ = depth_rendered.shape
    D = depth_rendered
    if max_shift > 0:
        # circular cross-correlation of the silhouettes with the mask (the margin is empty: no wrap-around
        # for small shifts); overlap of shift (dy, dx) = corr[dy, dx]
        corr = np.fft.irfft2(np.fft.rfft2(obs.mask.astype(np.float64))
                             * np.conj(np.fft.rfft2((D > 0).astype(np.float64))), s=(n, n))
        d = np.arange(-max_shift, max_shift + 1)
        window = corr[:, d[:, None] % n, d[None, :] % n] - 1e-3 * (np.abs(d)[:, None] + np.abs(d)[None, :])
        best = window.reshape(C, -1).argmax(axis=1)
        dy, dx = d[best // len(d)], d[best % len(d)]
        rows = (np.arange(n)[None, :] - dy[:, None]) % n  # (C, n): source row of every target row
        cols = (np.arange(n)[None, :] - dx[:, None]) % n
        D = D[np.arange(C)[:, None, None], rows[:, :, None], cols[:, None, :]]
    O = obs.depth_m.astype(np.float64).reshape(-1)
    Df = D.reshape(C, -1).astype(np.float64)
    both = (Df > 0) & (obs.mask.reshape(-1) & (O > 0))[None]
    v, u = np.divmod(np.arange(n * n, dtype=np.float64), n)
    A = np.stack([u, v, np.ones_like(u)], axis=1)  # (n n, 3)
    AA = (A[:, :, None] * A[:, None, :]).reshape(-1, 9)
    residual = O[None] - Df
    weight = both.astype(np.float64)
    offset = np.zeros_like(Df)
    for _ in range(2):
        AtA = (weight @ AA).reshape(C, 3, 3) + 1e-6 * np.eye(3)
        Atr = (weight * residual) @ A
        coef = np.linalg.solve(AtA, Atr[:, :, None])[:, :, 0]  # (C, 3)
        offset = coef @ A.T
        weight = (both & (np.abs(residual - offset) < tolerance_m)).astype(np.float64)
    return np.where(Df > 0, Df + offset, 0.0).astype(np.float32).reshape(C, n, n)


def score_candidates(depth_rendered: np.ndarray, obs: Observation,
                     tolerance_m: float = DEPTH_TOLERANCE_M) -> np.ndarray:
    """(C,) agreement in [0, 1] of rendered depths (C, n, n) with the observation (module docstring)."""
    D = depth_rendered
    O = obs.depth_m[None]
    M = obs.mask[None]
    rendered = D > 0
    observed = O > 0
    residual = np.minimum(np.abs(D - O) * (1.0 / tolerance_m), 1.0)
    cost_in = np.where(rendered, np.where(observed, residual, 0.0), 1.0)  # masked cells
    outside = rendered & ~M & ~(observed & (O < D - tolerance_m))  # rendered, not in the mask, not occluded
    cost = np.where(M, cost_in, outside)
    support = (M | outside).sum(axis=(1, 2))
    return 1.0 - cost.sum(axis=(1, 2)) / np.maximum(support, 1)


def verified_quality(fit_quality: float, score: float, full_agreement: float = FULL_AGREEMENT) -> float:
    """Published quality of a verified pose: the solver's fit quality times ``min(1, score / full_agreement)``
    (``score`` clipped to [0, 1])."""
    return float(fit_quality) * min(1.0, max(float(score), 0.0) / full_agreement)


def verify_pose(pose: ObjectPose, vertices_cam: np.ndarray, prior: PriorMesh, category: str, obs: Observation,
                *, sweep_steps: int = MUG_SWEEP_STEPS, tolerance_m: float = DEPTH_TOLERANCE_M,
                max_shift: int = MAX_SHIFT, switch_margin: float = SWITCH_MARGIN) -> Verification:
    """Score ``pose`` and its discrete alternatives (:func:`candidate_rotations`) against ``obs``; keep the best.

    Args:
        pose: the solver's pose (``R``, box-centre ``t_m``, ``quality``).
        vertices_cam: (N, 3) its deformed prior in the camera frame, metres.
        prior: :func:`prepare_prior` of the model.
        category: the instance's category (:data:`VERIFIABLE_CATEGORIES`; others get one candidate).
        obs: :func:`observe` of the instance's crop.
        sweep_steps, tolerance_m, max_shift, switch_margin: see the module constants.
    Returns:
        :class:`Verification` (the kept pose with its quality, its vertices, its index, all scores).
    """
    R = np.asarray(pose.R, np.float64)
    t = np.asarray(pose.t_m, np.float64)
    vertices_cam = np.asarray(vertices_cam, np.float64)
    v_obj = (vertices_cam - t) @ R  # (N, 3) object frame: R^T (p - t)
    pivot = rotation_pivot(v_obj, prior.parts)
    M = R @ candidate_rotations(category, sweep_steps)  # (C, 3, 3) candidate orientations
    anchor = R @ pivot + t  # the pivot stays where it is
    local = v_obj - pivot
    depth = render_depth(local, prior.faces, M, anchor, obs.K, obs.size)
    depth = align_rendered(depth, obs, max_shift, tolerance_m)
    scores = score_candidates(depth, obs, tolerance_m)
    best = int(np.argmax(scores))
    index = best if scores[best] > scores[0] + switch_margin else 0
    if index == 0:
        kept, vertices = pose, vertices_cam
    else:
        centre = 0.5 * (local.min(axis=0) + local.max(axis=0))  # box centre, object frame relative to the pivot
        kept = replace(pose, R=M[index], t_m=M[index] @ centre + anchor)
        vertices = local @ M[index].T + anchor
    kept = replace(kept, quality=verified_quality(pose.quality, float(scores[index])))
    return Verification(kept, vertices, index, scores)
