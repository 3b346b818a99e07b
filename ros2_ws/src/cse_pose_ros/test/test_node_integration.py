"""The node over real DDS: a separate ``python -m cse_pose_ros`` process answers 30 oracle frames.

The oracle model (``cse_pose_dev.oracle``) reads canonical coordinates from NOCS colours, so the true
pose of every rendered box is recoverable and the published poses can be checked against it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from cse_pose.core.metrics import rotation_error_deg
from cse_pose.core.rotation import matrix_from_quaternion
from cse_pose_dev.oracle import (
    DEFAULT_EXTENTS,
    default_intrinsics,
    random_rotation,
    render_oracle_frame,
    write_oracle_model,
)
from cse_pose_dev.ros_io import frame_messages, probe_node, ros_env, spin_until, start_node, stop_process

DOMAIN_ID = 32 + os.getpid() % 30  # one DDS domain per test module (see test_node_bad_input: 62..91)
NAMESPACE = f"/cse_it_{os.getpid()}"  # and a private namespace, in case another run shares the domain
W, H = 320, 240
N_FRAMES = 30
FRAME_ID = "test_camera_optical_frame"


# ---------------------------------------------------------------------------------------------------
# the node process over DDS
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    """rclpy context on the module's domain (localhost discovery), torn down at the end."""
    pytest.importorskip("rclpy")
    with probe_node("integration_probe", DOMAIN_ID, NAMESPACE) as node:
        yield node


@pytest.fixture(scope="module")
def pose_node(tmp_path_factory):
    """The node as a separate process with the oracle model; always stopped."""
    tmp = tmp_path_factory.mktemp("it")
    write_oracle_model(tmp / "models" / "mug.onnx", "mug", crop_size=128, grid_size=32)
    log = tmp / "node.log"
    # every frame is another random pose (not one object moving): ~/pose follows no object (radius 0)
    proc = start_node(["-r", f"__ns:={NAMESPACE}", "-p", f"model_dir:={tmp / 'models'}",
                       "-p", "publish_debug_image:=true", "-p", "diagnostics_period_s:=0.5",
                       "-p", "pose_follow_radius_m:=0.0"], ros_env(DOMAIN_ID), log)
    try:
        yield proc, log
    finally:
        stop_process(proc)


def _frames(n: int, seed: int = 0):
    """n oracle frames (rgb, depth, mask, K, R, t, size) of one box at random poses in view (box 6-14 cm)."""
    rng = np.random.default_rng(seed)
    K = default_intrinsics(W, H, 300.0)
    out = []
    for _ in range(n):
        R = random_rotation(rng)
        t = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04), rng.uniform(0.45, 0.8)])
        size = rng.uniform(0.04, 0.07) * np.asarray(DEFAULT_EXTENTS)  # the oracle's shape, scaled
        rgb, depth, mask = render_oracle_frame(R, t, size, K, W, H)
        out.append((rgb, depth, mask.astype(np.uint8), K, R, t, size))
    return out


def test_node_answers_every_frame_over_dds(ros, pose_node):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseArray, PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from cse_pose_ros.diagnostics import status_values

    proc, log = pose_node
    node = ros
    t_start = time.monotonic()
    frames = _frames(N_FRAMES)
    inputs = [node.create_publisher(t, name, qos_profile_sensor_data) for t, name in
              zip((Image, Image, Image, CameraInfo), ("rgb/image", "depth/image", "mask/image", "rgb/camera_info"),
                  strict=True)]
    poses: list = []
    arrays: list = []
    markers: list = []
    debug: list = []
    diags: list = []
    out = "cse_pose_node/"
    subs = [node.create_subscription(PoseStamped, out + "pose", poses.append, 50),
            node.create_subscription(PoseArray, out + "poses", arrays.append, 50),
            node.create_subscription(MarkerArray, out + "markers", markers.append, 50),
            node.create_subscription(Image, out + "debug_image", debug.append, 50)]
    ours = [node.get_fully_qualified_name().rsplit("/", 1)[0] + "/cse_pose_node: pose pipeline"]
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diags.extend(s for s in m.status if s.name in ours), 50)

    # discovery: the node's four subscriptions and our four output subscriptions are matched, and the node
    # spins (one diagnostics message)
    matched = spin_until(node, lambda: all(p.get_subscription_count() > 0 for p in inputs)
                         and all(s.get_publisher_count() > 0 for s in subs) and diags, 30.0)
    assert matched, f"node never matched (alive={proc.poll() is None}):\n{log.read_text()[-2000:]}"

    truth = {}
    stamp0 = time.time()
    for i, (rgb, depth, mask, K, R, t, _size) in enumerate(frames):
        stamp = stamp0 + 0.1 * i
        msgs = frame_messages(rgb, depth, mask, K, stamp, FRAME_ID)
        truth[(msgs[0].header.stamp.sec, msgs[0].header.stamp.nanosec)] = (R, t)
        for pub, msg in zip(inputs, msgs, strict=True):
            pub.publish(msg)
        spin_until(node, lambda: False, 0.1)  # ~10 Hz, serving our subscriptions meanwhile
    spin_until(node, lambda: len(poses) >= N_FRAMES and len(arrays) >= N_FRAMES, 10.0)
    n_before = len(diags)
    spin_until(node, lambda: len(diags) > n_before, 3.0)  # a diagnostics message after the last frame
    elapsed = time.monotonic() - t_start

    assert proc.poll() is None, log.read_text()[-2000:]
    last = status_values(diags[-1]) if diags else {}
    assert len(poses) >= N_FRAMES - 1, f"{len(poses)} poses for {N_FRAMES} frames; diagnostics {last}"
    rot_err, trans_err = [], []
    for msg in poses:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        assert key in truth, "a pose with a stamp that was never sent"
        assert msg.header.frame_id == FRAME_ID
        R_true, t_true = truth[key]
        q = msg.pose.orientation
        rot_err.append(rotation_error_deg(matrix_from_quaternion([q.x, q.y, q.z, q.w]), R_true))
        p = msg.pose.position
        trans_err.append(np.linalg.norm(np.array([p.x, p.y, p.z]) - t_true))
    assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in poses}) == len(poses)  # one per frame
    assert np.median(rot_err) < 1.0 and max(rot_err) < 3.0, rot_err
    assert np.median(trans_err) < 0.005 and max(trans_err) < 0.015, trans_err

    assert markers, "no MarkerArray"
    namespaces = {m.ns for m in markers[-1].markers}
    assert {"mug/box", "mug/axes", "mug/mesh", "mug/label"} <= namespaces
    assert debug and debug[-1].encoding == "rgb8" and debug[-1].header.frame_id == FRAME_ID
    values = status_values(diags[-1])
    assert int(values["frames_processed"]) >= N_FRAMES - 1
    assert int(values["poses_published"]) >= N_FRAMES - 1
    for stage in ("decode", "crop", "model", "select", "solve", "pose", "publish", "total"):
        assert float(values[f"latency_p50_ms.{stage}"]) >= 0.0
    assert "model.mug" in values and diags[-1].level == b"\x00"
    print(f"\n{len(poses)}/{N_FRAMES} poses; rotation error median {np.median(rot_err):.2f} deg, "
          f"translation error median {1e3 * np.median(trans_err):.2f} mm; node p50 total "
          f"{values['latency_p50_ms.total']} ms; test {elapsed:.1f} s")


def test_object_frame_is_looked_up_through_tf2(ros, pose_node):
    """A tf2_ros Buffer + TransformListener (what a robot's planner uses) finds the broadcast object frame."""
    pytest.importorskip("tf2_ros", reason="tf2_ros is not installed")
    from rclpy.duration import Duration
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_ros import Buffer, TransformListener

    proc, log = pose_node
    node = ros
    buffer = Buffer()
    listener = TransformListener(buffer, node, spin_thread=False)
    inputs = [node.create_publisher(t, name, qos_profile_sensor_data) for t, name in
              zip((Image, Image, Image, CameraInfo), ("rgb/image", "depth/image", "mask/image", "rgb/camera_info"),
                  strict=True)]
    assert spin_until(node, lambda: all(p.get_subscription_count() > 0 for p in inputs), 30.0), \
        log.read_text()[-2000:]
    rgb, depth, mask, K, R, t, _size = _frames(1, seed=5)[0]
    child = "cse/mug_1"
    stamp0 = time.time()
    found = False
    for i in range(20):  # the same view at 10 Hz until the listener holds the transform
        for pub, msg in zip(inputs, frame_messages(rgb, depth, mask, K, stamp0 + 0.1 * i, FRAME_ID), strict=True):
            pub.publish(msg)
        spin_until(node, lambda: False, 0.1)
        if buffer.can_transform(FRAME_ID, child, Time()):
            found = True
            break
    try:
        assert found, f"no transform {FRAME_ID} -> {child}; frames known: {buffer.all_frames_as_string()}\n" \
                      f"{log.read_text()[-2000:]}"
        tf = buffer.lookup_transform(FRAME_ID, child, Time(), timeout=Duration(seconds=0.0))
    finally:
        node.destroy_subscription(listener.tf_sub)
        node.destroy_subscription(listener.tf_static_sub)
    assert tf.header.frame_id == FRAME_ID and tf.child_frame_id == child
    p, q = tf.transform.translation, tf.transform.rotation
    assert np.linalg.norm(np.array([p.x, p.y, p.z]) - t) < 0.005
    assert rotation_error_deg(matrix_from_quaternion([q.x, q.y, q.z, q.w]), R) < 2.0
