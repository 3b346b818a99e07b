"""Python ``logging`` records of the ROS-free packages reach the node's logger and /rosout (log_bridge)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from cse_pose_ros.log_bridge import RosLogHandler, forward_python_logging, stop_forwarding


class _FakeRosLogger:
    """Records (child name, severity, text) like an rclpy logger would print them."""

    def __init__(self, name: str = "node", sink: list | None = None) -> None:
        self.name, self.sink = name, sink if sink is not None else []

    def get_child(self, name: str) -> _FakeRosLogger:
        return _FakeRosLogger(f"{self.name}.{name}", self.sink)

    def __getattr__(self, severity: str):
        if severity not in ("debug", "info", "warning", "error"):
            raise AttributeError(severity)
        return lambda text: self.sink.append((self.name, severity, text))


def test_severity_child_name_and_rate_limit_per_message_template():
    ros = _FakeRosLogger()
    handler = RosLogHandler(ros, throttle_s=60.0)
    py = logging.getLogger("cse_pose.test_bridge")
    py.addHandler(handler)
    py.setLevel(logging.DEBUG)
    py.propagate = False
    try:
        for i in range(5):
            py.warning("instance %d failed", i)  # one template: one line per period
        py.error("model %s failed", "mug")
        py.info("ready")
        try:
            raise ValueError("bad crop")
        except ValueError:
            py.exception("unexpected")
    finally:
        py.removeHandler(handler)
    assert ros.sink[0] == ("node.cse_pose_test_bridge", "warning", "instance 0 failed")
    assert [s for _, s, _ in ros.sink] == ["warning", "error", "info", "error"]
    assert ros.sink[-1][2] == "unexpected (ValueError: bad crop)"
    handler.throttle_s = 0.0  # no rate limit: every record is forwarded
    py.addHandler(handler)
    try:
        py.warning("instance %d failed", 7)
        py.warning("instance %d failed", 8)
    finally:
        py.removeHandler(handler)
    assert [t for _, _, t in ros.sink[-2:]] == ["instance 7 failed", "instance 8 failed"]


def test_pipeline_records_reach_rosout():
    rclpy = pytest.importorskip("rclpy")
    from rcl_interfaces.msg import Log

    from cse_pose.pipeline import LOG as pipeline_log
    from cse_pose_dev.ros_io import spin_until

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=40 + os.getpid() % 20)
    node = rclpy.create_node("bridge_probe", context=ctx, namespace=f"/bridge_{os.getpid()}")
    got: list = []
    propagate_before = logging.getLogger("cse_pose").propagate
    handler = forward_python_logging("cse_pose", node.get_logger(), throttle_s=0.0)
    try:
        node.create_subscription(Log, "/rosout", got.append, 50)
        marker = f"bridge check {time.time_ns()}"

        def arrived() -> bool:
            pipeline_log.warning(marker)
            return any(marker in m.msg for m in got)

        assert spin_until(node, arrived, 10.0), "no /rosout message from the cse_pose.pipeline logger"
        msg = next(m for m in got if marker in m.msg)
        assert msg.level == Log.WARN and msg.name.endswith("cse_pose_pipeline")
    finally:
        stop_forwarding("cse_pose", handler)
        node.destroy_node()
        ctx.try_shutdown()
    assert logging.getLogger("cse_pose").propagate == propagate_before  # restored
