"""Evaluation of a trained model on a test split through the node's own code path (DESIGN §7).

Per frame the full-frame :class:`cse_pose.pipeline.PosePipeline` runs exactly as in the node: reference
crop (``core.crop``) -> model (ONNX / TorchScript via ``cse_pose.inference.load_model``, or a torch
checkpoint through :class:`CheckpointBackend`, the same graph as the export) -> confidence selection
(``core.correspondence``) -> RANSAC-Umeyama (``core.solver``) -> published pose (``core.pose``). The pose is
compared with the ground truth by ``core.metrics.evaluate_pose`` (y-symmetric categories by
``priors.is_symmetric``) and aggregated by ``core.metrics.summarize`` (IoU25, IoU50, 5°2cm, 5°5cm, 10°2cm,
10°5cm, median errors); a frame without a pose counts as a miss (reference behaviour: failures count).

One function, :func:`evaluate`, with an :class:`EvalMode` selecting the baselines (:data:`BASELINES`):

==================== =============== ========== ===============================================================
name                 correspondences solver     what it measures
==================== =============== ========== ===============================================================
``pipeline``         model           ransac     the node: confidence filter + RANSAC-Umeyama (default)
``pose_head``        --              pose_head  the training-time pose regressor alone (torch model, or an
                                                ONNX export's extra pose outputs); metric scale from
                                                rendered vs observed depth
``umeyama_all``      model           umeyama    plain least-squares Umeyama on every masked pixel with depth,
                                                no confidence filter or weights (what the reference's no-op
                                                RANSAC amounts to, brief §2.7)
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
from cse_pose.core.crop import crop_box_from_mask, crop_image, crop_intrinsics, crop_to_image, downsample_mask
from cse_pose.core.errors import InvalidDepthError, PoseError
from cse_pose.core.metrics import METRIC_NAMES, evaluate_pose, summarize
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
    "OnnxPoseHead",
    "TorchPoseHead",
    "UniformConfidence",
    "evaluate",
    "format_table",
    "load_eval_model",
    "real275_frames",
    "run_evaluation",
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
    """

    name: str
    rgb: np.ndarray
    depth_m: np.ndarray
    instance_mask: np.ndarray
    K: np.ndarray
    R_gt: np.ndarray
    t_gt: np.ndarray
    size_gt: np.ndarray


def wild6d_frames(dataset: Any) -> Iterator[EvalFrame]:
    """Full frames of a ``Wild6DDataset(split='test')`` (ours or real Wild6D), in dataset order.

    Ground truth comes from the dataset's items (so its improper-rotation fix applies); frames whose mask
    is empty are skipped (nothing to evaluate; the reference would crash on them).
    """
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

    Call :meth:`set_frame` before each frame. ``run`` recomputes the pipeline's crop of the target (same
    box, same nearest resampling and depth validity), lifts every masked crop pixel with depth to the
    camera (original K) and into the published object frame with the GT pose, and averages per cell.
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

    def set_frame(self, frame: EvalFrame) -> None:
        self._frame = frame

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        f = self._frame
        if f is None:
            raise RuntimeError("GTCorrespondenceBackend.run before set_frame")
        rgb, _ = check_inputs(self.info, rgb_crops, masks)
        if rgb.shape[0] != 1:
            raise ValueError("GTCorrespondenceBackend evaluates one instance per frame")
        S, G, p = self.info.crop_size, self.info.grid_size, self.params
        inst = np.asarray(f.instance_mask) == _TARGET_ID
        box = crop_box_from_mask(inst, S, p.enlarge)
        mask_c = crop_image(inst, box, "nearest")
        depth_c = crop_image(np.asarray(f.depth_m, np.float32), box, "nearest")
        with np.errstate(invalid="ignore"):
            ok = mask_c & (depth_c >= p.min_depth_m) & (depth_c <= p.max_depth_m)
        v, u = np.nonzero(ok)
        x, y = crop_to_image(u, v, box)
        p_obj = (backproject(x, y, depth_c[v, u], f.K) - f.t_gt) @ f.R_gt  # R^T (p - t), (n, 3)
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

    Crop as the pipeline; the head gives R, t (canonical units, camera frame) and the deformed prior; ``t_xy``
    gets the crop-centre shift ``- (c_ndc / f_ndc) t_z`` of the crop intrinsics (as ``model(rgb, mask, K_ndc)``
    does in training). Metric scale ``s = median(observed depth) / median(rendered depth)`` over pixels both
    on the observed mask and on the rendered silhouette (else over the mask against ``t_z``); the pose is
    then the similarity ``p_cam = s (R v + t)`` through ``core.pose.pose_from_similarity``.

    Raises:
        PoseError: empty mask / no valid depth.
    """
    from cse_pose.core.crop import intrinsics_to_ndc

    from .data.raster import RasterMesh, rasterize

    S, G = head.crop_size, head.grid_size
    inst = np.asarray(frame.instance_mask) == _TARGET_ID
    box = crop_box_from_mask(inst, S, params.enlarge)
    rgb_c = crop_image(frame.rgb, box, "bilinear") / np.float32(255.0)
    mask_c = crop_image(inst, box, "nearest")
    depth_c = crop_image(np.asarray(frame.depth_m, np.float32), box, "nearest")
    with np.errstate(invalid="ignore"):
        valid = mask_c & (depth_c >= params.min_depth_m) & (depth_c <= params.max_depth_m)
    if not valid.any():
        raise InvalidDepthError("no valid depth inside the instance mask")
    K_crop = crop_intrinsics(frame.K, box)
    rgb_in = np.ascontiguousarray(rgb_c.transpose(2, 0, 1), np.float32)[None]
    mask_in = downsample_mask(mask_c, G).astype(np.float32)[None, None]
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
        summary: ``core.metrics.summarize`` output (fractions in [0, 1], medians, ``frames``) plus
            ``failures`` (frames without a pose) and ``ms_per_frame``.
        reasons: failure reason -> count.
        frames: per frame ``{"name", "iou", "rotation_deg", "translation_cm", "trusted", "reason", "quality"}``
            (``quality`` = the pose's fit quality when a pose was produced).
    """

    mode: str
    category: str
    summary: dict[str, float]
    reasons: dict[str, int] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)

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
            params = replace(params, ransac_threshold_m=1e3, min_quality=0.0)
        pipeline = PosePipeline({category: runner}, params)

    errors, records = [], []
    reasons: Counter[str] = Counter()
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
        record: dict[str, Any] = {"name": frame.name, "trusted": bool(trusted), "reason": reason}
        if pose is not None:
            record["quality"] = float(pose.quality)
        err = None
        if pose is not None:
            try:
                err = evaluate_pose(pose.R, pose.t_m, pose.size_m, frame.R_gt, frame.t_gt, frame.size_gt, symmetric)
            except PoseError as exc:  # e.g. NaN GT size
                reason = f"metric_error:{exc.reason}"
                record["reason"] = reason
        if err is None:
            reasons[str(reason or "no_pose")] += 1
        else:
            record.update(iou=err.iou, rotation_deg=err.rotation_deg, translation_cm=err.translation_cm)
        errors.append(err)
        records.append(record)
    elapsed = time.perf_counter() - t0
    summary = summarize(errors)
    summary["failures"] = float(sum(e is None for e in errors))
    summary["ms_per_frame"] = 1e3 * elapsed / max(n, 1)
    return EvalReport(mode.name, category, summary, dict(reasons), records)


# ----------------------------------------------------------------------------------------------------------
# Reporting, loading, the CLI entry
# ----------------------------------------------------------------------------------------------------------

_LABELS = {"5deg2cm": "5°2cm", "5deg5cm": "5°5cm", "10deg2cm": "10°2cm", "10deg5cm": "10°5cm"}


def format_table(reports: Sequence[EvalReport]) -> str:
    """Plain-text table: one row per report; metrics in %, medians in degrees / cm."""
    cols = [*(_LABELS.get(n, n) for n in METRIC_NAMES), "med rot°", "med cm", "fail", "frames", "ms/frame"]
    head = f"{'mode':<20}" + "".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in reports:
        s = r.summary
        vals = [f"{100.0 * s[n]:9.1f}" for n in METRIC_NAMES]
        vals += [f"{s['median_rotation_deg']:9.2f}", f"{s['median_translation_cm']:9.2f}"]
        vals += [f"{int(s['failures']):9d}", f"{int(s['frames']):9d}", f"{s['ms_per_frame']:9.1f}"]
        lines.append(f"{r.mode:<20}" + "".join(vals))
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
