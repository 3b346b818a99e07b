"""Bad input never crashes the node; each problem is named in diagnostics and logged, good frames go on.

Over real DDS (the node as a separate ``python -m cse_pose_ros`` process): every bad case of the issue,
interleaved with good oracle frames; then a corrupt model file. In-process (the node object, callbacks
called directly): a model whose inference raises, and runtime parameter changes.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from cse_pose_dev.oracle import (
    DEFAULT_EXTENTS,
    default_intrinsics,
    random_rotation,
    render_oracle_frame,
    write_oracle_model,
)
from cse_pose_dev.ros_io import (
    frame_messages,
    probe_node,
    ros_env,
    spin_until,
    start_node,
    stop_process,
    time_msg,
)

DOMAIN_ID = 62 + os.getpid() % 30  # one DDS domain per test module (test_node_integration: 32..61)
NAMESPACE = f"/cse_bad_{os.getpid()}"
W, H = 160, 120
K = default_intrinsics(W, H, 150.0)
FRAME_ID = "cam"
INPUTS = ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")


def _render(seed: int, background_depth_m: float = 0.0):
    rng = np.random.default_rng(seed)
    R = random_rotation(rng)
    t = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.02), rng.uniform(0.5, 0.7)])
    size = rng.uniform(0.05, 0.07) * np.asarray(DEFAULT_EXTENTS)
    rgb, depth, mask = render_oracle_frame(R, t, size, K, W, H, background_depth_m=background_depth_m)
    return rgb, depth, mask.astype(np.uint8)


# --- the bad cases: (name, expected diagnostics key(s), builder(seed, stamp) -> list of (input, msg)) ---------
def _good(seed, stamp):
    return list(zip(INPUTS, frame_messages(*_render(seed), K, stamp, FRAME_ID), strict=True))


def _modify(seed, stamp, index, change, **kwargs):
    msgs = list(frame_messages(*_render(seed), K, stamp, FRAME_ID, **kwargs))
    change(msgs[index])
    return list(zip(INPUTS, msgs, strict=True))


def _set(**fields):
    def change(msg):
        for k, v in fields.items():
            setattr(msg, k, v)
    return change


def _depth32(seed, stamp, fill):
    rgb, depth, mask = _render(seed)
    return list(zip(INPUTS, frame_messages(rgb, np.full_like(depth, fill), mask, K, stamp, FRAME_ID,
                                           depth_encoding="32FC1"), strict=True))


def _size_mismatch(seed, stamp):
    rgb, depth, mask = _render(seed)
    small = frame_messages(rgb[::2, ::2], depth[::2, ::2], mask[::2, ::2], K, stamp, FRAME_ID)
    good = frame_messages(rgb, depth, mask, K, stamp, FRAME_ID)
    return list(zip(INPUTS, (good[0], good[1], small[2], good[3]), strict=True))


def _truncated(msg):
    msg.data = bytes(msg.data)[: len(msg.data) // 2]


def _empty_mask(seed, stamp):
    rgb, depth, mask = _render(seed)
    return list(zip(INPUTS, frame_messages(rgb, depth, np.zeros_like(mask), K, stamp, FRAME_ID), strict=True))


def _mask_on_invalid_depth(seed, stamp):
    rgb, depth, mask = _render(seed, background_depth_m=1.5)
    depth = np.where(mask > 0, 0.0, depth)  # valid depth everywhere except under the object
    return list(zip(INPUTS, frame_messages(rgb, depth, mask, K, stamp, FRAME_ID), strict=True))


def _zero_focal(msg):
    k = list(msg.k)
    k[0] = 0.0
    msg.k = k


def _no_camera_info(seed, stamp):
    return _good(seed, stamp)[:3]


def _stamps_apart(seed, stamp):
    from std_msgs.msg import Header

    msgs = _good(seed, stamp)
    # depth half a second older than the rest: a header of its own (the four messages share one Header
    # object, so setting msgs[1][1].header.stamp would move every stamp)
    msgs[1][1].header = Header(stamp=time_msg(stamp - 0.5), frame_id=FRAME_ID)
    return msgs


def _garbage_rgb(seed, stamp):
    rgb, depth, mask = _render(seed)
    noise = np.random.default_rng(seed).integers(0, 256, rgb.shape, dtype=np.uint8)
    return list(zip(INPUTS, frame_messages(noise, depth, mask, K, stamp, FRAME_ID), strict=True))


BAD_CASES = [
    ("unknown encoding", ["skip.unknown_encoding"], lambda s, t: _modify(s, t, 0, _set(encoding="yuv_what"))),
    ("image/mask size mismatch", ["skip.size_mismatch"], _size_mismatch),
    ("step inconsistent with width", ["skip.bad_step"], lambda s, t: _modify(s, t, 0, _set(step=W * 3 - 1))),
    ("truncated data", ["skip.truncated_data"], lambda s, t: _modify(s, t, 1, _truncated)),
    ("all-NaN depth", ["skip.no_valid_depth"], lambda s, t: _depth32(s, t, np.nan)),
    ("all-zero depth", ["skip.no_valid_depth"], lambda s, t: _depth32(s, t, 0.0)),
    ("negative depth", ["skip.no_valid_depth"], lambda s, t: _depth32(s, t, -1.0)),
    ("empty mask", ["skip.empty_mask"], _empty_mask),
    ("mask only on invalid depth", ["skip.invalid_depth"], _mask_on_invalid_depth),
    ("zero focal length", ["skip.bad_camera_info"], lambda s, t: _modify(s, t, 3, _zero_focal)),
    ("missing camera_info", ["sync_dropped.rgb/image"], _no_camera_info),
    ("stamps too far apart", ["sync_dropped.depth/image"], _stamps_apart),
    ("garbage colours (low score)", ["skip.low_quality", "skip.degenerate_geometry"], _garbage_rgb),
]


@pytest.fixture(scope="module")
def ros():
    pytest.importorskip("rclpy")
    with probe_node("bad_input_probe", DOMAIN_ID, NAMESPACE) as node:
        yield node


def _io(node, ns: str):
    """Input publishers and collected outputs of the node in namespace ``ns``."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    types = (Image, Image, Image, CameraInfo)
    pubs = {name: node.create_publisher(t, f"{ns}/{name}", qos_profile_sensor_data)
            for t, name in zip(types, INPUTS, strict=True)}
    poses: list = []
    diags: list = []
    sub = node.create_subscription(PoseStamped, f"{ns}/cse_pose_node/pose", poses.append, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
        s for s in m.status if s.name == f"{ns}/cse_pose_node: pose pipeline"), 100)
    return pubs, sub, poses, diags


def _stamp_key(stamp) -> tuple[int, int]:
    return stamp.sec, stamp.nanosec


def test_bad_frames_interleaved_with_good_ones(ros, tmp_path):
    from cse_pose_ros.diagnostics import status_values

    write_oracle_model(tmp_path / "models" / "mug.onnx", "mug", crop_size=128, grid_size=32)
    log = tmp_path / "node.log"
    ns = f"{NAMESPACE}/a"
    # every frame is another random scene: ~/pose must not follow one object across them (radius 0)
    proc = start_node(["-r", f"__ns:={ns}", "-p", f"model_dir:={tmp_path / 'models'}",
                       "-p", "diagnostics_period_s:=0.3", "-p", "log_throttle_s:=30.0",
                       "-p", "pose_follow_radius_m:=0.0"], ros_env(DOMAIN_ID), log)
    try:
        pubs, sub, poses, diags = _io(ros, ns)
        assert spin_until(ros, lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                          and sub.get_publisher_count() > 0 and diags, 30.0), log.read_text()[-2000:]
        good, bad, order = set(), {}, {}
        stamp = time.time()
        frame = 0
        previous = "start"
        for name, _keys, build in BAD_CASES + [(None, None, None)]:
            for kind in ("good", "bad") if name else ("good", "good"):
                stamp += 0.25
                frame += 1
                msgs = _good(frame, stamp) if kind == "good" else build(frame, stamp)
                key = _stamp_key(msgs[0][1].header.stamp)
                order[key] = f"{kind} frame after {previous}"
                if kind == "good":
                    good.add(key)
                else:
                    bad[key] = name
                previous = name if kind == "bad" else previous
                for topic, msg in msgs:
                    pubs[topic].publish(msg)
                spin_until(ros, lambda: False, 0.12)
        spin_until(ros, lambda: good <= {_stamp_key(p.header.stamp) for p in poses}, 10.0)
        n = len(diags)
        spin_until(ros, lambda: len(diags) > n + 1, 3.0)
        alive = proc.poll() is None
    finally:
        stop_process(proc)
    text = log.read_text()
    assert alive, text[-3000:]
    got = {_stamp_key(p.header.stamp) for p in poses}
    assert good <= got, f"good frames without a pose: {sorted(order[k] for k in good - got)}\n{text[-3000:]}"
    assert not (got & set(bad)), f"bad frames with a pose: {[bad[k] for k in got & set(bad)]}"
    values = status_values(diags[-1])
    for name, keys, _ in BAD_CASES:
        assert any(int(values.get(k, 0)) > 0 for k in keys), f"{name}: none of {keys} in {values}"
    assert int(values["skip.no_valid_depth"]) == 3
    assert int(values["frames_processed"]) >= len(good)
    for reason in ("unknown_encoding", "size_mismatch", "bad_step", "truncated_data", "no_valid_depth",
                   "empty_mask", "invalid_depth", "bad_camera_info", "unsynchronized"):
        assert f"[{reason}]" in text, f"no log line names {reason}"
    assert text.count("[no_valid_depth]") == 1, "the three no_valid_depth frames must give one log line"
    assert "Traceback" not in text


def test_corrupt_model_keeps_node_up_with_error_diagnostics(ros, tmp_path):
    from cse_pose_ros.diagnostics import level_of, status_values

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mug.onnx").write_bytes(b"definitely not a protobuf" * 10)
    log = tmp_path / "node.log"
    ns = f"{NAMESPACE}/b"
    proc = start_node(["-r", f"__ns:={ns}", "-p", f"model_dir:={tmp_path / 'models'}",
                       "-p", "diagnostics_period_s:=0.3"], ros_env(DOMAIN_ID), log)
    try:
        pubs, sub, poses, diags = _io(ros, ns)
        assert spin_until(ros, lambda: all(p.get_subscription_count() > 0 for p in pubs.values()) and diags,
                          30.0), log.read_text()[-2000:]
        stamp = time.time()
        for i in range(3):
            for topic, msg in _good(i, stamp + 0.2 * i):
                pubs[topic].publish(msg)
            spin_until(ros, lambda: False, 0.2)
        n = len(diags)
        spin_until(ros, lambda: len(diags) > n + 1, 3.0)
        alive = proc.poll() is None
    finally:
        stop_process(proc)
    text = log.read_text()
    assert alive, text[-3000:]
    assert not poses
    status = diags[-1]
    assert level_of(status) == 2 and "no model" in status.message
    values = status_values(status)
    assert "mug.onnx" in values["model_error"] and int(values["skip.no_model"]) == 3
    assert "Traceback" not in text and text.count("ERROR") >= 1 and "mug.onnx" in text


# ---------------------------------------------------------------------------------------------------
# in-process: inference raising, runtime parameters
# ---------------------------------------------------------------------------------------------------
class _Flaky:
    """Wraps a loaded model; ``run`` raises while ``fail`` is set (a crashing runtime)."""

    fail = False

    def __init__(self, inner):
        self.inner, self.info, self.name = inner, inner.info, inner.name

    def run(self, rgb, mask):
        if _Flaky.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return self.inner.run(rgb, mask)


def test_missing_model_in_process(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from cse_pose_ros.node import PoseNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = PoseNode(context=ctx, parameter_overrides=[Parameter("model_dir", value=str(tmp_path / "nothing"))])
    try:
        node._on_frame(*frame_messages(*_render(1), K, 10.0, FRAME_ID))
        node._publish_diagnostics()
        assert node.stats.reasons["no_model"] == 1 and node.stats.processed == 0
        assert "does not exist" in node._model_error
    finally:
        node.destroy_node()
        ctx.try_shutdown()


@pytest.fixture()
def inproc_node(tmp_path, monkeypatch):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    import cse_pose_ros.node as node_module

    write_oracle_model(tmp_path / "mug.onnx", "mug", crop_size=128, grid_size=32)
    real_load = node_module.load_model
    monkeypatch.setattr(node_module, "load_model",
                        lambda path, backend, **kw: _Flaky(real_load(path, backend, **kw)))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = node_module.PoseNode(context=ctx, parameter_overrides=[Parameter("model_dir", value=str(tmp_path))])
    try:
        yield node
    finally:
        _Flaky.fail = False
        node.destroy_node()
        ctx.try_shutdown()


def test_inference_raising_skips_the_instance_and_the_next_frame_is_served(inproc_node):
    node = inproc_node
    node._on_frame(*frame_messages(*_render(1), K, 10.0, FRAME_ID))
    assert node.stats.poses_published == 1
    _Flaky.fail = True
    node._on_frame(*frame_messages(*_render(2), K, 10.1, FRAME_ID))
    assert node.stats.reasons["model_error"] == 1 and node.stats.poses_published == 1
    _Flaky.fail = False
    node._on_frame(*frame_messages(*_render(3), K, 10.2, FRAME_ID))
    assert node.stats.poses_published == 2 and node.stats.received == 3


def test_runtime_parameter_changes(inproc_node):
    from rclpy.parameter import Parameter

    node = inproc_node
    ok, ro, bad = node.set_parameters([Parameter("min_quality", value=0.99),
                                       Parameter("model_dir", value="/elsewhere"),
                                       Parameter("min_depth_m", value=4.5)])
    assert ok.successful and not ro.successful and not bad.successful
    assert "read-only" in ro.reason and "max_depth_m" in bad.reason
    node._on_frame(*frame_messages(*_render(4), K, 11.0, FRAME_ID))  # oracle quality ~0.6-0.8 < 0.99
    assert node.stats.poses_published == 0 and node.stats.reasons["low_quality"] == 1
    assert node.set_parameters([Parameter("min_quality", value=0.1)])[0].successful
    node._on_frame(*frame_messages(*_render(4), K, 11.1, FRAME_ID))
    assert node.stats.poses_published == 1
    assert node.set_parameters([Parameter("smoothing_alpha", value=0.5)])[0].successful
    node._on_frame(*frame_messages(*_render(5), K, 11.2, FRAME_ID))
    assert node.stats.poses_published == 2


def test_icp_refinement_runs_for_the_listed_categories_and_keeps_an_exact_pose_exact(inproc_node, monkeypatch):
    pytest.importorskip("open3d")
    from rclpy.parameter import Parameter

    import cse_pose.pipeline as pipeline_module

    node = inproc_node
    published, refined = [], []
    monkeypatch.setattr(node._pub_pose, "publish", published.append)
    real_refine = pipeline_module.refine_pose
    monkeypatch.setattr(pipeline_module, "refine_pose", lambda *a, **k: refined.append(1) or real_refine(*a, **k))
    rng = np.random.default_rng(7)
    R, t = random_rotation(rng), np.array([0.01, -0.01, 0.6])
    size = 0.06 * np.asarray(DEFAULT_EXTENTS)
    rgb, depth, mask = render_oracle_frame(R, t, size, K, W, H)
    msgs = frame_messages(rgb, depth, mask.astype(np.uint8), K, 12.0, FRAME_ID)
    assert node.set_parameters([Parameter("refine_categories", value="can")])[0].successful
    node._on_frame(*msgs)
    assert refined == []  # the model is a mug: not refined
    assert not node.set_parameters([Parameter("refine_categories", value="cup")])[0].successful
    assert node.set_parameters([Parameter("refine_categories", value="can, mug")])[0].successful
    node._on_frame(*msgs)
    assert len(refined) == 1 and len(published) == 2
    p0, p1 = (np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]) for m in published)
    assert np.linalg.norm(p0 - t) < 0.005 and np.linalg.norm(p1 - t) < 0.005
    assert node.stats.latency_p50_ms()["refine"] > 0.0


def test_a_missing_open3d_makes_the_import_check_report_false(inproc_node, monkeypatch):
    node = inproc_node
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d -> ImportError
    assert node._import_open3d() is False


def test_threads_reach_the_session_and_the_mesh_marker_is_decimated(tmp_path, monkeypatch):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter
    from visualization_msgs.msg import Marker

    from cse_pose_ros.node import PoseNode

    write_oracle_model(tmp_path / "mug.onnx", "mug", crop_size=128, grid_size=32)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = PoseNode(context=ctx, parameter_overrides=[Parameter("model_dir", value=str(tmp_path)),
                                                      Parameter("intra_op_threads", value=2)])
    try:
        model = node._models["mug"]
        assert model._session.get_session_options().intra_op_num_threads == 2
        full = np.asarray(model.info.faces)
        published = []
        monkeypatch.setattr(node._pub_markers, "get_subscription_count", lambda: 1)
        monkeypatch.setattr(node._pub_markers, "publish", published.append)
        msgs = frame_messages(*_render(6), K, 13.0, FRAME_ID)
        node._on_frame(*msgs)
        assert node.set_parameters([Parameter("mesh_marker_max_faces", value=10)])[0].successful
        node._on_frame(*msgs)
        meshes = [[m for m in arr.markers if m.type == Marker.TRIANGLE_LIST] for arr in published]
        assert [len(m) for m in meshes] == [1, 1]
        assert len(meshes[0][0].points) == 3 * len(full)  # the oracle box (12 triangles) is under 300
        assert 0 < len(meshes[1][0].points) <= 30 and len(meshes[1][0].points) % 3 == 0
        assert node.stats.poses_published == 2
    finally:
        node.destroy_node()
        ctx.try_shutdown()
