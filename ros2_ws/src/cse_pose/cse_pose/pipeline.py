"""The ROS-free per-frame pipeline, shared by the node, evaluation and bench.

Per frame: for every instance of the mask that ``classes`` names, the reference crop (``core.crop``),
then one batched model call per category (``inference``), then per instance the confidence selection
and lifting (``core.correspondence``), the robust similarity (``core.solver``) and the published pose
(``core.pose``); then the ICP refinement of each pose against the observed depth for the categories in
``refine_categories`` (``refine``), the box measured on the observed depth for ``measure_size_categories``
(``sizing``) and, for trusted poses when enabled, the temporal smoothing per instance
(``smoothing``). A bad instance (empty mask, no
valid depth, too few confident pairs, solver failure, unknown category) gets ``pose=None`` and the
error's ``reason``; it never fails the frame. Frame-level problems (arrays of the wrong shape or dtype,
invalid K) raise :class:`~cse_pose.core.errors.PoseError`.

Log records go to the standard ``logging`` logger ``cse_pose.pipeline``; the ROS node forwards the
``cse_pose`` loggers to /rosout.

Conventions: images (H, W) in pixels, depth in metres (0 = invalid), OpenCV optical camera frame,
``p_cam = R p_obj + t_m`` with ``p_obj`` in the published object frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from .core.camera import validate_intrinsics
from .core.categories import CATEGORIES
from .core.correspondence import lift_pixels, select_pixels
from .core.crop import CropBox, crop_instance, downsample_mask
from .core.errors import InvalidInputError, PoseError
from .core.pose import ObjectPose, pose_from_similarity
from .core.solver import ransac_umeyama
from .display import neutral_vertices
from .inference.backend import InferenceBackend
from .refine import SurfaceSampler, observed_points, refine_pose
from .sizing import DEFAULT_CATEGORIES as DEFAULT_MEASURED_CATEGORIES
from .sizing import MEASURABLE_CATEGORIES, apply_measured_box
from .smoothing import PoseSmoother
from .verify import VERIFIABLE_CATEGORIES, PriorMesh, observe, prepare_prior, verify_pose

LOG = logging.getLogger(__name__)

#: Timing keys of :attr:`FrameResult.timings_ms` (milliseconds, summed over instances), plus ``total``.
#: ``select`` = confidence threshold + pixel selection, ``lift`` = back-projection into 3D-3D pairs, ``refine`` =
#: everything after the pose (ICP, the measured box, smoothing).
STAGES: tuple[str, ...] = ("crop", "model", "select", "lift", "solve", "pose", "verify", "refine")

REASON_UNKNOWN_CATEGORY = "unknown_category"
REASON_MODEL_ERROR = "model_error"
REASON_LOW_QUALITY = "low_quality"
REASON_INTERNAL = "internal_error"
#: Values of :attr:`PipelineParams.depth_sampling`.
DEPTH_SAMPLINGS: tuple[str, ...] = ("aligned", "reference")


@dataclass(frozen=True)
class PipelineParams:
    """Per-frame settings (names follow ``core``: crop ``enlarge``, solver ``threshold_m`` etc.).

    Attributes:
        min_depth_m, max_depth_m: depth samples outside this range (metres) are invalid.
        confidence_floor: upper bound of the per-instance confidence threshold
            ``theta = min(mean confidence over the mask, confidence_floor)`` (reference: 0.5).
        enlarge: per-axis enlargement of the mask box for the crop (reference Wild6D test: 1.35).
        ransac_threshold_m: solver inlier threshold (metres); the fit quality is measured against the same
            threshold.
        ransac_threshold_rel: the threshold grows with the object: ``max(ransac_threshold_m,
            ransac_threshold_rel * r)``, r = RMS distance of the instance's lifted points from their centroid
            (0 = fixed). The networks' correspondence errors scale with the object: on a validation split
            (r: laptop 14 cm, bottle 7.5, bowl 6.2, camera 4.8, can 4.7, mug 4.5) the fixed 1 cm published no
            laptop pose (quality < 0.13). 0.2 gives the laptop ~2.8 cm, the bottle ~1.5 and the bowl ~1.2 and
            leaves camera, can and mug at 1 cm; against 0.14 on the same split (10deg5cm, published share):
            laptop 45.8 -> 52.5 % and 23.3 -> 64.2 %, bottle 100 and 69.2 -> 80.0, bowl 98.3 -> 100 and
            74.2 -> 96.7, camera, can and mug unchanged; 0.25 published more camera poses, 80.5 % of them right
            against 86.7.
        ransac_threshold_rel_by_category: ``ransac_threshold_rel`` per category where it differs, (category,
            value) pairs (a mapping is accepted). Chosen on the validation split (shipped models, 120 frames each;
            0.2 / 0.4 / 1.0): bowl 1.0 (5deg2cm 92.5 / 95.0 / 97.5 %, plain Umeyama 98.3), laptop 0.4 (10deg5cm
            61.7 / 62.5 / 62.5, published 75.0 / 94.2 / 97.5), mug 0.4 (10deg5cm 87.5 / 91.7 / 90.8, published
            93.3 / 100 / 100); bottle, can and camera keep 0.2 (camera 10deg5cm 75.0 / 73.3 / 67.5, can 90.8 /
            90.0 / 90.0). Their correspondence errors are wider than one fixed fraction of the object allows: a
            tight threshold keeps one consistent patch and tilts the fit about it.
        ransac_max_hypotheses: upper bound on RANSAC minimal-sample hypotheses.
        min_correspondences: fewer selected pairs -> no pose (``degenerate_geometry``).
        max_correspondences: above this many selected pixels, only the central quarter of each grid cell's pixels
            go to the solver, then those of every k-th cell, about this many in all (``core.correspondence.
            select_pixels``; 0 = all, as the reference). The match grid is upsampled nearest to the crop, so a
            mug at 0.6 m gives ~6,500 pairs from ~400 distinct canonical points, and lifting and solving grow
            with the pairs: 1.80 -> 1.02 ms for that mug. 1,000 against all, make eval (shipped models, 10deg5cm
            synthetic / lit / wide split): bottle 100 / 100 / 89.2 -> same, bowl 100 % on all, camera 87.9 /
            88.3 / 41.7 -> 88.3 / 87.9 / 40.0, can 98.8 / 98.8 / 75.8 -> 98.8 / 99.2 / 73.3, laptop 93.3 / 93.8 /
            89.2 -> 93.8 / 93.3 / 88.3, mug 96.2 / 96.2 / 84.2 -> 95.8 / 96.2 / 85.8; within one frame on the
            first two splits, the wide one (shapes beyond training) lost 2-3 frames of 120 for camera and can.
        min_inliers: fewer RANSAC inliers -> no pose (``degenerate_geometry``).
        min_quality: poses with ``quality`` below this are returned with ``trusted=False``.
        seed: RANSAC seed (``None``: nondeterministic).
        depth_sampling: how the depth and the selection mask are resampled into the crop.
            ``"reference"``: PyTorch legacy nearest (source pixel ``floor(u * 2l/S)``), as the reference;
            it samples ``0.5 * 2l/S`` original pixels up-left of where the bilinear RGB crop (and so the
            model's match) looks, a misregistration that tilts the fit on slanted surfaces.
            ``"aligned"`` (default): nearest with pixel-centre alignment (``floor((u + 0.5) * 2l/S)``),
            the same points the RGB crop samples, each depth lifted at the pixel it was read from
            (``core.crop.lift_coordinates``). Measured with the oracle model on 40 random poses
            (640x480, f=600 px, objects 6-20 cm at 0.5-1 m): rotation error median 0.86 deg -> 0.08 deg,
            p90 1.14 -> 0.29 deg, translation median 1.46 -> 0.15 mm. The network's grid mask always uses
            the legacy nearest crop, as in training (``core.crop.crop_instance``).
        refine_categories: categories whose poses are ICP-refined against the observed depth
            (``refine``, point-to-plane; needs open3d). Default: the mug, the one category where it gained
            more than 5 points (6 of the validation split's 120 frames; shipped models, inlier threshold
            0.14, 10deg5cm off -> on): mug 73.3 -> 87.5 % (published poses right 74.0 -> 92.3 %), camera
            63.3 -> 68.3, laptop 45.8 -> 40.8, bottle 100 -> 100, bowl 98.3 -> 100 (but 5deg2cm 90.0 ->
            75.8), can 99.2 -> 100. The camera, at the limit, was measured again on 240 more validation frames
            (another seed): 56.7 -> 59.6 %, its published poses right 89.5 -> 80.7 %, so it stays off. The
            mug's body fixes its tilt and position; its azimuth stays the correspondences' (only the handle
            constrains it).
        refine_max_distance_m, refine_iterations: ICP correspondence distance (metres) and iterations.
        measure_size_categories: categories whose box is measured on their observed depth points in the posed
            object frame (``sizing.MEASURED_AXES``: diameter and height of bottle, bowl and can, the mug's
            height, all three extents of camera and laptop) instead of taken from the deformed prior, whose
            proportions are the category's mean whatever the image. A subset of ``sizing.MEASURABLE_CATEGORIES``;
            default bottle, bowl, can, laptop, mug (the camera trades 5deg2cm for box fit, ``sizing``); empty =
            off.
        smoothing_alpha: temporal smoothing weight of the previous pose per instance (0 = off); applied
            when ``process`` gets a ``stamp_s``.
        smoothing_timeout_s: an instance unseen for longer than this (stream time) restarts its smoothing.
        verify_categories: categories whose poses are verified by render-and-compare (``verify``: the
            solver's pose against its discrete alternatives, camera/laptop front-back flip, mug handle sweep;
            the quality is scaled by the render score, ``verify.verified_quality``); a subset of
            ``verify.VERIFIABLE_CATEGORIES``, empty = off (default: with the shipped models it gained on no
            category on both make eval's split and a validation split, ``cse_pose_dev.verify_eval``).
    """

    min_depth_m: float = 0.1
    max_depth_m: float = 4.0
    confidence_floor: float = 0.5
    enlarge: float = 1.35
    ransac_threshold_m: float = 0.01
    ransac_threshold_rel: float = 0.2
    ransac_threshold_rel_by_category: tuple[tuple[str, float], ...] = (("bowl", 1.0), ("laptop", 0.4), ("mug", 0.4))
    ransac_max_hypotheses: int = 1000
    min_correspondences: int = 30
    max_correspondences: int = 1000
    min_inliers: int = 20
    min_quality: float = 0.15
    seed: int | None = 0
    depth_sampling: str = "aligned"
    refine_categories: tuple[str, ...] = ("mug",)
    refine_max_distance_m: float = 0.02
    refine_iterations: int = 5
    measure_size_categories: tuple[str, ...] = DEFAULT_MEASURED_CATEGORIES
    smoothing_alpha: float = 0.0
    smoothing_timeout_s: float = 1.0
    verify_categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        object.__setattr__(self, "verify_categories", tuple(str(c) for c in self.verify_categories))
        object.__setattr__(self, "refine_categories", tuple(str(c) for c in self.refine_categories))
        object.__setattr__(self, "measure_size_categories", tuple(str(c) for c in self.measure_size_categories))
        by_category = self.ransac_threshold_rel_by_category
        pairs = by_category.items() if isinstance(by_category, Mapping) else by_category
        object.__setattr__(self, "ransac_threshold_rel_by_category",
                           tuple(sorted((str(c), float(v)) for c, v in pairs)))
        bad = [f"{c}={v}" for c, v in self.ransac_threshold_rel_by_category if c not in CATEGORIES or not 0 <= v <= 1]
        if bad:
            problems.append(f"ransac_threshold_rel_by_category needs categories among {CATEGORIES} and values in "
                            f"[0, 1], got {bad}")
        unknown_refine = [c for c in self.refine_categories if c not in CATEGORIES]
        if unknown_refine:
            problems.append(f"refine_categories must be among {CATEGORIES}, got {unknown_refine}")
        unknown_measure = [c for c in self.measure_size_categories if c not in MEASURABLE_CATEGORIES]
        if unknown_measure:
            problems.append(f"measure_size_categories must be among {MEASURABLE_CATEGORIES}, got {unknown_measure}")
        unknown = [c for c in self.verify_categories if c not in VERIFIABLE_CATEGORIES]
        if unknown:
            problems.append(f"verify_categories must be among {VERIFIABLE_CATEGORIES}, got {unknown}")
        if not 0.0 <= self.min_depth_m < self.max_depth_m:
            problems.append(f"need 0 <= min_depth_m < max_depth_m: {self.min_depth_m}, {self.max_depth_m}")
        if not 0.0 <= self.confidence_floor <= 1.0:
            problems.append(f"confidence_floor must be in [0, 1], got {self.confidence_floor}")
        if not self.enlarge > 0:
            problems.append(f"enlarge must be positive, got {self.enlarge}")
        if not self.ransac_threshold_m > 0:
            problems.append(f"ransac_threshold_m must be positive, got {self.ransac_threshold_m}")
        if not 0 <= self.ransac_threshold_rel <= 1:
            problems.append(f"ransac_threshold_rel must be in [0, 1], got {self.ransac_threshold_rel}")
        if self.ransac_max_hypotheses < 1 or self.min_correspondences < 3 or self.min_inliers < 3:
            problems.append("need ransac_max_hypotheses >= 1, min_correspondences >= 3, min_inliers >= 3")
        if not (self.max_correspondences == 0 or self.max_correspondences >= max(self.min_inliers, 3)):
            problems.append(f"max_correspondences must be 0 (all) or >= min_inliers ({self.min_inliers}), "
                            f"got {self.max_correspondences}")
        if self.depth_sampling not in DEPTH_SAMPLINGS:
            problems.append(f"depth_sampling must be one of {DEPTH_SAMPLINGS}, got {self.depth_sampling!r}")
        if not (self.refine_max_distance_m > 0 and self.refine_iterations >= 1):
            problems.append("need refine_max_distance_m > 0 and refine_iterations >= 1")
        if not (0.0 <= self.smoothing_alpha < 1.0 and self.smoothing_timeout_s >= 0.0):
            problems.append("need 0 <= smoothing_alpha < 1 and smoothing_timeout_s >= 0")
        if problems:
            raise InvalidInputError("; ".join(problems))

    def threshold_rel(self, category: str) -> float:
        """The relative inlier threshold of ``category``: its entry in ``ransac_threshold_rel_by_category``, else
        ``ransac_threshold_rel``."""
        return dict(self.ransac_threshold_rel_by_category).get(category, self.ransac_threshold_rel)


@dataclass
class InstanceResult:
    """Outcome for one instance of the mask.

    Attributes:
        instance_id: value of the instance in the mask image.
        category: its category (from ``classes``).
        pose: the published pose, or None when none could be computed.
        trusted: ``pose.quality >= min_quality`` (False without a pose).
        reason: why there is no (trusted) pose: a ``PoseError.reason`` (``empty_mask``,
            ``invalid_depth``, ``degenerate_geometry``, ...), ``unknown_category``, ``model_error``,
            ``low_quality``; None for a trusted pose.
        vertices_cam: (N, 3) deformed prior in the camera frame, metres (None without a pose).
        crop_box: the crop used (None when the mask gave none).
        refine_note: why ICP refinement was not applied ("" when applied or not asked for).
    """

    instance_id: int
    category: str
    pose: ObjectPose | None
    trusted: bool
    reason: str | None
    vertices_cam: np.ndarray | None = None
    crop_box: CropBox | None = None
    refine_note: str = ""


@dataclass
class FrameResult:
    """All instances of one frame and the time spent per stage (ms; keys :data:`STAGES` and ``total``)."""

    instances: list[InstanceResult]
    timings_ms: dict[str, float] = field(default_factory=dict)


class _ModelSlot:
    """Per-category constants and reusable input buffers (allocated once, grown when needed)."""

    def __init__(self, model: InferenceBackend) -> None:
        info = model.info
        self.model = model
        self.S = int(info.crop_size)
        self.G = int(info.grid_size)
        self.base_rotation = np.asarray(info.base_rotation, dtype=np.float64)
        self.faces = np.asarray(info.faces) if getattr(info, "faces", None) is not None else None
        self._rgb = np.zeros((0, 3, self.S, self.S), np.float32)
        self._mask = np.zeros((0, 1, self.G, self.G), np.float32)
        self._sampler: SurfaceSampler | str | None = None  # str: why there is none

    def surface_sampler(self, vertices: np.ndarray | None = None) -> SurfaceSampler:
        """The ICP's sample positions on this model's mesh, drawn once: on the model's neutral shape (one model
        call), or on ``vertices`` (N, 3) when that call fails. Raises ValueError (every time) when the model
        has no faces or its mesh no area."""
        if self._sampler is None and self.faces is None:
            self._sampler = "the model has no faces"
        if self._sampler is None:
            neutral = neutral_vertices(self.model)
            reference = neutral if neutral is not None else vertices
            if reference is None:
                self._sampler = "no vertices to sample"
            else:
                try:
                    self._sampler = SurfaceSampler(reference, self.faces)
                except ValueError as exc:
                    self._sampler = str(exc)
        if isinstance(self._sampler, str):
            raise ValueError(self._sampler)
        return self._sampler

    def buffers(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(batch, 3, S, S) and (batch, 1, G, G) float32 views into the persistent buffers.

        Growing keeps the rows already written (instances are cropped into the buffers one by one).
        """
        if len(self._rgb) < batch:
            grown = max(batch, 2 * len(self._rgb))
            rgb = np.zeros((grown, 3, self.S, self.S), np.float32)
            mask = np.zeros((grown, 1, self.G, self.G), np.float32)
            rgb[: len(self._rgb)] = self._rgb
            mask[: len(self._mask)] = self._mask
            self._rgb, self._mask = rgb, mask
        return self._rgb[:batch], self._mask[:batch]


@dataclass
class _Pending:
    """An instance between the crop and the solver."""

    index: int  # position in the frame's result list
    box: CropBox
    mask_crop: np.ndarray  # (S, S) bool
    depth_crop: np.ndarray  # (S, S) float32 metres, 0 = invalid


def _check_frame(
    rgb: np.ndarray, depth_m: np.ndarray, instance_mask: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rgb = np.asarray(rgb)
    depth = np.asarray(depth_m)
    mask = np.asarray(instance_mask)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if depth.shape != (h, w) or not np.issubdtype(depth.dtype, np.floating):
        raise InvalidInputError(f"depth_m must be ({h}, {w}) float metres, got {depth.shape} {depth.dtype}")
    if mask.shape != (h, w) or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise InvalidInputError(f"instance_mask must be ({h}, {w}) integer, got {mask.shape} {mask.dtype}")
    return rgb, depth, mask, validate_intrinsics(K, w, h)


class PosePipeline:
    """Crop -> model -> select -> solve -> pose for every instance of a frame.

    Per-category constants (S, G, base rotation) and the batch input buffers are set up once and
    reused, so a steady stream of frames does not grow memory. Not thread-safe: one ``process`` at a time
    per instance (the buffers are shared).

    Args:
        models: category -> loaded model (:func:`cse_pose.inference.load_model`).
        params: :class:`PipelineParams`.
    """

    def __init__(self, models: Mapping[str, InferenceBackend], params: PipelineParams | None = None) -> None:
        self.params = params or PipelineParams()
        self.models = dict(models)
        self._slots = {category: _ModelSlot(model) for category, model in self.models.items()}
        self._smoother = PoseSmoother()
        # verification's render triangles and part labels, prepared once per verified category
        self._priors: dict[str, PriorMesh] = {}
        for category in self.params.verify_categories:
            slot = self._slots.get(category)
            if slot is not None and slot.faces is not None:
                neutral = neutral_vertices(slot.model)
                n = len(neutral) if neutral is not None else int(slot.model.info.num_vertices)
                self._priors[category] = prepare_prior(slot.faces, n, neutral)
        for category in self.params.refine_categories:  # the ICP's surface samples, before the first frame
            if category in self._slots:
                try:
                    self._slots[category].surface_sampler()
                except ValueError as exc:
                    LOG.warning("%s: no ICP refinement (%s)", category, exc)

    def reset(self) -> None:
        """Forget the temporal state (smoothing tracks), e.g. when the input stream restarted."""
        self._smoother.reset()

    def process(
        self,
        rgb: np.ndarray,
        depth_m: np.ndarray,
        instance_mask: np.ndarray,
        classes: Mapping[int, str],
        K: np.ndarray,
        stamp_s: float | None = None,
    ) -> FrameResult:
        """Poses of every instance named in ``classes``.

        Args:
            rgb: (H, W, 3) uint8 RGB (views with any strides are fine).
            depth_m: (H, W) float depth in metres registered to ``rgb``; 0, NaN, inf = invalid.
            instance_mask: (H, W) integer ids, 0 = background.
            classes: instance id -> category; ids not listed are ignored.
            K: (3, 3) intrinsics of ``rgb`` in pixels.
            stamp_s: the frame's stream time (seconds); temporal smoothing runs only when it is given.
        Returns:
            :class:`FrameResult` with one :class:`InstanceResult` per entry of ``classes`` (in its order).
        Raises:
            PoseError: the frame itself is unusable (shapes, dtypes, K).
        """
        t_start = time.perf_counter()
        rgb, depth, mask, K = _check_frame(rgb, depth_m, instance_mask, K)
        timings = dict.fromkeys(STAGES, 0.0)
        results: list[InstanceResult] = []
        pending: dict[str, list[_Pending]] = {}

        t0 = time.perf_counter()
        for instance_id, category in classes.items():
            result = InstanceResult(int(instance_id), str(category), None, False, None)
            results.append(result)
            slot = self._slots.get(category)
            if slot is None:
                result.reason = REASON_UNKNOWN_CATEGORY
                continue
            items = pending.setdefault(category, [])
            try:
                index = len(results) - 1
                result.crop_box = self._crop(slot, rgb, depth, mask, int(instance_id), index, items)
            except PoseError as exc:
                result.reason = exc.reason
        timings["crop"] = _ms(t0)

        for category, items in pending.items():
            if not items:
                continue
            slot = self._slots[category]
            t0 = time.perf_counter()
            rgb_batch, mask_batch = slot.buffers(len(items))
            try:
                vertices, match, confidence = slot.model.run(rgb_batch, mask_batch)
            except Exception as exc:  # noqa: BLE001 - a runtime failure must not kill the frame
                LOG.error("model %s failed on %d instance(s): %s", category, len(items), exc)
                for item in items:
                    results[item.index].reason = REASON_MODEL_ERROR
                continue
            finally:
                timings["model"] += _ms(t0)
            for b, item in enumerate(items):
                self._solve(slot, results[item.index], item, vertices[b], match[b], confidence[b], K, timings)
        t0 = time.perf_counter()
        self._postprocess(results, depth, mask, K, stamp_s)
        timings["refine"] = _ms(t0)
        timings["total"] = _ms(t_start)
        return FrameResult(results, timings)

    def _crop(
        self,
        slot: _ModelSlot,
        rgb: np.ndarray,
        depth: np.ndarray,
        mask: np.ndarray,
        instance_id: int,
        index: int,
        items: list[_Pending],
    ) -> CropBox:
        """Crop one instance into the next free row of its category's batch buffers (``core.crop.crop_instance``,
        the crop every evaluation baseline uses too)."""
        p = self.params
        b = len(items)
        rgb_batch, mask_batch = slot.buffers(b + 1)
        crop = crop_instance(
            mask == instance_id, depth, slot.S, rgb=rgb, rgb_out=rgb_batch[b], enlarge=p.enlarge,
            depth_sampling=p.depth_sampling, min_depth_m=p.min_depth_m, max_depth_m=p.max_depth_m,
        )
        mask_batch[b, 0] = downsample_mask(crop.mask_crop, slot.G)
        items.append(_Pending(index, crop.box, crop.select_mask, crop.depth_crop_m))
        return crop.box

    def _solve(
        self,
        slot: _ModelSlot,
        result: InstanceResult,
        item: _Pending,
        vertices: np.ndarray,
        match: np.ndarray,
        confidence: np.ndarray,
        K: np.ndarray,
        timings: dict[str, float],
    ) -> None:
        """Select, solve and build the pose of one instance; failures become ``result.reason``."""
        p = self.params
        try:
            with _timed(timings, "select"):
                selection = select_pixels(
                    match, confidence, item.mask_crop, item.depth_crop, item.box,
                    confidence_floor=p.confidence_floor, min_pairs=p.min_correspondences,
                    max_pairs=p.max_correspondences or None,
                )
            with _timed(timings, "lift"):
                pairs = lift_pixels(selection, match, item.depth_crop, item.box, K, p.depth_sampling)
            with _timed(timings, "solve"):
                threshold_m = inlier_threshold_m(pairs.dst, p.ransac_threshold_m, p.threshold_rel(result.category))
                fit = ransac_umeyama(
                    pairs.src, pairs.dst, pairs.weights,
                    threshold_m=threshold_m, max_hypotheses=p.ransac_max_hypotheses,
                    min_inliers=p.min_inliers, seed=p.seed,
                )
            with _timed(timings, "pose"):
                pose = pose_from_similarity(fit, vertices, slot.base_rotation, pairs.mean_confidence, threshold_m)
                result.vertices_cam = fit.apply(np.asarray(vertices, dtype=np.float64))
            prior = self._priors.get(result.category)
            if prior is not None:
                with _timed(timings, "verify"):
                    obs = observe(item.mask_crop, item.depth_crop, item.box, K, p.depth_sampling)
                    checked = verify_pose(pose, result.vertices_cam, prior, result.category, obs)
                    pose, result.vertices_cam = checked.pose, checked.vertices_cam
            result.pose = pose
            result.trusted = bool(pose.quality >= p.min_quality)
            result.reason = None if result.trusted else REASON_LOW_QUALITY
        except PoseError as exc:
            result.reason = exc.reason
            result.vertices_cam = None
        except Exception:  # noqa: BLE001 - one instance must never take the frame down
            LOG.exception("instance %d (%s): unexpected failure", result.instance_id, result.category)
            result.reason = REASON_INTERNAL
            result.vertices_cam = None

    def _postprocess(self, results: list[InstanceResult], depth: np.ndarray, mask: np.ndarray, K: np.ndarray,
                     stamp_s: float | None) -> None:
        """ICP refinement of every pose (``refine_categories``), the measured box (``measure_size_categories``),
        then temporal smoothing of the trusted ones, in place. Untrusted poses are refined too, so that every pose
        returned has been through the same stages (and an evaluation baseline that trusts all its poses gets no
        refinement ours lacks)."""
        p = self.params
        smooth = p.smoothing_alpha > 0 and stamp_s is not None
        for result in results:
            if result.pose is None:
                continue
            R, t = np.asarray(result.pose.R, np.float64), np.asarray(result.pose.t_m, np.float64)
            refine = result.category in p.refine_categories and result.vertices_cam is not None
            measure = result.category in p.measure_size_categories
            if refine or measure:
                points = observed_points(depth, mask, result.instance_id, K, box=result.crop_box)
            if refine:
                try:
                    sampler = self._slots[result.category].surface_sampler(result.vertices_cam)
                    T, note = refine_pose(points, result.vertices_cam, sampler, p.refine_max_distance_m,
                                          p.refine_iterations)
                except ValueError as exc:
                    T, note = np.eye(4), f"refine_failed: {exc}"
                result.refine_note = note
                if note and note != "too_few_points":
                    LOG.warning("%s #%d: %s; pose left unrefined", result.category, result.instance_id, note)
                if not note:
                    result.vertices_cam = result.vertices_cam @ T[:3, :3].T + T[:3, 3]
                    R, t = T[:3, :3] @ R, T[:3, :3] @ t + T[:3, 3]
            if measure:
                result.pose, result.vertices_cam = apply_measured_box(
                    replace(result.pose, R=R, t_m=t), result.vertices_cam, points, result.category)
                t = result.pose.t_m
            if smooth and result.trusted:
                R, t = self._smoother.update((result.category, result.instance_id), float(stamp_s), R, t,
                                             p.smoothing_alpha, p.smoothing_timeout_s)
            if R is not result.pose.R or t is not result.pose.t_m:
                result.pose = replace(result.pose, R=R, t_m=t)
        if smooth:
            self._smoother.forget_older_than(float(stamp_s) - max(p.smoothing_timeout_s, 1.0) * 10)


def inlier_threshold_m(points_m: np.ndarray, threshold_m: float, threshold_rel: float) -> float:
    """``max(threshold_m, threshold_rel * r)``, r = RMS distance (m) of ``points_m`` (n, 3) from their centroid."""
    if threshold_rel <= 0 or len(points_m) == 0:
        return float(threshold_m)
    pts = np.asarray(points_m, dtype=np.float64)
    radius = float(np.sqrt(((pts - pts.mean(axis=0)) ** 2).sum(axis=1).mean()))
    return max(float(threshold_m), float(threshold_rel) * radius)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block (ms) to ``timings[stage]``, also when it raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += _ms(t0)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
