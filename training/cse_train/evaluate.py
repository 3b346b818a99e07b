"""Evaluation of a trained model on a test split through the node's own code path (docs/reference.md §D7).

Per frame the full-frame :class:`cse_pose.pipeline.PosePipeline` runs exactly as in the node: reference
crop (``core.crop``) -> model (ONNX / TorchScript via ``cse_pose.inference.load_model``, or a torch
checkpoint through :class:`CheckpointBackend`, the same graph as the export) -> confidence selection
(``core.correspondence``) -> RANSAC-Umeyama (``core.solver``) -> published pose (``core.pose``). The pose is
compared with the ground truth by ``core.metrics.evaluate_pose`` and aggregated by ``core.metrics.summarize``
(IoU25, IoU50, IoU75, 5°2cm, 5°5cm, 10°2cm, 10°5cm, median errors); a frame without a pose counts as a miss
(reference behaviour: failures count).

Protocol of the field (NOCS, used by the paper): bottle, bowl and can are scored as y-symmetric
(``priors.is_symmetric``); so is a mug whose handle is not visible in the frame (``EvalFrame.handle_visible``
False, recorded by our synthetic generator; unknown = visible). Besides the metrics over every pose
(``EvalReport.summary``), each report has the metrics a user of the node meets (``EvalReport.published``:
only trusted poses, ``quality >= min_quality``, count; an untrusted pose is a failure) with the share of
frames published, and for mugs the metrics by handle visibility and by the side (left / right in the image)
the visible handle is on (``EvalReport.by_handle``).

Every baseline crops the target with the pipeline's own per-instance crop (``cse_pose.core.crop.crop_instance``
with the same :class:`~cse_pose.pipeline.PipelineParams`), so the inputs differ only where the modes do.

One function, :func:`evaluate`, with an :class:`EvalMode` selecting the baselines (:data:`BASELINES`):

==================== =============== ========== ===============================================================
name                 correspondences solver     what it measures
==================== =============== ========== ===============================================================
``pipeline``         model           ransac     the node: confidence filter + RANSAC-Umeyama (+ ICP, default)
``pose_head``        --              pose_head  the training-time pose regressor alone (torch model, or an
                                                ONNX export's extra pose outputs); metric scale from
                                                rendered vs observed depth
``umeyama_all``      model           umeyama    plain least-squares Umeyama on every masked pixel with depth,
                                                no confidence filter or weights (what the reference's no-op
                                                RANSAC amounts to, docs/reference.md §2.7)
``gt_correspondences`` gt            ransac     ground-truth canonical points per grid cell + the same solver:
                                                upper bound of the correspondence format
==================== =============== ========== ===============================================================

Data: Wild6D-layout test videos (real Wild6D ``test_set/<category>`` or our synthetic ``generate`` output)
and REAL275 through their loaders (:func:`wild6d_frames`, :func:`real275_frames`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cse_pose.core.camera import backproject
from cse_pose.core.crop import InstanceCrop, crop_instance, crop_intrinsics, downsample_mask
from cse_pose.core.errors import InvalidDepthError, PoseError
from cse_pose.core.metrics import METRIC_NAMES, PoseErrors, evaluate_pose, summarize
from cse_pose.core.pose import ObjectPose, pose_from_similarity
from cse_pose.core.solver import SolverResult
from cse_pose.inference.backend import ModelOutputs, check_inputs, empty_outputs
from cse_pose.inference.model_info import CONTRACT, ModelInfo, parse_metadata
from cse_pose.pipeline import PipelineParams, PosePipeline
from cse_train import shapes as priors

from .model import CSENet, ExportWrapper, load_checkpoint

__all__ = [
    "BASELINES",
    "CheckpointBackend",
    "EvalFrame",
    "EvalMode",
    "EvalReport",
    "GTCorrespondenceBackend",
    "HANDLE_GROUPS",
    "OnnxPoseHead",
    "PUBLISHED_SUFFIX",
    "TorchPoseHead",
    "UniformConfidence",
    "crop_frame",
    "evaluate",
    "format_handle_table",
    "format_table",
    "handle_line",
    "handle_side",
    "has_published_row",
    "load_eval_model",
    "real275_frames",
    "run_evaluation",
    "table_rows",
    "wild6d_frames",
]

_TARGET_ID = 1  # instance id of the evaluated object in EvalFrame.instance_mask


# ----------------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalMode:
    """What produces the pose.

    Attributes:
        name: label in tables and JSON.
        correspondences: ``model`` (the network's match/confidence) or ``gt`` (ground-truth canonical points).
        solver: ``ransac`` (the node's RANSAC-Umeyama with the confidence filter), ``umeyama`` (plain
            least squares on all masked pixels with depth, unweighted, no filter) or ``pose_head`` (the
            regressed pose of the torch model; ``correspondences`` is then unused).
    """

    name: str
    correspondences: str = "model"
    solver: str = "ransac"

    def __post_init__(self) -> None:
        if self.correspondences not in ("model", "gt"):
            raise ValueError(f"correspondences must be 'model' or 'gt', got {self.correspondences!r}")
        if self.solver not in ("ransac", "umeyama", "pose_head"):
            raise ValueError(f"solver must be 'ransac', 'umeyama' or 'pose_head', got {self.solver!r}")


BASELINES: dict[str, EvalMode] = {
    "pipeline": EvalMode("pipeline"),
    "pose_head": EvalMode("pose_head", solver="pose_head"),
    "umeyama_all": EvalMode("umeyama_all", solver="umeyama"),
    "gt_correspondences": EvalMode("gt_correspondences", correspondences="gt"),
}


# ----------------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EvalFrame:
    """One full test frame with the target's ground truth.

    Attributes:
        name: identifier (``video/frame``).
        rgb: (H, W, 3) uint8. depth_m: (H, W) float32 metres, 0 = invalid.
        instance_mask: (H, W) uint8, 1 = the evaluated object, 0 = anything else.
        K: (3, 3) intrinsics in pixels.
        R_gt: (3, 3) published object frame -> camera; t_gt: (3,) box centre, metres; size_gt: (3,) metres.
        handle_visible: for a mug, whether its handle is visible (our synthetic ground truth); None = not
            recorded (real data, splits generated before it was), scored as visible.
    """

    name: str
    rgb: np.ndarray
    depth_m: np.ndarray
    instance_mask: np.ndarray
    K: np.ndarray
    R_gt: np.ndarray
    t_gt: np.ndarray
    size_gt: np.ndarray
    handle_visible: bool | None = None


def _handle_visibility(dataset: Any, video_index: int, cache: dict[int, dict[int, bool]]) -> dict[int, bool]:
    """Frame index -> ``handle_visible`` of the target from a video's ``scene.json`` (empty when absent)."""
    if video_index not in cache:
        from .data import wild6d_format as fmt

        scene = fmt.read_scene_json(dataset.videos[video_index].path)
        found: dict[int, bool] = {}
        for fr in (scene or {}).get("frames", []):
            target = fr["instances"][0] if fr.get("instances") else {}
            if "handle_visible" in target:
                found[int(fr["index"])] = bool(target["handle_visible"])
        cache[video_index] = found
    return cache[video_index]


def wild6d_frames(dataset: Any) -> Iterator[EvalFrame]:
    """Full frames of a ``Wild6DDataset(split='test')`` (ours or real Wild6D), in dataset order.

    Ground truth comes from the dataset's items (so its improper-rotation fix applies); a mug's handle
    visibility from our ``scene.json`` when it records one. Frames whose mask is empty are skipped (nothing to
    evaluate; the reference would crash on them).
    """
    handles: dict[int, dict[int, bool]] = {}
    for idx in range(len(dataset)):
        video_index, position = dataset.index[idx]
        try:
            item = dataset[idx]
        except PoseError:
            continue
        frame = dataset.load_frame(video_index, position)
        vid = dataset.videos[video_index]
        yield EvalFrame(
            name=f"{vid.object_dir}/{vid.sequence_dir}/{vid.frames[position]}",
            rgb=frame["rgb"],
            depth_m=frame["depth_m"],
            instance_mask=np.asarray(frame["mask"], dtype=np.uint8) * np.uint8(_TARGET_ID),
            K=np.asarray(frame["K"], np.float64),
            R_gt=item["R"].numpy().astype(np.float64),
            t_gt=item["t"].numpy().astype(np.float64),
            size_gt=item["size"].numpy().astype(np.float64),
            handle_visible=_handle_visibility(dataset, video_index, handles).get(vid.frames[position]),
        )


def real275_frames(dataset: Any) -> Iterator[EvalFrame]:
    """Full frames of a ``Real275Dataset(split='test')``: one per (frame, instance of the category)."""
    from .data import real275 as r

    for idx in range(len(dataset)):
        video_index, position = dataset.index[idx]
        vid = dataset.videos[video_index]
        fid, inst_id = vid.frames[position]
        item = dataset[idx]
        base = vid.path / fid
        bgr = cv2.imread(str(base) + "_color.png", cv2.IMREAD_COLOR)
        inst = r._read_instance_mask(Path(str(base) + "_mask.png"))
        mask = (inst == inst_id) & (inst != r._BACKGROUND)
        yield EvalFrame(
            name=f"{vid.scene}/{fid}/{inst_id}",
            rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            depth_m=r._read_depth_m(Path(str(base) + "_depth.png")),
            instance_mask=mask.astype(np.uint8) * np.uint8(_TARGET_ID),
            K=np.asarray(dataset.K, np.float64),
            R_gt=item["R"].numpy().astype(np.float64),
            t_gt=item["t"].numpy().astype(np.float64),
            size_gt=item["size"].numpy().astype(np.float64),
        )


def crop_frame(frame: EvalFrame, size: int, params: PipelineParams, with_rgb: bool = False) -> InstanceCrop:
    """The pipeline's crop of the evaluated target (``core.crop.crop_instance`` with ``params``' enlargement,
    depth sampling and depth range), for the baselines that need the crop outside the pipeline."""
    return crop_instance(
        np.asarray(frame.instance_mask) == _TARGET_ID, frame.depth_m, size, rgb=frame.rgb if with_rgb else None,
        enlarge=params.enlarge, depth_sampling=params.depth_sampling, min_depth_m=params.min_depth_m,
        max_depth_m=params.max_depth_m,
    )


# ----------------------------------------------------------------------------------------------------------
# Backends (the InferenceBackend interface of cse_pose.inference)
# ----------------------------------------------------------------------------------------------------------


class CheckpointBackend:
    """A torch :class:`CSENet` behind ``run(rgb_crops, masks)``: the exported graph (``ExportWrapper``), eval mode.

    Args:
        model: the network (moved to ``device``).
        path: where it came from (for :class:`ModelInfo`).
        device: torch device.
    """

    def __init__(self, model: CSENet, path: str | Path = "<torch>", device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.wrapper = ExportWrapper(self.model).eval()
        self.info: ModelInfo = parse_metadata(model.metadata("checkpoint", "torch"), path)
        self.name = f"torch-checkpoint-{self.device.type}"

    @torch.no_grad()
    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        """(B,3,S,S), (B,1,G,G) float32 -> vertices (B,N,3), match (B,G,G,3), confidence (B,G,G)."""
        rgb, mask = check_inputs(self.info, rgb_crops, masks)
        if rgb.shape[0] == 0:
            return empty_outputs(self.info)
        out = self.wrapper(torch.from_numpy(rgb).to(self.device), torch.from_numpy(mask).to(self.device))
        v, m, c = (t.float().cpu().numpy() for t in out)
        return v, m, c


class UniformConfidence:
    """Wraps a backend and replaces its confidence by 1 everywhere (no confidence filter, unit weights)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.name = f"{inner.name}+uniform-confidence"

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        v, m, c = self.inner.run(rgb_crops, masks)
        return v, m, np.ones_like(c)


_BOX_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
_BOX_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32,
)  # fmt: skip


class GTCorrespondenceBackend:
    """Ground-truth "model": per grid cell the mean object-frame point (metres) of its valid pixels.

    Call :meth:`set_frame` before each frame. ``run`` recomputes the pipeline's crop of the target
    (:func:`crop_frame`: the same box, resampling and depth validity), lifts every selectable crop pixel with
    depth where the pipeline lifts it (``InstanceCrop.lift_coordinates``, original K) into the published
    object frame with the GT pose, and averages per cell (``last_crop`` keeps the crop).
    Confidence is 1 on cells with data, 0 elsewhere; the "deformed prior" is the GT box's 8 corners, so the
    pose's box is the GT box when the fit is exact (canonical units = metres, base rotation I).

    Args:
        category: category name (metadata). crop_size, grid_size: S and G of the evaluated model.
        params: the pipeline parameters (crop enlargement, depth range).
    """

    def __init__(self, category: str, crop_size: int, grid_size: int, params: PipelineParams) -> None:
        props = {
            "contract": CONTRACT, "category": category, "crop_size": str(crop_size),
            "grid_size": str(grid_size), "num_vertices": "8", "tau": "10",
            "base_rotation": json.dumps(np.eye(3).reshape(9).tolist()),
            "symmetry": "y" if priors.is_symmetric(category) else "none",
            "faces": json.dumps(_BOX_FACES.tolist()), "training_data": "ground truth", "version": "gt",
        }  # fmt: skip
        self.info = parse_metadata(props, "<ground-truth>")
        self.name = "ground-truth"
        self.params = params
        self._frame: EvalFrame | None = None
        self.last_crop: InstanceCrop | None = None

    def set_frame(self, frame: EvalFrame) -> None:
        self._frame = frame

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        f = self._frame
        if f is None:
            raise RuntimeError("GTCorrespondenceBackend.run before set_frame")
        rgb, _ = check_inputs(self.info, rgb_crops, masks)
        if rgb.shape[0] != 1:
            raise ValueError("GTCorrespondenceBackend evaluates one instance per frame")
        S, G = self.info.crop_size, self.info.grid_size
        crop = self.last_crop = crop_frame(f, S, self.params)
        v, u = np.nonzero(crop.select_mask & (crop.depth_crop_m > 0))
        x, y = crop.lift_coordinates(u, v)
        p_obj = (backproject(x, y, crop.depth_crop_m[v, u], f.K) - f.t_gt) @ f.R_gt  # R^T (p - t), (n, 3)
        cell = (v * G // S) * G + (u * G // S)
        count = np.bincount(cell, minlength=G * G).astype(np.float64)
        sums = np.stack([np.bincount(cell, weights=p_obj[:, i], minlength=G * G) for i in range(3)], -1)
        match = (sums / np.maximum(count, 1.0)[:, None]).reshape(1, G, G, 3).astype(np.float32)
        conf = (count > 0).reshape(1, G, G).astype(np.float32)
        corners = (0.5 * _BOX_SIGNS * np.asarray(f.size_gt, np.float64)).astype(np.float32)[None]
        return corners, match, conf


# ----------------------------------------------------------------------------------------------------------
# Pose regressor baseline
# ----------------------------------------------------------------------------------------------------------


class TorchPoseHead:
    """The pose regressor of a torch :class:`CSENet` (eval mode, CPU or the model's device).

    ``predict(rgb [1,3,S,S], mask [1,1,G,G])`` -> (R [3,3] column form, t [3] canonical units without the
    crop-centre shift, vertices [N,3] canonical units), float64 numpy.
    """

    def __init__(self, model: CSENet) -> None:
        self.model = model
        self.crop_size, self.grid_size = model.cfg.crop_size, model.cfg.grid_size
        self.faces = model.faces.detach().cpu().numpy().astype(np.int64)
        self.base_rotation = np.asarray(model.base_rotation, np.float64)

    @torch.no_grad()
    def predict(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dev = self.model.mean_v.device
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(torch.from_numpy(rgb).to(dev), torch.from_numpy(mask).to(dev), None)
        finally:
            self.model.train(was_training)
        return (out.R[0].double().cpu().numpy(), out.t[0].double().cpu().numpy(),
                out.vertices[0].double().cpu().numpy())


class OnnxPoseHead:
    """The pose regressor carried by an exported ONNX file as the extra outputs ``pose_rotation`` and
    ``pose_translation`` (``cse_train.export.POSE_HEAD_NAMES``), on onnxruntime CPU; same ``predict`` as
    :class:`TorchPoseHead`.

    Raises:
        ValueError: the file has no pose-head outputs (exported before they were added, or by another tool).
    """

    def __init__(self, path: str | Path) -> None:
        from .export import POSE_HEAD_NAMES, ort_cpu_session, read_onnx_metadata

        self.session = ort_cpu_session(path)
        names = {o.name for o in self.session.get_outputs()}
        if not set(POSE_HEAD_NAMES) <= names:
            raise ValueError(f"{path} has no pose-head outputs {POSE_HEAD_NAMES}; re-export it with cse_train export")
        info = parse_metadata(read_onnx_metadata(path), path)
        self.crop_size, self.grid_size = info.crop_size, info.grid_size
        self.faces = np.asarray(info.faces, np.int64)
        self.base_rotation = np.asarray(info.base_rotation, np.float64)
        self._names = ["vertices", *POSE_HEAD_NAMES]

    def predict(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v, R, t = self.session.run(self._names, {"rgb": rgb, "mask": mask})
        return R[0].astype(np.float64), t[0].astype(np.float64), v[0].astype(np.float64)


def pose_head_pose(head: TorchPoseHead | OnnxPoseHead, frame: EvalFrame, params: PipelineParams) -> ObjectPose:
    """Pose from the network's regressor (training-only head) for the target of ``frame``.

    Crop as the pipeline (:func:`crop_frame`); the head gives R, t (canonical units, camera frame) and the
    deformed prior; ``t_xy`` gets the crop-centre shift ``- (c_ndc / f_ndc) t_z`` of the crop intrinsics (as
    ``model(rgb, mask, K_ndc)`` does in training). Metric scale ``s = median(observed depth) / median(rendered
    depth)`` over pixels both on the selection mask with valid depth and on the rendered silhouette (else over
    the mask against ``t_z``); the pose is then the similarity ``p_cam = s (R v + t)`` through
    ``core.pose.pose_from_similarity``.

    Raises:
        PoseError: empty mask / no valid depth.
    """
    from cse_pose.core.crop import intrinsics_to_ndc
    from cse_pose.core.raster import RasterMesh, rasterize

    S, G = head.crop_size, head.grid_size
    crop = crop_frame(frame, S, params, with_rgb=True)
    depth_c = crop.depth_crop_m
    valid = crop.select_mask & (depth_c > 0)
    if not valid.any():
        raise InvalidDepthError("no valid depth inside the instance mask")
    K_crop = crop_intrinsics(frame.K, crop.box)
    rgb_in = crop.rgb[None]  # (1, 3, S, S) float32 in [0, 1], as the pipeline's batch row
    mask_in = downsample_mask(crop.mask_crop, G).astype(np.float32)[None, None]
    R, t, verts = head.predict(rgb_in, mask_in)
    K_ndc = intrinsics_to_ndc(K_crop, S)
    t = t.copy()
    t[:2] -= K_ndc[0:2, 2] / np.array([K_ndc[0, 0], K_ndc[1, 1]]) * t[2]
    # z-buffer depth of the posed prior in the crop (canonical units); the rasteriser puts pixel centres on
    # integers, the crop maths on i + 0.5
    K_r = K_crop.astype(np.float64).copy()
    K_r[:2, 2] -= 0.5
    rendered = rasterize([RasterMesh(verts @ R.T + t, head.faces)], K_r, S, S).depth_m
    both = valid & (rendered > 0)
    if both.sum() >= 10:
        scale = float(np.median(depth_c[both]) / np.median(rendered[both]))
    else:
        scale = float(np.median(depth_c[valid]) / max(float(t[2]), 1e-6))
    fit = SolverResult(
        scale=scale, R=R, t=scale * t, inliers=np.ones(1, bool), rms_m=0.0, inlier_ratio=1.0, hypotheses=0,
    )
    return pose_from_similarity(fit, verts, head.base_rotation, 1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """Result of one :func:`evaluate` call.

    Attributes:
        mode: the :class:`EvalMode` name. category: evaluated category.
        summary: ``core.metrics.summarize`` output over every pose, trusted or not (fractions in [0, 1],
            medians, ``frames``) plus ``failures`` (frames without a pose), ``published`` (share of frames
            with a trusted pose, i.e. published by the node), ``symmetric_frames`` (frames scored as
            y-symmetric: all for bottle/bowl/can, the handle-hidden ones for mug) and ``ms_per_frame``.
        reasons: failure reason -> count.
        frames: per frame ``{"name", "iou", "rotation_deg", "translation_cm", "size_cm", "trusted", "reason",
            "quality", "symmetric"}`` (``quality`` = the pose's fit quality when a pose was produced; mugs add
            ``handle_visible`` and ``handle_side``).
        published: ``summarize`` with untrusted poses counted as failures (what a user of the node gets),
            plus ``failures`` (frames without a published pose).
        by_handle: mugs only: ``summarize`` (any pose) of the frames with the handle ``visible`` / ``hidden``
            and of the handle-visible frames with the handle on the ``left`` / ``right`` of the box centre
            in the image (frames without a recorded visibility count as visible).
    """

    mode: str
    category: str
    summary: dict[str, float]
    reasons: dict[str, int] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)
    published: dict[str, float] = field(default_factory=dict)
    by_handle: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    frames: Iterable[EvalFrame],
    category: str,
    *,
    mode: EvalMode = BASELINES["pipeline"],
    backend: Any | None = None,
    model: CSENet | None = None,
    pose_head: OnnxPoseHead | None = None,
    params: PipelineParams | None = None,
    crop_size: int | None = None,
    grid_size: int | None = None,
    max_frames: int | None = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate one mode on ``frames`` (see the module docstring for the modes).

    Args:
        frames: test frames (:func:`wild6d_frames`, :func:`real275_frames`).
        category: the category (symmetry for the metrics, model selection).
        mode: :class:`EvalMode` (one of :data:`BASELINES` or a custom combination).
        backend: model runtime with ``run(rgb_crops, masks)`` (``load_model`` / :class:`CheckpointBackend`);
            built from ``model`` when omitted. Unused for ``gt`` correspondences and ``pose_head``.
        model: torch network; for ``pose_head`` it or ``pose_head`` is needed.
        pose_head: the pose regressor of an ONNX file (:class:`OnnxPoseHead`), for ``pose_head`` without a
            torch model.
        params: pipeline parameters (default ``PipelineParams()``).
        crop_size, grid_size: S, G for ``gt`` correspondences (default: the backend's / model's).
        max_frames: stop after this many frames.
        progress: tqdm bar.
    """
    params = params or PipelineParams()
    symmetric = priors.is_symmetric(category)
    mug = category == "mug"
    if mode.solver == "pose_head":
        if model is None and pose_head is None:
            raise ValueError("the pose_head baseline needs the torch model or an OnnxPoseHead of the ONNX file")
        head = pose_head if pose_head is not None else TorchPoseHead(model)
        pipeline, runner = None, None
    else:
        if mode.correspondences == "gt":
            info = backend.info if backend is not None else (model.cfg if model is not None else None)
            s = crop_size or (getattr(info, "crop_size", None))
            g = grid_size or (getattr(info, "grid_size", None))
            if s is None or g is None:
                raise ValueError("gt correspondences need crop_size and grid_size (or a model / backend)")
            runner = GTCorrespondenceBackend(category, int(s), int(g), params)
        else:
            if backend is None:
                if model is None:
                    raise ValueError("model correspondences need a backend or a torch model")
                backend = CheckpointBackend(model)
            runner = backend
        if mode.solver == "umeyama":
            runner = UniformConfidence(runner)
            params = replace(params, ransac_threshold_m=1e3, min_quality=0.0, max_correspondences=0)
        if isinstance(getattr(runner, "inner", runner), GTCorrespondenceBackend):
            # its "prior" is the ground-truth box: no ICP surface, and no box to measure better than it
            params = replace(params, refine_categories=(), measure_size_categories=())
        pipeline = PosePipeline({category: runner}, params)

    errors: list[PoseErrors | None] = []
    published: list[PoseErrors | None] = []
    records: list[dict[str, Any]] = []
    handle_groups: dict[str, list[int]] = {"visible": [], "hidden": [], "left": [], "right": []}
    reasons: Counter[str] = Counter()
    n_symmetric = 0
    t0 = time.perf_counter()
    items: Iterable[EvalFrame] = frames
    if progress:
        from tqdm import tqdm

        items = tqdm(frames, desc=f"eval {mode.name}", unit="frame", total=max_frames)
    n = 0
    for frame in items:
        if max_frames is not None and n >= max_frames:
            break
        n += 1
        pose, trusted, reason = None, False, None
        try:
            if pipeline is None:
                pose, trusted = pose_head_pose(head, frame, params), True
            else:
                if isinstance(runner, GTCorrespondenceBackend):
                    runner.set_frame(frame)
                elif isinstance(runner, UniformConfidence) and isinstance(runner.inner, GTCorrespondenceBackend):
                    runner.inner.set_frame(frame)
                inst = pipeline.process(frame.rgb, frame.depth_m, frame.instance_mask, {_TARGET_ID: category},
                                        frame.K).instances[0]
                pose, trusted, reason = inst.pose, inst.trusted, inst.reason
        except PoseError as exc:
            reason = exc.reason
        # NOCS protocol: a mug whose handle cannot be seen is scored like a y-symmetric object
        frame_symmetric = symmetric or (mug and frame.handle_visible is False)
        n_symmetric += frame_symmetric
        record: dict[str, Any] = {"name": frame.name, "trusted": bool(trusted), "reason": reason,
                                  "symmetric": bool(frame_symmetric)}
        if mug:
            side = handle_side(frame.R_gt, frame.t_gt, frame.size_gt, frame.K)
            record.update(handle_visible=frame.handle_visible, handle_side=side)
            hidden = frame.handle_visible is False
            handle_groups["hidden" if hidden else "visible"].append(len(errors))
            if not hidden:
                handle_groups[side].append(len(errors))
        if pose is not None:
            record["quality"] = float(pose.quality)
        err = None
        if pose is not None:
            try:
                err = evaluate_pose(pose.R, pose.t_m, pose.size_m, frame.R_gt, frame.t_gt, frame.size_gt,
                                    frame_symmetric)
            except PoseError as exc:  # e.g. NaN GT size
                reason = f"metric_error:{exc.reason}"
                record["reason"] = reason
        if err is None:
            reasons[str(reason or "no_pose")] += 1
        else:
            record.update(iou=err.iou, rotation_deg=err.rotation_deg, translation_cm=err.translation_cm,
                          size_cm=err.size_cm)
        errors.append(err)
        published.append(err if trusted else None)
        records.append(record)
    elapsed = time.perf_counter() - t0
    summary = summarize(errors)
    summary["failures"] = float(sum(e is None for e in errors))
    summary["published"] = sum(r["trusted"] for r in records) / max(n, 1)
    summary["symmetric_frames"] = float(n_symmetric)
    summary["ms_per_frame"] = 1e3 * elapsed / max(n, 1)
    published_summary = summarize(published)
    published_summary["failures"] = float(sum(e is None for e in published))
    by_handle = {}
    if mug:
        by_handle = {group: summarize([errors[i] for i in idx]) for group, idx in handle_groups.items()}
    return EvalReport(mode.name, category, summary, dict(reasons), records, published_summary, by_handle)


def handle_side(R_gt: np.ndarray, t_gt: np.ndarray, size_gt: np.ndarray, K: np.ndarray) -> str:
    """``"left"`` or ``"right"``: the image side, relative to the box centre, of the mug handle's end of the
    box (+x of the published object frame, ``t + R (size_x / 2, 0, 0)``), by projection with ``K``."""
    K = np.asarray(K, np.float64)
    centre = np.asarray(t_gt, np.float64)
    tip = centre + 0.5 * float(size_gt[0]) * np.asarray(R_gt, np.float64)[:, 0]
    u_centre, u_tip = (float((K @ p)[0] / (K @ p)[2]) for p in (centre, tip))
    return "right" if u_tip >= u_centre else "left"


# ----------------------------------------------------------------------------------------------------------
# Reporting, loading, the CLI entry
# ----------------------------------------------------------------------------------------------------------

_LABELS = {"5deg2cm": "5°2cm", "5deg5cm": "5°5cm", "10deg2cm": "10°2cm", "10deg5cm": "10°5cm"}


#: Suffix of the rows that count untrusted poses as failures.
PUBLISHED_SUFFIX = ", published"


def has_published_row(report: EvalReport) -> bool:
    """Whether the tables show a published-only row for ``report``: always for the node (``pipeline``), else
    when some pose of the mode was untrusted (otherwise the row would repeat the any-pose row)."""
    if not report.published:
        return False
    return report.mode == "pipeline" or report.published.get("failures") != report.summary.get("failures")


def table_rows(report: EvalReport) -> list[tuple[str, dict[str, float]]]:
    """(label suffix, summary) rows of one report: any pose, then published poses only (see
    :func:`has_published_row`)."""
    rows = [("", report.summary)]
    if has_published_row(report):
        rows.append((PUBLISHED_SUFFIX, report.published))
    return rows


def format_table(reports: Sequence[EvalReport]) -> str:
    """Plain-text table: per report a row over every pose and (:func:`has_published_row`) a row
    ``<mode>, published`` counting untrusted poses as failures; metrics in %, medians in degrees / cm,
    ``size cm`` = median of the largest box-extent error (``core.metrics.size_error_cm``),
    ``publ%`` = share of frames with a trusted (published) pose."""
    cols = [*(_LABELS.get(n, n) for n in METRIC_NAMES), "med rot°", "med cm", "size cm", "fail", "publ%",
            "frames", "ms/frame"]
    head = f"{'mode':<30}" + "".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in reports:
        for suffix, s in table_rows(r):
            vals = [f"{100.0 * s[n]:9.1f}" for n in METRIC_NAMES]
            vals += [f"{s['median_rotation_deg']:9.2f}", f"{s['median_translation_cm']:9.2f}",
                     f"{s.get('median_size_cm', float('nan')):9.2f}"]
            vals += [f"{int(s['failures']):9d}", f"{100.0 * r.summary.get('published', float('nan')):9.1f}",
                     f"{int(s['frames']):9d}", f"{r.summary['ms_per_frame']:9.1f}"]
            lines.append(f"{r.mode + suffix:<30}" + "".join(vals))
    return "\n".join(lines)


#: Row labels of :attr:`EvalReport.by_handle`.
HANDLE_GROUPS: dict[str, str] = {
    "visible": "handle visible",
    "hidden": "handle hidden (scored y-symmetric)",
    "left": "handle visible, left in the image",
    "right": "handle visible, right in the image",
}


def handle_line(reports: Sequence[EvalReport]) -> str | None:
    """``"mug: handle hidden in k of n frames, scored as y-symmetric (NOCS protocol)"`` (None unless mug)."""
    if not reports or reports[0].category != "mug":
        return None
    s = reports[0].summary
    return (f"mug: handle hidden in {int(s.get('symmetric_frames', 0))} of {int(s['frames'])} frames, "
            "scored as y-symmetric (NOCS protocol)")


def format_handle_table(report: EvalReport) -> str:
    """Plain-text metrics (any pose) of one mug report by handle visibility and side ("" for other categories)."""
    if not report.by_handle:
        return ""
    cols = [*(_LABELS.get(n, n) for n in METRIC_NAMES), "med rot°", "med cm", "size cm", "frames"]
    head = f"{report.mode + ' by handle':<36}" + "".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for group, label in HANDLE_GROUPS.items():
        s = report.by_handle.get(group)
        if not s:
            continue
        vals = [f"{100.0 * s[n]:9.1f}" for n in METRIC_NAMES]
        vals += [f"{s['median_rotation_deg']:9.2f}", f"{s['median_translation_cm']:9.2f}",
                 f"{s.get('median_size_cm', float('nan')):9.2f}", f"{int(s['frames']):9d}"]
        lines.append(f"{label:<36}" + "".join(vals))
    return "\n".join(lines)


def load_eval_model(path: str | Path, backend: str = "cpu") -> tuple[Any, CSENet | None]:
    """A model file -> (runtime backend, torch model or None).

    ``.onnx``: ``cse_pose.inference.load_model(path, backend)`` (the node's loader); a torch checkpoint
    (:func:`cse_train.model.save_checkpoint`): :class:`CheckpointBackend` + the model; any other file is
    tried as TorchScript through ``load_model(path, 'torch')``.
    """
    from cse_pose.inference import load_model

    path = Path(path)
    if path.suffix == ".onnx":
        return load_model(path, backend), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "looks like a TorchScript archive"
            model, _ = load_checkpoint(path)
    except (ValueError, RuntimeError):  # not our checkpoint format: TorchScript export
        return load_model(path, "torch"), None
    return CheckpointBackend(model, path), model


def run_evaluation(
    model_path: str | Path | None,
    data: str | Path,
    *,
    dataset: str = "wild6d",
    category: str | None = None,
    baselines: Sequence[str] = ("pipeline",),
    checkpoint: str | Path | None = None,
    json_path: str | Path | None = None,
    max_frames: int | None = None,
    list_file: str | Path | None = None,
    params: PipelineParams | None = None,
    backend: str = "cpu",
    progress: bool = True,
    print_table: bool = True,
) -> list[EvalReport]:
    """Evaluate a model file on a test split for each requested baseline; print a table, write JSON.

    Args:
        model_path: ``.onnx`` / checkpoint / TorchScript file (``None`` only for ``gt_correspondences``).
        data: Wild6D-layout test root of the category (``<...>/test_set/<category>``) or a REAL275 split.
        dataset: ``wild6d`` or ``real275``.
        category: default: the model's metadata.
        baselines: names from :data:`BASELINES`.
        checkpoint: torch checkpoint for ``pose_head`` when ``model_path`` is an ONNX file without the
            pose-head outputs (with them, the ONNX file's own regressor is used).
        json_path: write ``{"model", "data", "reports": [...]}`` here.
        params: pipeline parameters (default: ``PipelineParams()``; REAL275 uses enlarge 1.2).
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    runtime, model = (None, None) if model_path is None else load_eval_model(model_path, backend)
    if checkpoint is not None and model is None:
        model, _ = load_checkpoint(checkpoint)
    onnx_head = None
    if "pose_head" in baselines and model is None and model_path is not None and Path(model_path).suffix == ".onnx":
        onnx_head = OnnxPoseHead(model_path)
    info = runtime.info if runtime is not None else None
    category = category or (info.category if info is not None else None)
    if category is None:
        raise ValueError("category unknown: give it or a model file")
    if params is None:
        params = PipelineParams(enlarge=1.2) if dataset == "real275" else PipelineParams()
    crop_size = info.crop_size if info is not None else 128
    grid_size = info.grid_size if info is not None else 32

    def frames() -> Iterator[EvalFrame]:
        if dataset == "wild6d":
            from .data.wild6d import Wild6DDataset

            ds = Wild6DDataset(data, split="test", category=category, list_file=list_file, crop_size=crop_size)
            return wild6d_frames(ds)
        if dataset == "real275":
            from .data.real275 import Real275Dataset

            ds = Real275Dataset(data, category, split="test", list_file=list_file, crop_size=crop_size)
            return real275_frames(ds)
        raise ValueError(f"dataset must be 'wild6d' or 'real275', got {dataset!r}")

    reports = []
    for name in baselines:
        reports.append(
            evaluate(frames(), category, mode=BASELINES[name], backend=runtime, model=model, pose_head=onnx_head,
                     params=params, crop_size=crop_size, grid_size=grid_size, max_frames=max_frames, progress=progress)
        )
    if print_table:
        print(f"category {category}, data {data}, model {model_path}")
        print(format_table(reports))
        if handle_line(reports):
            print(handle_line(reports))
            print(format_handle_table(reports[0]))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        doc = {"model": None if model_path is None else str(model_path), "data": str(data), "category": category,
               "params": asdict(params), "reports": [r.to_dict() for r in reports]}
        Path(json_path).write_text(json.dumps(doc, indent=1, default=_json_default))
    return reports


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
