"""Start-up and shutdown of the executables as processes: Ctrl-C at any moment ends the pose node with status 0
and no traceback (``cse_pose_ros.runner``), and the tabletop mask node without open3d fails at start with one
clear line instead of serving nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from cse_pose_dev.oracle import default_intrinsics, random_rotation, render_oracle_frame, write_oracle_model  # noqa: E402
from cse_pose_dev.ros_io import (  # noqa: E402
    frame_messages,
    probe_node,
    ros_env,
    spin_until,
    start_node,
    wait_for,
)

DOMAIN_ID = 2 + os.getpid() % 30  # shared with test_params' in-process probes (own namespace below)
NAMESPACE = f"/cse_sigint_{os.getpid()}"
W, H = 160, 120
READY = b"ready: serving"
# (moment, delay s): 'loading' = once rclpy's library is mapped into the process (its imports, rclpy.init, model
# load and warm-up follow), 'ready' = after the node logged that it serves, no input; 'frames' = while frames
# arrive at ~30 Hz, for the delay before the SIGINT and until the process has exited
MOMENTS = ([("loading", d) for d in (0.0, 0.1, 0.3, 0.4, 0.6)]
           + [("ready", d) for d in (0.0, 0.1, 0.3, 0.5)]
           + [("frames", d) for d in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 1.0, 1.2, 1.5)])


def _mapped(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_sigint_at_any_moment_exits_0_without_traceback(tmp_path):
    """20 SIGINTs at different moments of the node's life: every run ends with 0 and prints no traceback."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see when the node process has loaded rclpy")
    write_oracle_model(tmp_path / "models" / "mug.onnx", "mug", crop_size=64, grid_size=16)
    K = default_intrinsics(W, H, 150.0)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        rgb, depth, mask = render_oracle_frame(random_rotation(rng), np.array([0.0, 0.0, 0.5]),
                                               np.array([0.08, 0.1, 0.08]), K, W, H)
        frames.append((rgb, depth, mask.astype(np.uint8)))
    env = ros_env(DOMAIN_ID)

    def start(i: int) -> tuple[subprocess.Popen, Path]:
        """Run i: its own namespace (a node started ahead for the next run hears none of this run's frames)."""
        log = tmp_path / f"node_{i}.log"
        return start_node(["-r", f"__ns:={NAMESPACE}_{i}", "-p", f"model_dir:={tmp_path / 'models'}",
                           "-p", "publish_tf:=false"], env, log), log

    failures: list[str] = []
    poses_before_sigint: list[int] = []  # per 'frames' run: the node was serving when the SIGINT came
    with probe_node("sigint_probe", DOMAIN_ID, NAMESPACE) as node:
        from geometry_msgs.msg import PoseArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        ahead = None
        for i, (moment, delay_s) in enumerate(MOMENTS):
            proc, log = ahead if ahead is not None else start(i)
            ahead = None
            if moment != "loading" and i + 1 < len(MOMENTS) and MOMENTS[i + 1][0] != "loading":
                ahead = start(i + 1)  # its start-up overlaps this run (the suite's time)
            ns = f"{NAMESPACE}_{i}"
            pubs = [node.create_publisher(t, f"{ns}/{n}", qos_profile_sensor_data) for t, n in
                    zip((Image, Image, Image, CameraInfo),
                        ("rgb/image", "depth/image", "mask/image", "rgb/camera_info"), strict=True)]
            poses: list = []
            sub = node.create_subscription(PoseArray, f"{ns}/cse_pose_node/poses", poses.append, 50)

            def publish_for(seconds: float, until=lambda: False, pubs=pubs) -> None:
                end = time.monotonic() + seconds
                k = 0
                while time.monotonic() < end and not until():
                    rgb, depth, mask = frames[k % len(frames)]
                    for pub, msg in zip(pubs, frame_messages(rgb, depth, mask, K, time.time()), strict=True):
                        pub.publish(msg)
                    k += 1
                    spin_until(node, lambda: False, 0.03)

            try:
                if moment == "loading":
                    assert wait_for(lambda proc=proc: _mapped(proc.pid, "rclpy") or proc.poll() is not None, 30.0,
                                    step_s=0.005)
                    time.sleep(delay_s)
                else:
                    assert wait_for(lambda log=log, proc=proc: READY in log.read_bytes() or proc.poll() is not None,
                                    60.0, step_s=0.005), f"run {i}: never ready:\n{log.read_text()[-1500:]}"
                    if moment == "ready":
                        time.sleep(delay_s)
                    else:
                        spin_until(node, lambda pubs=pubs: all(p.get_subscription_count() > 0 for p in pubs), 5.0)
                        n_poses = len(poses)
                        publish_for(delay_s)
                        poses_before_sigint.append(len(poses) - n_poses)
                alive = proc.poll() is None
                proc.send_signal(signal.SIGINT)
                if moment == "frames":
                    publish_for(10.0, until=lambda proc=proc: proc.poll() is not None)
                rc = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            finally:
                for pub in pubs:
                    node.destroy_publisher(pub)
                node.destroy_subscription(sub)
                if proc.poll() is None:  # a failed run: leave nothing behind
                    proc.kill()
                    proc.wait()
                if ahead is not None and sys.exc_info()[0] is not None:
                    ahead[0].kill()
                    ahead[0].wait()
            text = log.read_text(errors="replace")
            if not alive or rc != 0 or "Traceback" in text or "Exception" in text:
                failures.append(f"run {i} ({moment} +{delay_s}s): alive at SIGINT={alive}, exit {rc}\n{text[-1500:]}")
        if ahead is not None:
            ahead[0].kill()
            ahead[0].wait()
    assert not failures, f"{len(failures)} of {len(MOMENTS)} runs:\n" + "\n".join(failures)
    # the 'frames' runs did interrupt a node at work (most of them had answered frames already)
    assert sum(n > 0 for n in poses_before_sigint) >= len(poses_before_sigint) // 2, poses_before_sigint
    print(f"\n{len(MOMENTS)} SIGINTs, all exit 0 without traceback; poses answered before the SIGINT in the "
          f"'frames' runs: {poses_before_sigint}")


def test_tabletop_node_without_open3d_fails_at_start_with_a_hint(tmp_path):
    """open3d made unimportable: exit status != 0 at start, one fatal line naming open3d and how to install it."""
    code = ("import sys; sys.modules['open3d'] = None; "  # `import open3d` now raises ImportError
            "from cse_pose_ros.runner import tabletop_mask_main; sys.exit(tabletop_mask_main())")
    env = ros_env(DOMAIN_ID)
    result = subprocess.run([sys.executable, "-c", code, "--ros-args", "-r", f"__ns:={NAMESPACE}"], env=env,
                            capture_output=True, text=True, timeout=60)
    out = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "FATAL" in lines[0], out
    assert "open3d" in lines[0] and "pip install open3d" in lines[0], out
    assert "ready" not in out and "Traceback" not in out


def test_interrupt_policy_raises_once_and_not_a_plain_keyboard_interrupt():
    from cse_pose_ros.runner import Interrupted, _Interrupts

    policy = _Interrupts()
    with pytest.raises(KeyboardInterrupt) as caught:
        policy.handle(signal.SIGINT, None)
    assert type(caught.value) is Interrupted  # CPython's exit-time SIGINT re-raise keys on the exact class
    policy.handle(signal.SIGINT, None)  # later ones: ignored
    quiet = _Interrupts()
    quiet.ignore_from_now()
    quiet.handle(signal.SIGINT, None)  # shutting down already: ignored from the first


def test_a_sigint_during_a_deferred_block_interrupts_right_after_it():
    from cse_pose_ros.runner import Interrupted, _Interrupts

    policy = _Interrupts()
    done = []
    with pytest.raises(Interrupted):
        with policy.deferred():
            with policy.deferred():  # nested: held until the outermost block ends
                policy.handle(signal.SIGINT, None)  # what a Ctrl-C here does: nothing yet
                done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"]
    with pytest.raises(Interrupted):  # the held interruption replaces what the block raised
        with policy.deferred():
            policy.pending = True
            raise ImportError("initialization failed")
    with policy.deferred():  # nothing pending: the block just runs
        done.append("again")
    policy.handle(signal.SIGINT, None)  # later SIGINTs stay ignored
    assert done[-1] == "again"


def test_what_counts_as_a_shutdown():
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from cse_pose_ros.runner import is_shutdown

    assert is_shutdown(KeyboardInterrupt()) and is_shutdown(ExternalShutdownException())
    assert not is_shutdown(ValueError("bad parameter")) and not is_shutdown(SystemExit(3))
    # a RuntimeError is a shutdown only once the context went away (else it is a failure to report)
    assert is_shutdown(RuntimeError("Failed to take from a subscription")) == (not rclpy.ok())
