"""Helpers shared by the synthetic camera, the demo runner and the DDS tests.

* :func:`frame_messages`: numpy frame (RGB, depth in metres, instance mask, K) -> the four input messages
  of the node, all with one header (stamp, camera frame).
* :func:`ros_env`, :func:`start_node`, :func:`stop_process`: run ``python -m cse_pose_ros`` as a separate
  process on a private DDS domain (localhost only), and always stop it.
* :func:`spin_until`: spin a node until a condition holds or a timeout passes.
* :func:`launch_env`, :func:`start_launch`, :func:`ros2_cli`: run ``ros2 launch`` / ``ros2 param ...`` against
  the source packages, registered in an ament prefix by :mod:`cse_pose_dev.ament_prefix`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cse_pose_ros.conversions import numpy_to_image


def time_msg(seconds: float):
    """builtin_interfaces/Time of ``seconds`` (float, e.g. ``time.time()``)."""
    from builtin_interfaces.msg import Time

    total_ns = int(round(float(seconds) * 1e9))  # rounding may carry into the seconds (x.9999999998 s)
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return stamp.sec + 1e-9 * stamp.nanosec


def camera_info(K: np.ndarray, width: int, height: int, header):
    """sensor_msgs/CameraInfo with intrinsics K (3, 3), no distortion (plumb_bob zeros)."""
    from sensor_msgs.msg import CameraInfo

    K = np.asarray(K, np.float64).reshape(3, 3)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=header, width=int(width), height=int(height), distortion_model="plumb_bob",
                      d=[0.0] * 5, k=K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                      p=P.reshape(-1).tolist())


def frame_messages(rgb: np.ndarray, depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray, stamp_s: float,
                   frame_id: str = "camera_color_optical_frame", depth_encoding: str = "16UC1",
                   mask_encoding: str = "mono8"):
    """(rgb Image, depth Image, mask Image, CameraInfo) of one frame, all stamped ``stamp_s``, each with its own
    ``Header`` object (so re-stamping one message in a test moves only that one).

    Args:
        rgb: (H, W, 3) uint8 RGB. depth_m: (H, W) metres (0 = invalid). mask: (H, W) integer ids.
        K: (3, 3) intrinsics. depth_encoding: ``16UC1`` (sent in millimetres) or ``32FC1`` (metres).
    """
    from std_msgs.msg import Header

    def header() -> Header:
        return Header(stamp=time_msg(stamp_s), frame_id=frame_id)

    depth = np.asarray(depth_m, np.float32)
    if depth_encoding == "16UC1":
        depth = np.clip(np.rint(np.nan_to_num(depth) * 1000.0), 0, 65535).astype(np.uint16)
    mask_dtype = {"mono8": np.uint8, "mono16": np.uint16, "16UC1": np.uint16, "32SC1": np.int32}[mask_encoding]
    h, w = depth.shape
    return (numpy_to_image(np.ascontiguousarray(rgb, np.uint8), "rgb8", header()),
            numpy_to_image(depth, depth_encoding, header()),
            numpy_to_image(np.asarray(mask).astype(mask_dtype), mask_encoding, header()),
            camera_info(K, w, h, header()))


def ros_env(domain_id: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child ROS process on a private DDS domain, discovery limited to this host."""
    env = dict(os.environ)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def large_frames_env() -> dict[str, str]:
    """Env entries that make Fast DDS load the package's profile for camera-sized messages (16 MiB shared-memory
    segments; ``cse_pose_ros/config/fastdds_large_frames.xml``, the file the launch files use), unless the user
    set a profiles file already. With Fast DDS's default 512 KiB segment, 640x480 images fall back to UDP and
    most are lost."""
    from cse_pose_ros.launch_args import fastdds_profile_env, share_directory

    return fastdds_profile_env(share_directory())


def sigint_reaches_children() -> None:
    """Let the processes started from here get SIGINT's default action.

    A shell starts a background job (``make test &``) with SIGINT ignored, and a child inherits an ignored
    signal: ``ros2 launch`` then never sees the SIGINT that :func:`stop_process` and the tests send (measured: 3
    launch tests ended by SIGKILL, exit -9). A handled signal is reset to the default at exec, so this process
    gets Python's handler back (main thread only; elsewhere nothing changes).
    """
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def start_node(ros_args: Sequence[str], env: Mapping[str, str], log_path: str | Path | None = None,
               module: str = "cse_pose_ros") -> subprocess.Popen:
    """Start ``python -m <module> --ros-args <ros_args>`` in its own process group; output to ``log_path``."""
    sigint_reaches_children()
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], env=dict(env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 5.0, group: bool = False) -> int | None:
    """SIGINT, then SIGKILL after ``timeout_s``; returns the exit code (None if it was never started).

    ``group``: also SIGKILL whatever is left of the process's group afterwards (what ``ros2 launch``, started
    by :func:`start_launch` in its own group, may have left running).
    """
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # nothing left: the normal case
            pass
    return proc.returncode


def group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of ``proc``'s process group (its own session, :func:`start_launch`) still runs."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ros2_executable() -> str:
    """The ``ros2`` command next to this interpreter (a venv with the ROS 2 CLI wheels), else on PATH; or ''."""
    here = Path(sys.executable).with_name("ros2")
    if here.is_file():
        return str(here)
    return shutil.which("ros2") or ""


def launch_env(domain_id: int, ament_prefix: str | Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`ros_env` plus ``AMENT_PREFIX_PATH`` = ``ament_prefix`` first, then this interpreter's prefix.

    A Fast DDS profiles file chosen in the caller's environment is dropped, so that the launch files apply the
    package's own (pass one in ``extra`` to test the opposite).
    """
    env = ros_env(domain_id)
    for name in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        env.pop(name, None)
    paths = [str(ament_prefix), sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
                                              if p]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


def start_launch(launch_args: Sequence[str], env: Mapping[str, str], log_path: str | Path,
                 cwd: str | Path | None = None) -> subprocess.Popen:
    """Start ``ros2 launch <launch_args>`` in its own session (one process group: :func:`stop_process` with
    ``group=True`` leaves nothing behind); stdout and stderr to ``log_path``."""
    sigint_reaches_children()
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([ros2_executable(), "launch", *launch_args], env=dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def ros2_cli(args: Sequence[str], env: Mapping[str, str], timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``ros2 <args>`` (e.g. ``param get /node name``) to completion; ``--no-daemon`` is the caller's to add
    where the verb takes it (a daemon would outlive the test)."""
    return subprocess.run([ros2_executable(), *args], env=dict(env), capture_output=True, text=True,
                          timeout=timeout_s)


@contextmanager
def probe_node(name: str, domain_id: int, namespace: str = "") -> Iterator:
    """An rclpy node in its own context on ``domain_id`` (the env of :func:`ros_env`), shut down on exit.

    Tests use it to publish frames to and listen to a node running in another process.
    """
    import rclpy

    os.environ.update({k: v for k, v in ros_env(domain_id).items()
                       if k in ("RMW_IMPLEMENTATION", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = rclpy.create_node(name, context=ctx, namespace=namespace)
    try:
        yield node
    finally:
        node.destroy_node()
        ctx.try_shutdown()


def wait_for(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll ``condition()`` every ``step_s`` until it is true (True) or ``timeout_s`` passed (its last value)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def spin_until(node, condition: Callable[[], bool], timeout_s: float, executor=None) -> bool:
    """Spin ``node`` (with ``executor``, or a temporary one on the node's context) until ``condition()``
    is true; returns False on timeout."""
    from rclpy.executors import SingleThreadedExecutor

    own = executor is None
    if own:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            executor.spin_once(timeout_sec=0.02)
        return condition()
    finally:
        if own:
            executor.remove_node(node)
            executor.shutdown()
