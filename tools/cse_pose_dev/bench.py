#!/usr/bin/env python3
"""`make bench`: per-stage latency of the node pipeline vs a reference-equivalent peer, memory, load test.

One run, the same 640x480 frames (1 and 5 objects) for every method, methods interleaved frame by frame so
that load from other processes hits them alike:

* **ours**, once per available backend (``ort-cpu``: onnxruntime CPU as the node runs it by default,
  i.e. ``intra_op_threads`` = 0, one intra-op thread per core, idle threads not spinning; ``ort-cpu-1t``:
  one intra-op thread; TorchScript CPU; CUDA EP, TensorRT FP16 and TorchScript CUDA when present; on request
  ``ort-cpu-2t`` / ``ort-cpu-2t-nospin``: 2 threads with onnxruntime's spinning pool / without):
  the node's own frame code without DDS input (:class:`NodeMethod`: an in-process ``PoseNode`` with
  parameter defaults, each ``sensor_msgs`` frame handed to its frame callback): decode -> pipeline (crop,
  model, select, lift, solve, pose) -> the node's publishing (PoseStamped, PoseArray, TF,
  Detection3DArray; no subscribers). Row ``markers``: the same with a subscriber on ``~/markers``, so the
  node also builds and publishes its MarkerArray (mesh decimated to ``mesh_marker_max_faces``); row
  ``verify``: with ``verify_categories`` on.
* **reference**: :class:`cse_train.reference_pipeline.ReferencePipeline` (eager torch CSE network at the
  paper's sizes S 256 / G 64, the reference crop, confidence upsampling and selection, the 100-iteration
  5-point RANSAC-Umeyama), after the same decode; it builds and publishes no messages.
* **net fp32 / net int8** (``--network-objects``, default 1, 3 and 5 objects): the same node path with the
  ``ort-cpu`` settings on held-out frames (:func:`make_network_scene`, the synthetic test split) and the
  network's *own* outputs fed to select/solve, for the float model and for its static INT8 version
  (``--int8``: ``<models-dir>/<category>.int8.onnx``, else ``out/quant/<category>.int8.onnx`` when made from
  this model, else quantized now by :mod:`cse_train.quantize`). The table's ``input`` column says which rows
  got oracle correspondences and which the network's.

Load test (``--load-seconds`` per rate, default 10; 0 skips it): :mod:`cse_pose_dev.bench_load` starts the
node as a process (``python -m cse_pose_ros``, defaults, the same model folder), publishes a held-out
``--load-objects`` frame over DDS at each ``--load-rates`` rate (default 30 and 100 Hz) and prints sent,
served and dropped frames, the served rate, stamp-to-pose latency p50/p95 and the node's
``frames_dropped_stale`` and CPU.

Model weights: the trained ``models/<category>.onnx`` (and ``.pt``) when present, else random
initialisation exported with ``cse_train.export`` into a temporary folder (the header says which). The
network's *compute* does not depend on its weights, but what the solver gets does: random weights give
garbage correspondences and drive our RANSAC to its worst case (every hypothesis drawn). By default
(``--correspondences oracle``) the network runs (and is timed) and then the downstream stages of both
pipelines receive the match and confidence of the oracle model of ``cse_pose_dev.oracle`` (exact
correspondences of the rendered frame) with ``--outlier-ratio`` of the cells replaced by random canonical
points and ``--match-noise`` added, like a trained network's output; the oracle's own run is excluded from
the timings. ``--correspondences network`` passes the random network's outputs through.

Memory: RSS (and GPU memory where a GPU runs) after 100 and after ``--mem-frames`` frames of one method
through the whole node path. On CPU the 10,000 frames of the small network would not fit the 5-minute
budget of ``make bench``, so by default (``--mem-model auto``) the memory run on CPU swaps the network for
the oracle ONNX model in the same onnxruntime backend (1 object; every other stage unchanged);
``--mem-model network`` runs the real
network (about 4 minutes on this machine).

Times are milliseconds of wall clock per frame, as the node measures them for its diagnostics; e2e is its
whole frame callback (decode to publish), so stages need not sum to it exactly. BLAS is limited to one
thread as in the node (``node.limit_blas_threads``); torch
(TorchScript backend and the peer) runs with ``--torch-threads`` (default 1: its 2-thread OpenMP pool was
10x slower on this busy 2-core machine); onnxruntime runs with the node's ``intra_op_threads`` (row
``ort-cpu``) and with one thread (row ``ort-cpu-1t``). Python's cyclic GC is frozen after
set-up (``--no-gc-freeze``): the bench process holds torch and the peer, which the node does not, and full
GC passes over them would add pauses to our frames that the node does not have.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Columns of the table, in order (``e2e`` last). "select" = confidence threshold + pixel selection.
STAGES: tuple[str, ...] = ("decode", "crop", "model", "select", "lift", "solve", "pose", "verify", "refine",
                           "publish")
E2E = "e2e"
#: Row of the node path with pose verification (``cse_pose.verify``) on; its ``verify`` column is the cost.
VERIFY_LABEL = "verify"
#: Row of the node path with a ~/markers subscriber (RViz): the node then builds and publishes the MarkerArray.
MARKERS_LABEL = "markers"
#: Targets of the real-time issue (2-core CPU, quiet machine, node defaults): e2e p50 per object count, and
#: the reference-equivalent peer's e2e p50 over ours (for each object count both ran with).
TARGET_P50_MS = {1: 10.0, 3: 25.0, 5: 35.0}
TARGET_SPEEDUP = 20.0
TARGET_GROWTH_MIB = 5.0
#: Load test targets: camera rate (Hz) -> (served rate at least, stamp-to-pose latency p95 at most in ms).
TARGET_LOAD = {30.0: (25.0, 100.0)}
#: Backends the bench knows, in table order: name -> (``load_model`` backend, onnxruntime intra-op threads,
#: idle pool threads spin); None = the node's default (parameter ``intra_op_threads``, ``OnnxOptions``).
BACKENDS: dict[str, tuple[str, int | None, bool | None]] = {
    "ort-cpu": ("cpu", None, None),
    "ort-cpu-1t": ("cpu", 1, None),
    "ort-cpu-2t": ("cpu", 2, True),
    "ort-cpu-2t-nospin": ("cpu", 2, False),
    "torch": ("torch", None, None),
    "ort-cuda": ("cuda", None, None),
    "ort-trt": ("tensorrt", None, None),
}
#: Rows of ``--backends auto`` (those available); the others on request.
AUTO_BACKENDS: tuple[str, ...] = ("ort-cpu", "ort-cpu-1t", "torch", "ort-cuda", "ort-trt")
GPU_BACKENDS = ("ort-cuda", "ort-trt")
WIDTH, HEIGHT, F_PX = 640, 480, 600.0
#: Object size of the rendered boxes: this factor times the oracle's canonical extents (1.4, 2.0, 1.2).
OBJECT_SCALE_M = 0.06
#: ``input`` column of the table: what a row's select/solve stages got.
INPUT_ORACLE = "oracle"
INPUT_NETWORK = "network"
#: Row labels of the network-fed rows (float model, and its static INT8 version).
NET_FP32, NET_INT8 = "net fp32 ort-cpu", "net int8 ort-cpu"


# ---------------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------------
def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/statm``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def gpu_memory_mib(pid: int | None = None) -> float | None:
    """GPU memory of process ``pid`` (default: this one) in MiB per ``nvidia-smi``; None without a GPU."""
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0.0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            total += float(parts[1])
    return total


def load_average() -> str:
    """``1/5/15-minute`` load average as text ('n/a' where the OS has none)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def host_gauge(trials: int = 3) -> str:
    """One-thread speed of this host now, as text: a Python loop of 10^6 additions and a numpy sort of 10^5 floats
    (ms, min of ``trials``). Frame times on the development VM moved by 1.5x and more between days (the peer's
    1-object frame: 192 ms one morning, 469 ms the next), while the ratios within a run held; the header prints
    this at start and end so that runs of different days can be told apart."""
    loop, sort = float("inf"), float("inf")
    values = np.random.default_rng(0).random(100_000)
    for _ in range(trials):
        t0 = time.perf_counter()
        k = 0
        for i in range(1_000_000):
            k += i
        loop = min(loop, time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.sort(values)
        sort = min(sort, time.perf_counter() - t0)
    return f"Python loop {loop * 1e3:.0f} ms, numpy sort {sort * 1e3:.2f} ms"


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p95) of the samples (linear interpolation); NaN for none."""
    if len(samples) == 0:
        return float("nan"), float("nan")
    a = np.asarray(samples, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def limit_blas_threads() -> str:
    """One BLAS thread, as the node (``node.limit_blas_threads``). Returns a description for the header."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "threadpoolctl missing: BLAS threads not limited"
    threadpool_limits(limits=1, user_api="blas")
    libs = [
        f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info() if i.get("user_api") == "blas"
    ]
    return "BLAS threads: " + (", ".join(sorted(set(libs))) or "no BLAS loaded")


# ---------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """One rendered frame and its ROS messages.

    Attributes:
        n_objects: instances in the mask (ids 1..n).
        rgb: (H, W, 3) uint8. depth_m: (H, W) float32 metres. mask: (H, W) uint8 instance ids. K: (3, 3).
        msgs: (rgb8 Image, 16UC1 Image in mm, mono8 mask Image, CameraInfo), as a subscription delivers them.
        poses: per object (R (3, 3), t (3,) m, size (3,) m), object -> camera.
    """

    n_objects: int
    rgb: np.ndarray
    depth_m: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    msgs: tuple[Any, Any, Any, Any]
    poses: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def _object_layout(n_objects: int) -> list[np.ndarray]:
    """Box centres (camera frame, m) of ``n_objects`` non-overlapping objects on a table 0.6-0.75 m away."""
    if n_objects == 1:
        return [np.array([0.02, 0.03, 0.6])]
    xs = np.linspace(-0.24, 0.24, n_objects)
    return [np.array([x, 0.03 + 0.04 * (i % 2), 0.7 + 0.05 * (i % 2)]) for i, x in enumerate(xs)]


def make_scene(n_objects: int, seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> Scene:
    """Render ``n_objects`` boxes in NOCS colours (the oracle's input) and wrap the frame in messages."""
    from sensor_msgs.msg import CameraInfo

    from cse_pose.core.rotation import random_rotation
    from cse_pose_dev.oracle import DEFAULT_EXTENTS, default_intrinsics, render_oracle_frame
    from cse_pose_ros.conversions import numpy_to_image

    rng = np.random.default_rng(seed + 101 * n_objects)
    K = default_intrinsics(width, height, F_PX)
    size = OBJECT_SCALE_M * np.asarray(DEFAULT_EXTENTS)
    poses = [(random_rotation(rng), t, size) for t in _object_layout(n_objects)]
    rgb, depth, ids = render_oracle_frame(
        *poses[0], K, width, height, extra_objects=poses[1:], background_depth_m=1.5
    )
    mask = ids.astype(np.uint8)
    depth_mm = np.round(depth * 1000.0).astype(np.uint16)
    rgb_msg = numpy_to_image(rgb, "rgb8")
    rgb_msg.header.frame_id = "camera_color_optical_frame"
    rgb_msg.header.stamp.sec = 1
    depth_msg = numpy_to_image(depth_mm, "16UC1", header=rgb_msg.header)
    mask_msg = numpy_to_image(mask, "mono8", header=rgb_msg.header)
    info = CameraInfo(header=rgb_msg.header, width=width, height=height)
    info.k = [float(x) for x in K.reshape(-1)]
    return Scene(
        n_objects,
        rgb,
        depth_mm.astype(np.float32) / 1000.0,
        mask,
        K,
        (rgb_msg, depth_msg, mask_msg, info),
        poses,
    )


def _with_copies(spec: Any, n_copies: int, gap_m: float = 0.03) -> Any:
    """``spec`` (a ``cse_train.data.synthetic.SceneSpec``) with ``n_copies`` (at most 4) more instances of its
    target (same shape and texture, turned 50 degrees each) on the table, as frame 0's camera sees it: the first two
    beside it, right and left; the next two in a row behind, one step further from the camera and half a step to
    either side (further out they leave the image). They replace the scene's distractors; instance ids 2, 3, ..."""
    import dataclasses

    if not 0 <= n_copies <= 4:
        raise ValueError(f"at most 4 copies, got {n_copies}")
    size = np.asarray(spec.size_m, dtype=np.float64)
    eye = spec.camera_centers()[0]
    view = -eye[[0, 2]] / max(float(np.linalg.norm(eye[[0, 2]])), 1e-9)  # towards the target (world origin)
    side = np.array([-view[1], view[0]])
    step = float(np.linalg.norm(size[[0, 2]])) + gap_m  # footprint diameter + a gap: no interpenetration
    copies = []
    for k in range(n_copies):
        sign = 1.0 if k % 2 == 0 else -1.0
        xz = step * sign * side if k < 2 else step * (0.5 * sign * side + view)
        copies.append({
            "kind": "category", "category": spec.category, "params": dict(spec.shape_params), "scale": 1.0,
            "occluder": False, "size": [float(x) for x in size], "texture": spec.target_texture,
            "yaw_deg": float(spec.yaw_deg + 50.0 * (k + 1)),
            "position": [float(xz[0]), float(size[1] / 2), float(xz[1])],
        })
    return dataclasses.replace(spec, distractors=copies)


def make_network_scene(category: str, n_objects: int, seed: int = 0) -> Scene:
    """A held-out frame for the shipped network: ``cse_train.data.synthetic`` test split (shape and texture
    bands never trained on), with sensor noise and depth holes, 640x480.

    One object: frame 0 of a test scene, its target's mask (id 1), the scene's clutter around it. Two to five:
    the same scene with its clutter replaced by copies of the target around it (:func:`_with_copies`), all
    in one camera, so every instance's points are lifted with the right intrinsics (mask ids 1..n).
    """
    from cse_train.data.synthetic import render_frame, sample_scene

    from .ros_io import frame_messages

    if not 1 <= n_objects <= 5:
        raise ValueError(f"network scenes hold 1 to 5 objects, got {n_objects}")
    spec = sample_scene(category, "test", 1000 + seed, frames=(12, 12))
    if n_objects > 1:
        spec = _with_copies(spec, n_objects - 1)
    fr = render_frame(spec, 0, WIDTH, HEIGHT)
    mask = np.where(fr.instance_mask <= n_objects, fr.instance_mask, 0).astype(np.uint8)
    visible = set(np.unique(mask)) - {0}
    if visible != set(range(1, n_objects + 1)):
        raise RuntimeError(f"network scene: {n_objects} objects wanted, ids {sorted(visible)} in view")
    poses = [(g["R"], g["t"], g["size"]) for g in sorted(fr.gt, key=lambda g: g["instance_id"])][:n_objects]
    msgs = frame_messages(fr.rgb, fr.depth_m, mask, fr.K, 1.0)
    return Scene(n_objects, fr.rgb, fr.depth_m, mask, fr.K, msgs, poses)


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------
@dataclass
class ModelFiles:
    """Model files used by the run. ``onnx``/``torchscript``: our network; ``oracle``: (S, G) -> oracle ONNX;
    ``weights``: text for the header."""

    onnx: Path
    torchscript: Path | None
    oracle: dict[tuple[int, int], Path] = field(default_factory=dict)
    weights: str = ""


def prepare_models(models_dir: Path, out_dir: Path, category: str, config: str, seed: int) -> ModelFiles:
    """Trained ``models_dir/<category>.onnx`` (+ ``.pt``) if present, else a random-init ``config`` export.

    The export (``cse_train.export``) writes ``out_dir/<config>/<category>.onnx`` and ``.pt``.
    """
    trained = models_dir / f"{category}.onnx"
    if trained.is_file():
        pt = trained.with_suffix(".pt")
        return ModelFiles(trained, pt if pt.is_file() else None, weights=f"trained: {trained}")
    import torch

    from cse_train.config import get_config
    from cse_train.export import export_onnx, export_torchscript
    from cse_train.model import CSENet

    torch.manual_seed(seed)
    model = CSENet.from_category(category, get_config(config)).eval()
    folder = out_dir / config
    onnx_path = export_onnx(model, folder / f"{category}.onnx", "random init (bench)", f"bench-seed{seed}")
    pt_path = export_torchscript(model, folder / f"{category}.pt", "random init (bench)", f"bench-seed{seed}")
    return ModelFiles(
        onnx_path,
        pt_path,
        weights=f"random init (seed {seed}), '{config}' config, exported by cse_train.export to {folder}",
    )


def oracle_model(files: ModelFiles, out_dir: Path, category: str, crop_size: int, grid_size: int) -> Path:
    """The oracle ONNX for (S, G), written once into ``out_dir``."""
    from cse_pose_dev.oracle import write_oracle_model

    key = (crop_size, grid_size)
    if key not in files.oracle:
        files.oracle[key] = write_oracle_model(
            out_dir / f"oracle_{crop_size}_{grid_size}" / f"{category}.onnx",
            category=category,
            crop_size=crop_size,
            grid_size=grid_size,
        )
    return files.oracle[key]


class Corruptor:
    """Noise and outliers for oracle correspondences (fixed per batch size and seed, so frames repeat).

    ``apply(match (B, G, G, 3))`` returns a corrupted copy: Gaussian noise of std ``noise`` (canonical units)
    on every cell and a fraction ``outlier_ratio`` of the cells replaced by uniform points in [-1, 1]^3.
    """

    def __init__(self, outlier_ratio: float, noise: float, seed: int = 0) -> None:
        self.outlier_ratio, self.noise, self.seed = float(outlier_ratio), float(noise), int(seed)
        self._cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def apply(self, match: np.ndarray) -> np.ndarray:
        shape = tuple(match.shape)
        if shape not in self._cache:
            rng = np.random.default_rng(self.seed)
            cells = int(np.prod(shape[:-1]))
            noise = (rng.normal(0.0, self.noise, shape)).astype(np.float32)
            out_idx = rng.choice(cells, int(round(self.outlier_ratio * cells)), replace=False)
            out_val = rng.uniform(-1.0, 1.0, (len(out_idx), 3)).astype(np.float32)
            self._cache[shape] = (noise, out_idx, out_val)
        noise, out_idx, out_val = self._cache[shape]
        out = match + noise
        out.reshape(-1, 3)[out_idx] = out_val
        return out


class OracleOutputs:
    """``InferenceBackend`` wrapper: the network runs (what the bench times), then the pipeline gets the
    network's vertices with the oracle's corrupted match and confidence. ``extra_ms`` accumulates the
    oracle's own time, which the bench subtracts. With ``network=None`` the oracle is the model (its
    vertices, a 14-vertex box, and its time count; the memory run on CPU)."""

    def __init__(self, network: Any | None, oracle: Any, corruptor: Corruptor) -> None:
        self.network = network
        self.oracle = oracle
        self.corruptor = corruptor
        self.info = (network or oracle).info
        self.name = (network or oracle).name
        self.extra_ms = 0.0

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vertices = None if self.network is None else self.network.run(rgb_crops, masks)[0]
        oracle_vertices, match, confidence, ms = _oracle_outputs(self.oracle, self.corruptor, rgb_crops, masks)
        if vertices is None:
            return oracle_vertices, match, confidence
        self.extra_ms += ms
        return vertices, match, confidence


def _oracle_outputs(oracle: Any, corruptor: Corruptor, rgb_crops: np.ndarray,
                    masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The oracle's (vertices, corrupted match, confidence) and the ms they took."""
    t0 = time.perf_counter()
    vertices, match, confidence = oracle.run(rgb_crops, masks)
    return vertices, corruptor.apply(match), confidence, (time.perf_counter() - t0) * 1e3


# ---------------------------------------------------------------------------------------------------
# our node path
# ---------------------------------------------------------------------------------------------------
class RosContext:
    """A private rclpy context (never the process's default one) for the in-process nodes of the bench."""

    def __init__(self) -> None:
        import rclpy

        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)

    def close(self) -> None:
        self.context.try_shutdown()


class NodeMethod:
    """Our node's frame path with one model backend: an in-process :class:`~cse_pose_ros.node.PoseNode`
    (parameter defaults, its own namespace, so no topic meets another method's or the load test's) serving
    ``model``, each frame handed straight to the node's frame callback (``PoseNode._on_frame``, what its frame
    thread runs; no DDS input). So decode, pipeline and publishing are the node's own code: PoseStamped,
    PoseArray, TF and Detection3DArray every frame, the MarkerArray only while ``~/markers`` has a subscriber
    (``markers``: the bench subscribes, as RViz would), diagnostics on the node's ~1 Hz timer (not spun
    here: one small message a second). The stage times are the node's (``FrameStats.last_ms``).

    Args:
        label: row label. model: an ``InferenceBackend`` (possibly :class:`OracleOutputs`).
        ros: the shared :class:`RosContext`. category: category of every instance.
        mesh_max_faces: triangles of the mesh marker at most (None = the node's default,
            ``mesh_marker_max_faces``; 0 = full mesh).
        verify: render-and-compare verification (``cse_pose.verify``) on ``category`` (``verify_categories``).
        markers: subscribe to the node's ``~/markers``, so that it builds and publishes them.
    """

    _created = 0

    def __init__(self, label: str, model: Any, ros: RosContext, category: str, mesh_max_faces: int | None = None,
                 verify: bool = False, markers: bool = False) -> None:
        from rclpy.parameter import Parameter
        from visualization_msgs.msg import MarkerArray

        from cse_pose_ros.node import PoseNode

        self.label = label
        self.model = model
        overrides = [Parameter("category", value=category)]
        if mesh_max_faces is not None:
            overrides.append(Parameter("mesh_marker_max_faces", value=int(mesh_max_faces)))
        if verify:
            overrides.append(Parameter("verify_categories", value=category))
        NodeMethod._created += 1
        self.node = PoseNode(models={category: model}, context=ros.context, parameter_overrides=overrides,
                             namespace=f"/cse_pose_bench_{os.getpid()}_{NodeMethod._created}")
        if self.node._pipeline is None:
            raise RuntimeError(f"bench node {label!r} serves nothing: {self.node._model_error}")
        self._marker_sub = None
        if markers:
            self._marker_sub = self.node.create_subscription(MarkerArray, "~/markers", lambda _msg: None, 10)
            if self.node._pub_markers.get_subscription_count() < 1:
                raise RuntimeError("the bench's ~/markers subscription did not match the node's publisher")

    @property
    def mesh_faces(self) -> int:
        """Triangles of the mesh marker the node builds for its category (its ``mesh_marker_max_faces``)."""
        faces = self.node._meshes.faces(self.node._p.mesh_marker_max_faces)
        return len(faces[self.node._category])

    def run(self, scene: Scene) -> dict[str, float]:
        """One frame through the node. Returns ms per stage of :data:`STAGES` and ``e2e``."""
        stats = self.node.stats
        extra0 = getattr(self.model, "extra_ms", 0.0)
        processed = stats.processed
        self.node._on_frame(*scene.msgs)
        if stats.processed != processed + 1:
            raise RuntimeError(f"bench frame not served by {self.label!r}: {stats.last_reason}")
        extra = getattr(self.model, "extra_ms", 0.0) - extra0
        timings = stats.last_ms
        row = {stage: float(timings.get(stage, float("nan"))) for stage in STAGES}
        row["model"] -= extra
        row[E2E] = timings["total"] - extra
        return row

    def close(self) -> None:
        self.node.destroy_node()


# ---------------------------------------------------------------------------------------------------
# the reference peer
# ---------------------------------------------------------------------------------------------------
class OracleHook:
    """The reference peer's ``outputs_hook`` for oracle input: the oracle's corrupted match and confidence in
    place of the network's. ``extra_ms`` accumulates the oracle's own time, which the bench subtracts from the
    peer's frame as :class:`OracleOutputs`' from ours."""

    def __init__(self, oracle: Any, corruptor: Corruptor) -> None:
        self.oracle = oracle
        self.corruptor = corruptor
        self.extra_ms = 0.0

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, match, confidence, ms = _oracle_outputs(self.oracle, self.corruptor, rgb, mask)
        self.extra_ms += ms
        return match, confidence


class ReferenceMethod:
    """Decode (as ours, depth kept in mm like the reference) -> :class:`ReferencePipeline`. No messages.
    The time of its ``outputs_hook`` (an :class:`OracleHook`) is not counted."""

    def __init__(self, label: str, pipeline: Any) -> None:
        self.label = label
        self.pipeline = pipeline

    def run(self, scene: Scene) -> dict[str, float]:
        from cse_pose.instances import instance_classes
        from cse_pose_ros.conversions import camera_info_to_K, image_to_numpy

        rgb_msg, depth_msg, mask_msg, info_msg = scene.msgs
        t0 = time.perf_counter()
        rgb = image_to_numpy(rgb_msg, "rgb")
        depth_mm = image_to_numpy(depth_msg, "depth")
        mask = image_to_numpy(mask_msg, "mask")
        K, _ = camera_info_to_K(info_msg)
        ids = sorted(instance_classes(mask, "object", {}))
        hook = self.pipeline.outputs_hook
        extra0 = getattr(hook, "extra_ms", 0.0)
        t1 = time.perf_counter()
        result = self.pipeline.process(rgb, depth_mm, mask, ids, K)
        t2 = time.perf_counter()
        row = {stage: float(result.timings_ms.get(stage, float("nan"))) for stage in STAGES}
        row["decode"] = (t1 - t0) * 1e3
        row["publish"] = float("nan")
        row[E2E] = (t2 - t0) * 1e3 - (getattr(hook, "extra_ms", 0.0) - extra0)
        return row


# ---------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """Samples per (method label, objects): list of per-frame stage dicts; plus memory figures.

    ``inputs``: method label -> what its select/solve stages got (:data:`INPUT_ORACLE` or
    :data:`INPUT_NETWORK`), the ``input`` column of the table."""

    samples: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, n_objects: int, row: Mapping[str, float]) -> None:
        self.samples.setdefault((label, n_objects), []).append(dict(row))

    def stat(self, label: str, n_objects: int, stage: str) -> tuple[float, float]:
        rows = self.samples.get((label, n_objects), [])
        return percentiles([r[stage] for r in rows if np.isfinite(r.get(stage, float("nan")))])


def interleaved_run(
    methods: Sequence[Any],
    scenes: Sequence[Scene],
    frames: int,
    results: Results,
    sparse: Mapping[str, int] | None = None,
    warmup: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Warm every (method, scene) up, then time ``frames`` rounds of every scene with every method.

    A method with a ``scenes`` attribute runs on those instead (scene ``j`` of its list in the slot of
    ``scenes[j]``), still interleaved frame by frame with the others.

    Args:
        sparse: label -> number of timed frames for methods too slow for every round; they run on rounds
            spread evenly over the run.
        warmup: label -> untimed calls per scene before timing (default 2).
    """
    sparse = dict(sparse or {})
    warmup = dict(warmup or {})
    own = {m.label: list(getattr(m, "scenes", None) or scenes) for m in methods}
    for method in methods:
        for scene in own[method.label]:
            for _ in range(warmup.get(method.label, 2)):
                method.run(scene)
        if progress:
            progress(f"warmed up {method.label}")
    rounds = {}
    for method in methods:
        k = sparse.get(method.label)
        rounds[method.label] = (
            set(range(frames))
            if k is None
            else set(np.linspace(0, frames - 1, max(1, min(k, frames))).round().astype(int).tolist())
        )
    slots = max(len(v) for v in own.values()) if own else 0
    for i in range(frames):
        for j in range(slots):
            for method in methods:
                if i in rounds[method.label] and j < len(own[method.label]):
                    scene = own[method.label][j]
                    results.add(method.label, scene.n_objects, method.run(scene))


def memory_run(method: NodeMethod, scene: Scene, frames: int, checkpoint: int = 100) -> dict[str, Any]:
    """RSS (and GPU memory) after ``checkpoint`` and after ``frames`` frames of ``method`` on ``scene``."""
    out: dict[str, Any] = {"label": method.label, "frames": frames, "objects": scene.n_objects}
    t0 = time.perf_counter()
    for i in range(1, frames + 1):
        method.run(scene)
        if i == checkpoint:
            out["rss_at_checkpoint_mib"] = rss_mib()
            out["gpu_at_checkpoint_mib"] = gpu_memory_mib()
    out["rss_end_mib"] = rss_mib()
    out["gpu_end_mib"] = gpu_memory_mib()
    out["checkpoint"] = checkpoint
    out["seconds"] = time.perf_counter() - t0
    if frames >= checkpoint:
        out["rss_growth_mib"] = out["rss_end_mib"] - out["rss_at_checkpoint_mib"]
        if out["gpu_end_mib"] is not None and out["gpu_at_checkpoint_mib"] is not None:
            out["gpu_growth_mib"] = out["gpu_end_mib"] - out["gpu_at_checkpoint_mib"]
    return out


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def format_table(results: Results, labels: Sequence[str], objects: Sequence[int]) -> str:
    """The latency table: a p50 and a p95 line per (method, objects); ``-`` where a stage does not exist.

    Rows of ``objects`` and of any other object count a method has samples for; with ``results.inputs`` an
    ``input`` column says what the method's select/solve stages got."""
    name_w = max(12, *(len(lb) for lb in labels))
    cols = (*STAGES, E2E)
    in_w = max((len(v) for v in results.inputs.values()), default=0)
    in_head = f"{'input':<{in_w}} " if in_w else ""
    head = f"{'method':<{name_w}} {in_head}{'obj':>3} {'stat':>4} {'n':>4} " + " ".join(f"{c:>8}" for c in cols)
    lines = [head, "-" * len(head)]
    for label in labels:
        counts = sorted(set(objects) | {n for (lb, n) in results.samples if lb == label})
        for n in counts:
            rows = results.samples.get((label, n), [])
            if not rows:
                continue
            for q, name in ((0, "p50"), (1, "p95")):
                cells = []
                for c in cols:
                    v = results.stat(label, n, c)[q]
                    cells.append(f"{v:>8.2f}" if np.isfinite(v) else f"{'-':>8}")
                first = label if q == 0 else ""
                count = str(len(rows)) if q == 0 else ""
                source = (f"{results.inputs.get(label, '-') if q == 0 else '':<{in_w}} " if in_w else "")
                lines.append(f"{first:<{name_w}} {source}{n:>3} {name:>4} {count:>4} " + " ".join(cells))
    return "\n".join(lines)


def speedups(results: Results, ours: Sequence[str], ref: str, objects: Sequence[int]) -> list[str]:
    """Reference p50 / ours p50: end to end, model stage, and everything but the model."""
    lines = []
    for label in ours:
        for n in objects:
            r50 = results.stat(ref, n, E2E)[0]
            o50 = results.stat(label, n, E2E)[0]
            rm, om = results.stat(ref, n, "model")[0], results.stat(label, n, "model")[0]
            if not (np.isfinite(r50) and np.isfinite(o50)):
                continue
            lines.append(
                f"{label:<16} {n} obj: e2e x{r50 / o50:6.1f}   model x{rm / om:6.1f}   "
                f"rest (e2e - model) x{(r50 - rm) / (o50 - om):6.1f}"
            )
    return lines


def target_lines(results: Results, node_label: str, ref: str | None, memory: Mapping[str, Any],
                 load: Sequence[Any] = (), net_label: str = NET_FP32) -> list[str]:
    """PASS/FAIL of the issue's targets for the node's default backend.

    The frame targets are judged on the network row ``net_label`` (the file the node runs by default: the INT8
    row when ``node_label``'s node runs ``<category>.int8.onnx``; the shipped network's own outputs on a
    held-out frame, what a robot sees) for the object counts it has, else on ``node_label``'s oracle row; an
    oracle row of a judged count follows as an ``info`` line (its solver gets exact pairs with 20 % outlier
    cells: a stress input, not the network's). The speed-up is on the oracle rows, the only input the peer has.
    """
    lines = []
    for n, limit in TARGET_P50_MS.items():
        judged = False
        for label in (net_label, node_label):
            p50 = results.stat(label, n, E2E)[0]
            if not np.isfinite(p50):
                continue
            source = results.inputs.get(label, "?")
            if judged:
                lines.append(f"info  e2e p50 {n} object(s) {p50:.1f} ms on {label} ({source} input, not judged)")
                continue
            verdict = "PASS" if p50 <= limit else "FAIL"
            lines.append(f"{verdict}  e2e p50 {n} object(s) {p50:.1f} ms <= {limit:.0f} ms ({label}, {source} input)")
            judged = True
    if ref is not None:
        for n in TARGET_P50_MS:
            r50, o50 = results.stat(ref, n, E2E)[0], results.stat(node_label, n, E2E)[0]
            if np.isfinite(r50) and np.isfinite(o50):
                ratio = r50 / o50
                verdict = "PASS" if ratio >= TARGET_SPEEDUP else "FAIL"
                lines.append(
                    f"{verdict}  speed-up vs reference {n} object(s) x{ratio:.1f} >= x{TARGET_SPEEDUP:.0f}"
                )
    growth = memory.get("rss_growth_mib")
    if growth is not None:
        verdict = "PASS" if growth <= TARGET_GROWTH_MIB else "FAIL"
        lines.append(
            f"{verdict}  RSS growth frame {memory['checkpoint']} -> {memory['frames']}: {growth:+.2f} MiB "
            f"<= {TARGET_GROWTH_MIB:.0f} MiB"
        )
    for r in load:
        v = r.row()
        if v["rate_hz"] in TARGET_LOAD:
            min_hz, max_p95 = TARGET_LOAD[v["rate_hz"]]
            verdict = "PASS" if v["served_hz"] >= min_hz and v["p95_ms"] <= max_p95 else "FAIL"
            lines.append(f"{verdict}  load test {v['rate_hz']:.0f} Hz: served {v['served_hz']:.1f} Hz >= "
                         f"{min_hz:.0f}, latency p95 {v['p95_ms']:.0f} ms <= {max_p95:.0f} ms")
    return lines


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--frames", type=int, default=30, help="timed frames per method and scene (default 30)")
    ap.add_argument(
        "--ref-frames",
        type=int,
        default=16,
        help="timed frames of the reference peer, spread over the run (default 16; it is slow, and its frame time "
        "spread by x1.5 within one run of 8)",
    )
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 5], help="objects per frame (default 1 5)")
    ap.add_argument(
        "--backends",
        default="auto",
        help=f"comma-separated subset of {','.join(BACKENDS)}; auto = all available (default)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed frames per method and scene (default 2)")
    ap.add_argument(
        "--torch-warmup",
        type=int,
        default=3,
        help="untimed frames per scene for TorchScript (its profiling executor optimises after the "
        "first calls of every input shape; default 3)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the TorchScript backend and the reference (default 1: on a "
        "busy 2-core machine torch's 2-thread OpenMP pool was measured 10x slower; 0 = torch's "
        "default)",
    )
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="do not gc.freeze() after set-up (by default the objects of torch, cse_train and the "
        "reference, which the node process does not hold, are exempted from Python's cyclic GC, "
        "whose full passes over them would otherwise add ~80 ms pauses to our frames)",
    )
    ap.add_argument("--category", default="mug")
    ap.add_argument("--config", default="small", help="our network config when no trained model exists")
    ap.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="trained <category>.onnx/.pt are used from here when present (default models)",
    )
    ap.add_argument(
        "--ref-config", default="paper", help="network config of the reference peer (default paper)"
    )
    ap.add_argument(
        "--ref-checkpoint",
        type=Path,
        default=None,
        help="cse_train checkpoint with trained weights for the peer (default: random init)",
    )
    ap.add_argument("--ref-device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference peer")
    ap.add_argument(
        "--correspondences",
        choices=("oracle", "network"),
        default="oracle",
        help="what the solver stages get: corrupted oracle correspondences (default) or the "
        "random network's own outputs (RANSAC worst case)",
    )
    ap.add_argument("--outlier-ratio", type=float, default=0.2, help="oracle cells replaced by outliers")
    ap.add_argument("--match-noise", type=float, default=0.01, help="oracle match noise, canonical units")
    ap.add_argument("--mem-frames", type=int, default=10000, help="frames of the memory run (0 = skip)")
    ap.add_argument("--mem-objects", type=int, default=1)
    ap.add_argument(
        "--mem-model",
        choices=("auto", "oracle", "network"),
        default="auto",
        help="network of the memory run: auto = network on a GPU backend, oracle graph on CPU",
    )
    ap.add_argument(
        "--require-cuda",
        action="store_true",
        help="GPU bench: exit (status 0, with a message) when onnxruntime has no CUDA EP",
    )
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="keep exported models here (default: temp dir)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write all samples and figures as JSON")
    ap.add_argument(
        "--mesh-max-faces",
        type=int,
        default=None,
        help="triangles of the mesh marker at most (default: the node's mesh_marker_max_faces; 0 = full mesh)",
    )
    ap.add_argument(
        "--network-objects",
        type=int,
        nargs="*",
        default=[1, 3, 5],
        help="objects per held-out frame of the network-fed rows (1-5; default 1 3 5; none = no such rows)",
    )
    ap.add_argument(
        "--int8",
        default="auto",
        help="INT8 model of the 'net int8' row: a path, 'none', or auto = <models-dir>/<category>.int8.onnx, "
        "else out/quant/<category>.int8.onnx when made from this model, else quantized now by "
        "cse_train.quantize (and kept in out/quant for trained models)",
    )
    ap.add_argument(
        "--calib-videos",
        type=int,
        default=None,
        help="train-split videos for the INT8 calibration when quantizing now (default: cse_train.quantize's)",
    )
    ap.add_argument(
        "--load-seconds",
        type=float,
        default=10.0,
        help="seconds per camera rate of the DDS load test (0 = skip; default 10)",
    )
    ap.add_argument(
        "--load-rates", type=float, nargs="+", default=[30.0, 100.0], help="camera rates of the load test (Hz)"
    )
    ap.add_argument("--load-objects", type=int, default=3, help="objects per frame of the load test (1-4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.frames < 1 or args.ref_frames < 1 or args.mem_frames < 0:
        ap.error("--frames and --ref-frames must be >= 1, --mem-frames >= 0")
    if any(not 1 <= n <= 5 for n in [*args.network_objects, args.load_objects]):
        ap.error("--network-objects and --load-objects must be within 1..5")
    if args.load_seconds < 0 or any(r <= 0 for r in args.load_rates):
        ap.error("--load-seconds must be >= 0 and --load-rates > 0")
    return args


#: Where INT8 models quantized by the bench from trained models are kept (and found again).
QUANT_DIR = Path("out/quant")


def int8_model(
    requested: str,
    files: ModelFiles,
    models_dir: Path,
    out_dir: Path,
    category: str,
    calib_videos: int | None = None,
) -> tuple[Path | None, str]:
    """The INT8 model of the ``net int8`` row per ``--int8`` (see :func:`parse_args`) and a header note."""
    if requested == "none":
        return None, "not run (--int8 none)"
    if requested != "auto":
        path = Path(requested)
        if not path.is_file():
            raise SystemExit(f"bench: --int8 {requested}: no such file")
        return path, f"{path} (given)"
    from cse_pose.inference import int8_path
    from cse_train.quantize import calibration_batches, made_from, quantize_model

    beside = int8_path(models_dir / f"{category}.onnx")
    if beside.is_file():
        return beside, str(beside)
    trained = files.weights.startswith("trained")
    cached = QUANT_DIR / f"{category}.int8.onnx"
    if trained and cached.is_file() and made_from(cached, files.onnx):
        return cached, f"{cached} (quantized earlier from {files.onnx} as it is now)"
    dst = cached if trained else out_dir / "int8" / f"{category}.int8.onnx"
    t0 = time.perf_counter()
    kw = {} if calib_videos is None else {"videos": calib_videos}
    batches = calibration_batches(files.onnx, **kw)
    quantize_model(files.onnx, dst, batches, log=_say)
    return dst, (
        f"{dst}, quantized now from {files.onnx} by cse_train.quantize ({sum(len(b[0]) for b in batches)} "
        f"train-split calibration crops, {time.perf_counter() - t0:.0f} s)"
    )


def available_backends(requested: str) -> tuple[list[str], list[str]]:
    """(backends to run, notes on those skipped) for ``--backends``."""
    from cse_pose.inference import available_providers

    providers = available_providers()
    wanted = list(AUTO_BACKENDS) if requested == "auto" else [b.strip() for b in requested.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"bench: unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    need = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}
    run, skipped = [], []
    for b in wanted:
        if b in need and need[b] not in providers:
            skipped.append(f"{b}: onnxruntime has no {need[b]} (providers: {', '.join(providers)})")
        else:
            run.append(b)
    return run, skipped


def ort_options(backend: str) -> tuple[str, dict[str, Any]]:
    """(``load_model`` backend, its onnxruntime keyword arguments) of a :data:`BACKENDS` row, the node's
    defaults filled in."""
    from cse_pose.inference import OnnxOptions
    from cse_pose_ros.params import spec

    kind, threads, spinning = BACKENDS[backend]
    return kind, {
        "intra_op_threads": int(spec("intra_op_threads").default) if threads is None else threads,
        "allow_spinning": OnnxOptions().allow_spinning if spinning is None else spinning,
        "precision": str(spec("precision").default),  # the INT8 file on the CPU when it ships
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    from cse_pose.inference import available_providers

    if args.require_cuda and "CUDAExecutionProvider" not in available_providers():
        print(
            "bench: no CUDA execution provider in onnxruntime "
            f"(available: {', '.join(available_providers()) or 'none'}); nothing to measure on GPU. "
            "Install onnxruntime-gpu (scripts/bench_gpu.sh does) on a machine with an NVIDIA GPU."
        )
        return 0
    backends, skipped = available_backends(args.backends)
    load0 = load_average()
    gauge0 = host_gauge()
    if args.load_seconds > 0:
        # the load test publishes camera frames from this process: its DDS participants need the large
        # shared-memory profile, which Fast DDS reads when the process creates its first participant
        from .ros_io import large_frames_env

        os.environ.update(large_frames_env())

    import onnxruntime
    import torch

    from cse_pose.inference import ModelError, load_model, read_onnx_info

    blas = limit_blas_threads()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cse_bench_")
        out_dir = Path(tmp.name)
    else:
        out_dir = args.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
    ros = RosContext()
    results = Results()
    try:
        _say("bench: preparing models and frames ...")
        files = prepare_models(args.models_dir, out_dir, args.category, args.config, args.seed)
        scenes = [make_scene(n, args.seed) for n in args.objects]
        corruptor = Corruptor(args.outlier_ratio, args.match_noise, args.seed)
        methods: list[Any] = []
        ours: list[str] = []
        ours_files: dict[str, Path] = {}  # label -> the model file its node runs
        labels_info: list[str] = []
        for b in backends:
            kind, ort_kw = ort_options(b)
            if kind == "torch" and files.torchscript is None:
                skipped.append("torch: no TorchScript file next to the trained ONNX")
                continue
            path = files.torchscript if kind == "torch" else files.onnx
            try:
                model = load_model(path, kind, **ort_kw)
            except ModelError as exc:  # e.g. a GPU provider listed by onnxruntime that fails to start
                skipped.append(f"{b}: {exc.problem}")
                continue
            label = f"ours {b}"
            if kind == "torch":
                label = f"ours {model.name}"
            info = model.info
            ours_files[label] = Path(getattr(info, "path", path))
            if args.correspondences == "oracle":
                oracle = load_model(
                    oracle_model(files, out_dir, args.category, info.crop_size, info.grid_size), "cpu"
                )
                model = OracleOutputs(model, oracle, corruptor)
            methods.append(NodeMethod(label, model, ros, args.category, args.mesh_max_faces))
            ours.append(label)
            if kind == "torch":
                labels_info.append(
                    f"{label}: TorchScript {path.name}, torch intra-op threads {torch.get_num_threads()}"
                )
            elif kind == "cpu":
                threads = ort_kw["intra_op_threads"]
                labels_info.append(
                    f"{label}: {Path(info.path).name} (precision '{ort_kw['precision']}'), onnxruntime "
                    f"{onnxruntime.__version__} CPU EP, intra-op threads "
                    f"{threads if threads else f'0 (one per core, {os.cpu_count()} here)'}"
                    + (f", idle threads spin: {ort_kw['allow_spinning']}" if threads != 1 else "")
                )
            else:
                labels_info.append(
                    f"{label}: onnxruntime {model.name}" + (" FP16" if kind == "tensorrt" else "")
                )
        ref_label = None
        if not args.no_ref:
            from cse_train.config import get_config
            from cse_train.model import CSENet, load_checkpoint
            from cse_train.reference_pipeline import ReferencePipeline

            device = args.ref_device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if args.ref_checkpoint is not None:
                net, _ = load_checkpoint(args.ref_checkpoint, map_location=device)
                ref_weights = f"trained: {args.ref_checkpoint}"
            else:
                torch.manual_seed(args.seed)
                net = CSENet.from_category(args.category, get_config(args.ref_config)).to(device)
                ref_weights = f"random init (seed {args.seed})"
            hook = None
            if args.correspondences == "oracle":
                hook = OracleHook(load_model(
                    oracle_model(files, out_dir, args.category, net.cfg.crop_size, net.cfg.grid_size), "cpu"
                ), corruptor)

            ref_label = f"reference {device}"
            methods.append(
                ReferenceMethod(ref_label, ReferencePipeline(net, seed=args.seed, outputs_hook=hook))
            )
            labels_info.append(
                f"{ref_label}: eager torch CSENet '{net.cfg.name}' S={net.cfg.crop_size} "
                f"G={net.cfg.grid_size} ({ref_weights}), torch intra-op threads "
                f"{torch.get_num_threads()}, reference crop/confidence/100-iteration RANSAC"
            )

        for label in ours:
            results.inputs[label] = INPUT_ORACLE
        from cse_pose.verify import VERIFIABLE_CATEGORIES

        base = next((m for m in methods if m.label == "ours ort-cpu"), None)
        if base is not None and args.category in VERIFIABLE_CATEGORIES:  # row 'verify': its cost, column verify
            methods.append(NodeMethod(VERIFY_LABEL, base.model, ros, args.category, args.mesh_max_faces,
                                      verify=True))
            results.inputs[VERIFY_LABEL] = INPUT_ORACLE
            labels_info.append(f"{VERIFY_LABEL}: 'ours ort-cpu' with render-and-compare verification on "
                               f"(verify_categories=['{args.category}'], off by default in the node)")
        if base is not None:  # row 'markers': what RViz on ~/markers costs the node
            methods.append(NodeMethod(MARKERS_LABEL, base.model, ros, args.category, args.mesh_max_faces,
                                      markers=True))
            results.inputs[MARKERS_LABEL] = INPUT_ORACLE
            labels_info.append(f"{MARKERS_LABEL}: 'ours ort-cpu' with a subscriber on ~/markers")
        if ref_label:
            results.inputs[ref_label] = INPUT_ORACLE
        net_labels: list[str] = []
        int8_note = ""
        if args.network_objects:
            _say("bench: held-out frames for the network rows ...")
            net_scenes = [make_network_scene(args.category, n, args.seed) for n in args.network_objects]
            kind, ort_kw = ort_options("ort-cpu")
            rows = [(NET_FP32, files.onnx)]
            int8_path_, int8_note = int8_model(
                args.int8, files, args.models_dir, out_dir, args.category, args.calib_videos
            )
            if int8_path_ is not None:
                rows.append((NET_INT8, int8_path_))
            for label, path in rows:
                model = load_model(path, kind, **dict(ort_kw, precision="float"))  # exactly this file
                method = NodeMethod(label, model, ros, args.category, args.mesh_max_faces)
                method.scenes = net_scenes
                methods.append(method)
                net_labels.append(label)
                results.inputs[label] = INPUT_NETWORK
                labels_info.append(f"{label}: {path.name} through the node's onnxruntime CPU path (as 'ours "
                                   "ort-cpu'), its own outputs fed to select/solve")

        if not args.no_gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        warm = {m.label: (args.torch_warmup if "torch" in m.label else args.warmup) for m in methods}
        sparse = {ref_label: args.ref_frames} if ref_label else {}
        _say(f"bench: timing {len(methods)} method(s) x {len(scenes)} scene(s) x {args.frames} frames ...")
        t_table = time.perf_counter()
        interleaved_run(methods, scenes, args.frames, results, sparse=sparse, warmup=warm, progress=_say)
        table_s = time.perf_counter() - t_table

        memory: dict[str, Any] = {}
        if args.mem_frames > 0 and ours:
            gpu_first = [b for b in reversed(GPU_BACKENDS) if b in backends]
            mem_backend = gpu_first[0] if gpu_first else ("ort-cpu" if "ort-cpu" in backends else backends[0])
            mem_model = args.mem_model
            if mem_model == "auto":
                mem_model = "network" if gpu_first else "oracle"
            kind, ort_kw = ort_options(mem_backend)
            info = read_onnx_info(files.onnx)
            oracle_path = oracle_model(files, out_dir, args.category, info.crop_size, info.grid_size)
            if mem_model == "network":
                path = files.torchscript if kind == "torch" else files.onnx
                net = load_model(path, kind, **ort_kw)
                oracle = load_model(oracle_path, "cpu")
                model = OracleOutputs(net, oracle, corruptor) if args.correspondences == "oracle" else net
                what = f"the {net.name} network"
            else:
                oracle = load_model(oracle_path, kind if kind != "torch" else "cpu", **ort_kw)
                model = OracleOutputs(None, oracle, corruptor)
                what = (f"the oracle ONNX model in {oracle.name} in place of the network; every other stage as "
                        "in the table")
            mem_method = NodeMethod(
                f"memory {mem_backend}", model, ros, args.category, args.mesh_max_faces
            )
            mem_scene = next((s for s in scenes if s.n_objects == args.mem_objects), None) or make_scene(
                args.mem_objects, args.seed
            )
            _say(f"bench: memory run, {args.mem_frames} frames ...")
            memory = memory_run(mem_method, mem_scene, args.mem_frames)
            memory["what"] = what
        results.memory = memory

        load_results: list[Any] = []
        load_notes: list[str] = []
        if args.load_seconds > 0:
            from .bench_load import run_load_test

            load_scene = make_network_scene(args.category, args.load_objects, args.seed)
            load_before = load_average()
            load_results, load_notes = run_load_test(
                load_scene.msgs, args.load_rates, args.load_seconds, files.onnx.parent, args.category,
                out_dir / "load_test", progress=_say,
            )
            load_notes.append(f"load average (1/5/15 min) before {load_before}, after {load_average()}")

        # ---- report --------------------------------------------------------------------------------
        import cse_pose_ros

        total_s = time.perf_counter() - t_start
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        except OSError:
            pass
        ours_methods = [m for m in methods if isinstance(m, NodeMethod)]
        mesh_faces = "/".join(sorted({str(m.mesh_faces) for m in ours_methods})) or "no"
        header = [
            f"cse_pose bench {datetime.datetime.now().isoformat(timespec='seconds')}  host {platform.node()}",
            f"CPU: {cpu}, {os.cpu_count()} logical cores; load average (1/5/15 min) at start {load0}, "
            f"at end {load_average()}",
            f"host speed (one thread, min of 3; lower is faster): at start {gauge0}; at end {host_gauge()}",
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"onnxruntime {onnxruntime.__version__} "
            f"(providers {', '.join(available_providers())}), torch {torch.__version__}; {blas}",
            f"cse_pose_ros from {Path(cse_pose_ros.__file__).parent}",
            f"frames: {WIDTH}x{HEIGHT}, f={F_PX:.0f} px, {' and '.join(map(str, args.objects))} object(s), "
            f"boxes {OBJECT_SCALE_M * 100:.0f}x canonical (8x12x7 cm) at 0.6-0.75 m, depth 16UC1, mask mono8",
            f"our weights: {files.weights}",
            "input 'oracle': select/solve get "
            + (
                f"oracle (exact) correspondences with {args.outlier_ratio:.0%} outlier cells and "
                f"{args.match_noise} canonical noise (the network still runs and is timed; the oracle's own run "
                "is excluded), on the box frames above"
                if args.correspondences == "oracle"
                else "the network's own outputs on the box frames above"
                + (" (random weights: RANSAC worst case)" if not files.weights.startswith("trained") else "")
            ),
            *(
                [
                    "input 'network': the network's own outputs on held-out frames (cse_train.data.synthetic "
                    f"test split, {args.category}, 640x480; 1 object: a test scene with its clutter; 2-5: the "
                    "same scene with copies of the object instead of the clutter, two beside it, two in a row "
                    "behind)"
                ]
                if net_labels
                else []
            ),
            *([f"INT8 model: {int8_note}"] if net_labels else []),
            f"timed frames: {args.frames} per method and scene"
            + (f" ({args.ref_frames} for the reference, spread over the run)" if ref_label else "")
            + f"; methods interleaved frame by frame; warm-up {args.warmup} "
            f"(TorchScript {args.torch_warmup})",
            "Python GC: "
            + (
                "gc.freeze() after set-up (the node's heap lacks torch and the peer)"
                if not args.no_gc_freeze
                else "not frozen"
            ),
            "node path: an in-process PoseNode per row (parameter defaults) fed each frame through its frame "
            "callback; publish = its PoseStamped, PoseArray, TF and Detection3DArray (rclpy publish, Fast DDS, "
            f"no subscriber); row '{MARKERS_LABEL}': the same with a ~/markers subscriber, so the node also "
            f"builds and publishes the MarkerArray (box, axes, mesh of {mesh_faces} triangles, label); "
            "diagnostics ~1 Hz on the node's timer (not spun here)",
            *labels_info,
            *(f"skipped {s}" for s in skipped),
        ]
        results.header = header
        print("\n".join(header))
        print()
        labels = [m.label for m in methods]
        print(format_table(results, labels, args.objects))
        from cse_pose.pipeline import PipelineParams

        defaults = PipelineParams()
        print(
            "(ms; select = confidence threshold + pixel selection, lift = back-projection, pose = box and "
            "published pose, verify = render-and-compare pose verification (row 'verify' only), refine = ICP "
            f"against the observed depth (node default refine_categories: {', '.join(defaults.refine_categories)}) "
            f"and the box measured on it (measure_size_categories: {', '.join(defaults.measure_size_categories)}), "
            "publish = the node's message build and publish; e2e = the node's whole frame callback; "
            "'-' = no such stage)"
        )
        if ref_label:
            print()
            print("speed-up (reference p50 / ours p50):")
            for line in speedups(results, ours, ref_label, args.objects):
                print("  " + line)
        if memory:
            print()
            gpu = ""
            if memory.get("gpu_growth_mib") is not None:
                gpu = (
                    f"; GPU memory {memory['gpu_at_checkpoint_mib']:.0f} -> {memory['gpu_end_mib']:.0f} MiB "
                    f"({memory['gpu_growth_mib']:+.1f} MiB)"
                )
            growth = memory.get("rss_growth_mib")
            print(
                f"memory ({memory['label']}, {memory['objects']} object, {memory['frames']} frames "
                "through the "
                f"node path in {memory['seconds']:.0f} s, {memory['what']}):"
            )
            if growth is not None:
                print(
                    f"  RSS after {memory['checkpoint']} frames "
                    f"{memory['rss_at_checkpoint_mib']:.1f} MiB, after "
                    f"{memory['frames']} {memory['rss_end_mib']:.1f} MiB: growth {growth:+.2f} MiB{gpu}"
                )
            else:
                print(
                    f"  RSS after {memory['frames']} frames {memory['rss_end_mib']:.1f} MiB "
                    "(fewer frames than "
                    f"the {memory['checkpoint']}-frame checkpoint: no growth figure)"
                )
        if NET_FP32 in net_labels and NET_INT8 in net_labels:
            print()
            print("int8 / fp32 on the network rows (p50, same run):")
            for n in args.network_objects:
                parts = []
                for stage in ("model", "solve", E2E):
                    a, b = results.stat(NET_INT8, n, stage)[0], results.stat(NET_FP32, n, stage)[0]
                    if np.isfinite(a) and np.isfinite(b) and b > 0:
                        parts.append(f"{stage} {a:.1f}/{b:.1f} ms = x{a / b:.2f}")
                print(f"  {n} object(s): " + ", ".join(parts))
        if load_results:
            from .bench_load import format_load_table

            print()
            print(
                f"load test: {args.load_objects} objects per frame ({args.category} network, held-out frame), "
                f"{args.load_seconds:.0f} s per camera rate, over DDS into a node process (defaults); "
                "latency = pose arrival - frame stamp; stale = synchronised frames the node replaced by a newer "
                "one before serving them (diagnostics frames_dropped_stale); node CPU = the node process's CPU "
                "time while sending / sending time (200% = both cores)"
            )
            for note in load_notes:
                print("  " + note)
            print(format_load_table(load_results))
            for r in load_results:
                ms = r.node_ms
                print(
                    f"  node at {r.rate_hz:.0f} Hz: p50 per frame total {ms.get('total', float('nan')):.0f} ms, "
                    f"model {ms.get('model', float('nan')):.0f} ms, solve {ms.get('solve', float('nan')):.0f} ms "
                    f"(its diagnostics, last {r.node_counts.get('frames_processed', 0)} frames or fewer)"
                )
        node_label = next((lb for lb in ours if lb.endswith("ort-trt")), None) or next(
            (lb for lb in ours if lb.endswith("ort-cpu")), ours[0] if ours else None
        )
        if node_label:
            print()
            node_file = ours_files.get(node_label)
            net_label = (NET_INT8 if NET_INT8 in net_labels and node_file is not None
                         and node_file.name.endswith(".int8.onnx") else NET_FP32)
            print(f"targets (2-core CPU, quiet machine; the frame targets on '{net_label}' (the file the node runs "
                  f"by default) where the bench has network frames, else on '{node_label}'):")
            for line in target_lines(results, node_label, ref_label, memory, load_results, net_label):
                print("  " + line)
        print()
        print(
            f"bench: total {total_s:.0f} s (table {table_s:.0f} s"
            + (f", memory {memory['seconds']:.0f} s" if memory else "")
            + ")"
        )
        if args.json is not None:
            payload = {
                "header": header,
                "samples": {f"{k[0]}|{k[1]}": v for k, v in results.samples.items()},
                "memory": memory,
                "inputs": results.inputs,
                "load_test": [dict(r.row(), node_ms=r.node_ms, node_counts=r.node_counts) for r in load_results],
                "total_s": total_s,
            }
            args.json.write_text(json.dumps(payload, indent=1, default=float))
    finally:
        if not args.no_gc_freeze:
            import gc

            gc.unfreeze()
        for m in methods:
            if isinstance(m, NodeMethod):
                m.close()
        ros.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
