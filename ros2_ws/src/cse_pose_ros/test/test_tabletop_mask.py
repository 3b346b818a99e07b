"""``tabletop_mask_node`` (cse_pose_ros.tabletop_mask): its parameters, and the node over real DDS."""

from __future__ import annotations

import os
from dataclasses import fields

import numpy as np
import pytest

from cse_pose.tabletop import PARAM_HELP, TabletopParams
from cse_pose_dev.oracle import mask_iou as iou
from cse_pose_dev.oracle import table_scene
from cse_pose_ros.tabletop_mask import params_from_values

pytest.importorskip("open3d")


def test_every_parameter_is_documented_and_validated():
    assert {f.name for f in fields(TabletopParams)} == set(PARAM_HELP)
    for bad in ({"min_depth_m": 3.0, "max_depth_m": 2.0}, {"grow_height_m": 0.02}, {"plane_stride_px": 0},
                {"min_plane_fraction": 1.5}, {"bridge_px": -1}):
        with pytest.raises(ValueError):
            TabletopParams(**bad)
    params, encoding, category = params_from_values({"category": "mug", "mask_encoding": "mono16",
                                                     "max_instances": 1000, "log_throttle_s": 1.0})
    assert (params.max_instances, encoding, category) == (1000, "mono16", "mug")
    for bad in ({"category": "chair"}, {"mask_encoding": "rgb8"},
                {"mask_encoding": "mono8", "max_instances": 300}):
        with pytest.raises(ValueError):
            params_from_values(bad)


# ---------------------------------------------------------------------------------------------------
# the node over real DDS (a separate process)
# ---------------------------------------------------------------------------------------------------
DOMAIN_ID = 92 + os.getpid() % 10
NAMESPACE = f"/cse_tt_{os.getpid()}"


def test_node_publishes_masks_with_the_depth_stamps(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from sensor_msgs.msg import CameraInfo, Image

    from cse_pose_dev.ros_io import frame_messages, ros_env, spin_until, start_node, stop_process
    from cse_pose_ros.conversions import image_to_numpy

    os.environ.update({k: v for k, v in ros_env(DOMAIN_ID).items()
                       if k in ("RMW_IMPLEMENTATION", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    depth, K, gt = table_scene(320, 240, noise_mm_at_1m=3.0)
    log = tmp_path / "tabletop.log"
    proc = start_node(["-r", f"__ns:={NAMESPACE}", "-p", "category:=mug", "-p", "mask_encoding:=mono8"],
                      ros_env(DOMAIN_ID), log, module="cse_pose_ros.tabletop_mask")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = rclpy.create_node("tabletop_probe", context=ctx, namespace=NAMESPACE)
    received: list = []
    try:
        pub_depth = node.create_publisher(Image, "depth/image", 10)
        pub_info = node.create_publisher(CameraInfo, "depth/camera_info", 10)
        node.create_subscription(Image, "mask/image", received.append, 10)
        assert spin_until(node, lambda: pub_depth.get_subscription_count() > 0
                          and pub_info.get_subscription_count() > 0 and node.count_publishers(
                              f"{NAMESPACE}/mask/image") > 0, 20.0), \
            f"the node never subscribed; log:\n{log.read_text() if log.exists() else ''}"
        stamps = [1000.0 + 0.1 * i for i in range(5)]
        for stamp in stamps:
            rgb = np.zeros((*depth.shape, 3), np.uint8)
            _, depth_msg, _, info_msg = frame_messages(rgb, depth, gt, K, stamp)
            pub_info.publish(info_msg)
            spin_until(node, lambda: False, 0.05)
            pub_depth.publish(depth_msg)
            before = len(received)
            spin_until(node, lambda before=before: len(received) > before, 3.0)
        assert proc.poll() is None, log.read_text()
        assert len(received) >= 3, f"{len(received)} masks; log:\n{log.read_text()}"
        got = {m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in received}
        assert all(min(abs(g - s) for s in stamps) < 1e-6 for g in got)  # the depth frames' own stamps
        msg = received[-1]
        assert msg.encoding == "mono8" and msg.header.frame_id == "camera_color_optical_frame"
        mask = image_to_numpy(msg, "mask")
        assert set(np.unique(mask)) == {0, 1, 2, 3}
        for k in (1, 2, 3):
            assert iou(mask == k, gt == k) > 0.9
    finally:
        node.destroy_node()
        ctx.try_shutdown()
        stop_process(proc)
