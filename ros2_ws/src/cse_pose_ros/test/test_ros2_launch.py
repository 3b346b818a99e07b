"""The launch files through a real ``ros2 launch`` in a subprocess, against the source packages registered in a
temporary ament prefix (``cse_pose_dev.ament_prefix``: what ``colcon build --symlink-install`` installs, built
from each package's own ``setup.py``). Skipped with the reason where launch / launch_ros / the ros2 CLI are not
installed (a pip-only environment without the ROS 2 wheels of ``make setup``).

One synthetic bring-up (``launch/synthetic.launch.py``, 640x480 at 10 Hz, namespaced, with a params file that
changes two values) is shared by the tests that need a running system: poses are published, the shipped Fast DDS
profile reaches the processes and the node keeps up with the camera, the params file reaches the namespaced
node, ``ros2 param get/set`` work, and Ctrl-C ends it all with status 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from cse_pose_ros.launch_args import FASTDDS_PROFILE, FASTDDS_PROFILE_VARIABLES, RVIZ_PACKAGE

PKG = Path(__file__).resolve().parents[1]
REPO = PKG.parents[2]
DOMAIN_ID = 2 + (os.getpid() + 11) % 30
NAMESPACE = f"/cse_launch_{os.getpid()}"
NODE = f"{NAMESPACE}/cse_pose_node"
SYNTHETIC_RATE_HZ = 10.0


def _missing() -> list[str]:
    missing = [m for m in ("launch_ros", "ros2launch", "ros2param", "ament_index_python")
               if importlib.util.find_spec(m) is None]
    spec = importlib.util.find_spec("launch")
    if spec is None or spec.origin is None:  # the repo's launch/ folder alone is a namespace package
        missing.append("launch")
    from cse_pose_dev.ros_io import ros2_executable

    if not ros2_executable():
        missing.append("the ros2 command")
    return missing


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """The two packages registered in a temporary ament prefix (symbolic links to the sources)."""
    pytest.importorskip("rclpy")
    missing = _missing()
    if missing:
        reason = f"ros2 launch not runnable here: missing {', '.join(missing)} (install ../shared/ros-wheels: " \
                 "make setup)"
        print(reason)
        pytest.skip(reason)
    from cse_pose_dev.ament_prefix import link_packages

    return link_packages(tmp_path_factory.mktemp("ament") / "install")


def _node_pid(log: Path, name: str) -> int | None:
    m = re.search(rf"\[{name}-\d+\]: process started with pid \[(\d+)\]", log.read_text(errors="replace"))
    return int(m.group(1)) if m else None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# ---------------------------------------------------------------------------------------------------------------
# one synthetic bring-up shared by the tests below
# ---------------------------------------------------------------------------------------------------------------
class System:
    """The running bring-up: the launch process, its log, and a probe node listening to it."""

    def __init__(self, proc, log: Path, env: dict, probe, poses: list, diags: list, rgb_stamps: list) -> None:
        self.proc, self.log, self.env, self.probe = proc, log, env, probe
        self.poses, self.diags, self.rgb_stamps = poses, diags, rgb_stamps

    def spin(self, condition, timeout_s: float) -> bool:
        from cse_pose_dev.ros_io import spin_until

        return spin_until(self.probe, condition, timeout_s)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def synthetic(prefix, tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from cse_pose_dev.ros_io import launch_env, probe_node, stamp_seconds, start_launch, stop_process
    from cse_pose_ros.bringup import SYNTHETIC_NAMESPACE

    tmp = tmp_path_factory.mktemp("synthetic_launch")
    # the shipped params file, with two values changed, as a user's own file (keyed as the shipped one)
    data = yaml.safe_load((PKG / "config" / "pose.yaml").read_text())
    ((key, section),) = data.items()
    section["ros__parameters"].update(model_dir=str(prefix / "share" / "cse_pose_ros" / "models"), min_inliers=21,
                                      diagnostics_period_s=0.5)
    params_file = tmp / "robot_pose.yaml"
    params_file.write_text(yaml.safe_dump({key: section}))
    env = launch_env(DOMAIN_ID, prefix)
    log = tmp / "launch.log"
    proc = start_launch([str(REPO / "launch" / "synthetic.launch.py"), "category:=bottle", "frames:=2",
                         f"rate_hz:={SYNTHETIC_RATE_HZ}", f"namespace:={NAMESPACE}", f"params_file:={params_file}"],
                        env, log, cwd=tmp)  # not the repo root: nothing may depend on the working directory
    try:
        with probe_node("launch_probe", DOMAIN_ID) as probe:
            poses: list = []
            diags: list = []
            rgb_stamps: list = []  # the camera's RGB frames as a second, cheap subscriber receives them
            name = f"{NODE}: pose pipeline"
            probe.create_subscription(PoseStamped, f"{NODE}/pose", poses.append, 50)
            probe.create_subscription(
                DiagnosticArray, "/diagnostics",
                lambda m: diags.extend((m.header.stamp, s) for s in m.status if s.name == name), 50)
            probe.create_subscription(Image, f"{SYNTHETIC_NAMESPACE}/rgb/image",
                                      lambda m: rgb_stamps.append(stamp_seconds(m.header.stamp)),
                                      qos_profile_sensor_data)
            yield System(proc, log, env, probe, poses, diags, rgb_stamps)
    finally:
        stop_process(proc, timeout_s=20.0, group=True)


def test_synthetic_bringup_publishes_poses(synthetic):
    ok = synthetic.spin(lambda: len(synthetic.poses) >= 5, 90.0)
    assert ok, f"{len(synthetic.poses)} poses; launch alive={synthetic.proc.poll() is None}\n{synthetic.text()[-3000:]}"
    assert synthetic.poses[-1].header.frame_id  # the camera's optical frame, carried over from the input
    assert "Traceback" not in synthetic.text()


def test_shipped_fastdds_profile_keeps_up_with_the_10hz_camera(synthetic, prefix):
    """Every process of the launch gets the shipped profile; the camera's 640x480 frames then arrive at its
    10 Hz and the node processes >= 9.5 of them per second (measured 9.86-9.98 Hz on the 2-core machine).

    With Fast DDS's default 512 KiB segment the same bring-up processed 2.0-4.7 Hz with the node busy only 9-30 %
    of the time, and a second subscriber of the RGB topic received 2.2 Hz. The second subscriber's rate is always
    asserted (the transport: at least half the camera's rate); the node's rate too, unless the node was computing
    at least half of the time (rate x median frame time: other processes hold the cores), where the CPU, not
    DDS, sets it (a note)."""
    from cse_pose_dev.ros_io import stamp_seconds
    from cse_pose_ros.diagnostics import status_values

    profile = str(prefix / "share" / "cse_pose_ros" / "config" / FASTDDS_PROFILE)
    assert Path(profile).is_file()
    for name in ("cse_pose_node", "synthetic_camera"):
        pid = _node_pid(synthetic.log, name)
        assert pid is not None, synthetic.text()[-2000:]
        env = _environ(pid)
        assert all(env.get(v) == profile for v in FASTDDS_PROFILE_VARIABLES), (name, env)

    def processed() -> list[tuple[float, int]]:
        return [(stamp_seconds(st), int(status_values(s)["frames_processed"])) for st, s in synthetic.diags]

    assert synthetic.spin(lambda: any(n >= 5 for _, n in processed()), 60.0), synthetic.text()[-2000:]
    t0, n0 = next((t, n) for t, n in processed() if n >= 5)  # warm: the camera publishes in its loop
    assert synthetic.spin(lambda: processed()[-1][0] - t0 >= 5.0, 15.0)
    t1, n1 = processed()[-1]
    rate = (n1 - n0) / (t1 - t0)
    received = sum(t0 < t <= t1 for t in synthetic.rgb_stamps) / (t1 - t0)
    values = status_values(synthetic.diags[-1][1])
    busy = rate * float(values.get("latency_p50_ms.total", "0")) / 1e3
    print(f"\nsynthetic 640x480 camera at {SYNTHETIC_RATE_HZ:g} Hz under ros2 launch: node processed {rate:.2f} Hz "
          f"over {t1 - t0:.1f} s, busy {100 * busy:.0f} % of the time; a second subscriber received {received:.2f} Hz")
    # The subscriber is this Python test process, which shares the 2 cores with the launch: it measured 6.2-10 Hz
    # when other work loaded the machine, while the transport failure this guards against gives 2.2 Hz.
    assert received >= 0.5 * SYNTHETIC_RATE_HZ, f"{received:.2f} Hz of RGB frames reached a second subscriber"
    if rate < 0.95 * SYNTHETIC_RATE_HZ and busy >= 0.5:
        print("note: the node is CPU-bound here (other processes on the cores), not starved by the transport")
        return
    assert rate >= 0.95 * SYNTHETIC_RATE_HZ, f"{rate:.2f} Hz processed, node busy {100 * busy:.0f} %: {values}"


def test_params_file_reaches_the_namespaced_node(synthetic):
    """The file is keyed like the shipped config/pose.yaml (``/**``): its values reach /<ns>/cse_pose_node."""
    from cse_pose_dev.ros_io import ros2_cli

    assert list(yaml.safe_load((PKG / "config" / "pose.yaml").read_text())) == ["/**"]
    got = ros2_cli(["param", "get", "--no-daemon", "--timeout", "10", NODE, "min_inliers"], synthetic.env)
    assert got.returncode == 0 and got.stdout.strip() == "Integer value is: 21", got.stdout + got.stderr


def test_ros2_param_get_and_set_on_the_running_node(synthetic):
    """``ros2 param set/get`` on the running node; listing and what the node refuses go through the same
    parameter services, asked from the probe (each CLI call costs seconds)."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from cse_pose_dev.ros_io import ros2_cli

    result = ros2_cli(["param", "set", "--no-daemon", "--timeout", "10", NODE, "min_quality", "0.3"], synthetic.env)
    assert result.returncode == 0 and "Set parameter successful" in result.stdout, result.stdout + result.stderr
    got = ros2_cli(["param", "get", "--no-daemon", "--timeout", "10", NODE, "min_quality"], synthetic.env)
    assert got.stdout.strip() == "Double value is: 0.3", got.stdout + got.stderr

    client = AsyncParameterClient(synthetic.probe, NODE)
    assert client.wait_for_services(10.0)
    future = client.list_parameters()
    assert synthetic.spin(future.done, 10.0)
    assert {"model_dir", "min_quality", "backend"} <= set(future.result().result.names)
    future = client.set_parameters([Parameter("min_quality", value=1.5), Parameter("backend", value="cpu")])
    assert synthetic.spin(future.done, 10.0)
    assert [r.successful for r in future.result().results] == [False, False]  # out of range; fixed at start-up
    future = client.get_parameters(["min_quality", "backend"])
    assert synthetic.spin(future.done, 10.0)
    assert [v.double_value for v in future.result().values][:1] == [0.3]
    assert future.result().values[1].string_value == "auto"


def test_ctrl_c_ends_the_bringup_with_status_0(synthetic):
    from cse_pose_dev.ros_io import group_alive, wait_for

    assert synthetic.proc.poll() is None, synthetic.text()[-2000:]
    synthetic.proc.send_signal(signal.SIGINT)
    rc = synthetic.proc.wait(timeout=30)
    text = synthetic.text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text and "process has died" not in text, text[-3000:]
    assert wait_for(lambda: not group_alive(synthetic.proc), 5.0), "a process of the launch outlived it"


# ---------------------------------------------------------------------------------------------------------------
# a tabletop bring-up (RealSense topics, camera started elsewhere: here, the test publishes them)
# ---------------------------------------------------------------------------------------------------------------
def test_tabletop_bringup_serves_masks_and_the_pose_node(prefix, tmp_path):
    """realsense.launch.py start_camera:=false: tabletop_mask_node turns the camera's depth into instance masks
    with the depth stamps, and cse_pose_node (installed models, category mug) processes RGB + depth + those masks."""
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from cse_pose_dev.oracle import table_scene
    from cse_pose_dev.ros_io import frame_messages, launch_env, probe_node, start_launch, stop_process
    from cse_pose_ros.diagnostics import status_values

    ns = f"{NAMESPACE}_tt"
    cam = ns.strip("/")  # camera_namespace: the camera topics of this test only
    mask_topic = f"{ns}/instances"
    env = launch_env(DOMAIN_ID, prefix)
    log = tmp_path / "tabletop_launch.log"
    proc = start_launch([str(REPO / "launch" / "realsense.launch.py"), "start_camera:=false", "category:=mug",
                         f"camera_namespace:={cam}", f"namespace:={ns}", f"mask_topic:={mask_topic}"],
                        env, log, cwd=tmp_path)
    depth, K, gt = table_scene(320, 240, noise_mm_at_1m=2.0)
    rgb = np.full((*depth.shape, 3), 128, np.uint8)
    masks: list = []
    diags: list = []
    try:
        with probe_node("tabletop_launch_probe", DOMAIN_ID) as probe:
            base = f"/{cam}/camera"
            pubs = [probe.create_publisher(t, f"{base}/{name}", qos_profile_sensor_data) for t, name in
                    ((Image, "color/image_raw"), (Image, "aligned_depth_to_color/image_raw"),
                     (CameraInfo, "color/camera_info"))]
            probe.create_subscription(Image, mask_topic, masks.append, 20)
            probe.create_subscription(
                DiagnosticArray, "/diagnostics",
                lambda m: diags.extend(s for s in m.status if s.name == f"{ns}/cse_pose_node: pose pipeline"), 20)
            from cse_pose_dev.ros_io import spin_until

            def processed() -> int:
                return int(status_values(diags[-1]).get("frames_processed", 0)) if diags else 0

            stamps = []
            end = time.monotonic() + 60.0
            while time.monotonic() < end and not (len(masks) >= 2 and processed() >= 2):
                stamp = time.time()
                msg_rgb, msg_depth, _, msg_info = frame_messages(rgb, depth, gt, K, stamp)
                for pub, msg in zip(pubs, (msg_rgb, msg_depth, msg_info), strict=True):
                    pub.publish(msg)
                stamps.append((msg_depth.header.stamp.sec, msg_depth.header.stamp.nanosec))
                spin_until(probe, lambda: False, 0.2)
                assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        rc = stop_process(proc, timeout_s=20.0, group=True)
    text = log.read_text()
    assert len(masks) >= 2, f"{len(masks)} masks\n{text[-3000:]}"
    assert all((m.header.stamp.sec, m.header.stamp.nanosec) in stamps for m in masks)  # the depth frames' stamps
    from cse_pose_ros.conversions import image_to_numpy

    assert set(np.unique(image_to_numpy(masks[-1], "mask"))) == {0, 1, 2, 3}  # the three objects on the table
    assert processed() >= 2, f"diagnostics {status_values(diags[-1]) if diags else None}\n{text[-3000:]}"
    assert rc == 0 and "Traceback" not in text, text[-3000:]


# ---------------------------------------------------------------------------------------------------------------
# pose.launch.py on its own
# ---------------------------------------------------------------------------------------------------------------
def test_pose_launch_serves_the_installed_models_and_keeps_a_users_profile(prefix, tmp_path):
    """No model_dir, started outside the repository: the models installed with the package are loaded. A Fast
    DDS profile chosen by the user is left as it is."""
    from cse_pose_dev.ros_io import launch_env, start_launch, stop_process, wait_for

    own_profile = tmp_path / "my_profile.xml"
    own_profile.write_text((PKG / "config" / FASTDDS_PROFILE).read_text())
    env = launch_env(DOMAIN_ID, prefix, {FASTDDS_PROFILE_VARIABLES[0]: str(own_profile)})
    log = tmp_path / "pose_launch.log"
    proc = start_launch(["cse_pose_ros", "pose.launch.py", "category:=bottle", f"namespace:={NAMESPACE}_pose"],
                        env, log, cwd=tmp_path)
    try:
        assert wait_for(lambda: "ready: serving bottle" in log.read_text() or proc.poll() is not None, 60.0), \
            log.read_text()[-3000:]
        assert "ready: serving bottle" in log.read_text(), log.read_text()[-3000:]
        pid = _node_pid(log, "cse_pose_node")
        env_node = _environ(pid)
        assert env_node.get(FASTDDS_PROFILE_VARIABLES[0]) == str(own_profile)
        assert FASTDDS_PROFILE_VARIABLES[1] not in env_node  # nothing of ours added next to the user's choice
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(prefix / "share" / "cse_pose_ros" / "config" / "pose.yaml").encode() in cmdline  # installed
    finally:
        rc = stop_process(proc, timeout_s=20.0, group=True)
    assert rc == 0 and "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_rviz_without_rviz2_is_one_clear_error_and_starts_nothing(prefix, tmp_path, monkeypatch):
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    from cse_pose_dev.ros_io import group_alive, launch_env, start_launch, stop_process

    env = launch_env(DOMAIN_ID, prefix)
    monkeypatch.setenv("AMENT_PREFIX_PATH", env["AMENT_PREFIX_PATH"])
    try:
        get_package_prefix(RVIZ_PACKAGE)
        pytest.skip("rviz2 is installed here: the missing-RViz path cannot be exercised")
    except PackageNotFoundError:
        pass
    for launch_args in (["cse_pose_ros", "pose.launch.py", "rviz:=true"],
                        [str(REPO / "launch" / "synthetic.launch.py"), "rviz:=true", "frames:=1"]):
        log = tmp_path / "rviz.log"
        proc = start_launch([*launch_args, f"namespace:={NAMESPACE}_rviz"], env, log, cwd=tmp_path)
        try:
            rc = proc.wait(timeout=60)
        finally:
            stop_process(proc, group=True)
        text = log.read_text()
        assert rc != 0, text
        errors = [ln for ln in text.splitlines() if "ERROR" in ln]
        assert len(errors) == 1 and "rviz2 is not installed" in errors[0], text
        assert "process started" not in text, text  # nothing was started, so nothing is orphaned
        assert not group_alive(proc)
