"""A synthetic RGB-D camera + segmenter node: a moving scene of ``cse_train.data.synthetic``.

    python -m cse_pose_dev.synthetic_camera --ros-args -r __ns:=/synthetic_camera \
        -p category:=mug -p frames:=40 -p rate_hz:=10.0

Publishes (relative names, so a namespace or remapping places them): ``rgb/image`` (rgb8),
``depth/image`` (16UC1 mm, or 32FC1 m), ``mask/image`` (mono8 instance ids: the instances of
``category`` only, as a category-aware segmenter would give; 0 = background), ``rgb/camera_info`` and
``ground_truth`` (std_msgs/String, JSON: stamp, frame index, K and per instance id, category, R (3x3
object -> camera), t (box centre, m), size (box extents, m); for scoring only, the node never sees it).
All messages of one frame share one header (stamp = wall-clock time of publishing, ``frame_id``).

The frames are rendered once at start-up (the renderer is not real-time), then published at
``rate_hz`` once every image input has a subscriber (and ``ground_truth`` too when
``wait_for_ground_truth`` is true); after the last frame the node keeps spinning ``linger_s`` seconds (so
slow readers get the reliable ground truth) and exits, unless ``loop`` is set.

``rgb_mode:=nocs`` publishes, instead of the shaded image, the object coordinates encoded as colours
(``c = p_obj / (s * extents) + 0.5``, the encoding :mod:`cse_pose_dev.oracle`'s oracle model decodes):
a plumbing check of camera -> node -> scoring that needs no trained model.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from cse_pose_ros.runner import is_shutdown, quiet_sigint, shut_down

from .oracle import DEFAULT_EXTENTS
from .ros_io import frame_messages

INPUTS = ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")


def nocs_colours(object_coords_m: np.ndarray, mask: np.ndarray, size_m: np.ndarray,
                 extents=DEFAULT_EXTENTS) -> np.ndarray:
    """(H, W, 3) uint8 colours ``round(255 (p / (s * extents) + 0.5))`` of object coordinates (m) under
    ``mask``; ``s = max(size_m / extents)`` so every coordinate of the object fits in [0, 1]."""
    e = np.asarray(extents, np.float64)
    s = float(np.max(np.asarray(size_m, np.float64) / e))
    c = np.asarray(object_coords_m, np.float64) / (s * e) + 0.5
    rgb = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
    rgb[~mask.astype(bool)] = 0
    return rgb


def render_frames(category: str, split: str, seed: int, frames: int, width: int, height: int,
                  rgb_mode: str = "shaded", log=print) -> list[tuple]:
    """Render a scene: list of (rgb (H,W,3) uint8, depth_m (H,W) float32, mask (H,W) uint8, K (3,3), gt list).

    Only instances of ``category`` stay in the mask (renumbered 1..n in ``gt`` order) and in ``gt``.
    """
    try:
        from cse_train.data.synthetic import render_frame, sample_scene
    except ImportError as exc:
        raise RuntimeError(f"the synthetic camera needs the training package cse_train ({exc})") from exc
    scene = sample_scene(category, split, seed, frames=(frames, frames))
    out = []
    t0 = time.monotonic()
    for i in range(frames):
        f = render_frame(scene, i, width, height)
        mask = np.zeros(f.instance_mask.shape, np.uint8)
        gt = []
        for g in f.gt:
            if g["category"] != category:
                continue
            new_id = len(gt) + 1
            sel = f.instance_mask == g["instance_id"]
            mask[sel] = new_id
            gt.append({"instance_id": new_id, "category": category, "R": np.asarray(g["R"]).tolist(),
                       "t": np.asarray(g["t"]).tolist(), "size": np.asarray(g["size"]).tolist()})
        rgb = np.asarray(f.rgb, np.uint8)
        if rgb_mode == "nocs":
            rgb = np.zeros_like(rgb)
            for g in gt:
                sel = mask == g["instance_id"]
                rgb[sel] = nocs_colours(f.object_coords_m, sel, g["size"])[sel]
        out.append((rgb, np.asarray(f.depth_m, np.float32), mask, np.asarray(f.K, np.float64), gt))
        if (i + 1) % 10 == 0 or i + 1 == frames:
            log(f"rendered {i + 1}/{frames} frames ({time.monotonic() - t0:.1f} s)")
    return out


class SyntheticCamera(Node):
    """Publishes pre-rendered synthetic frames (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("synthetic_camera", **kwargs)
        p = {
            "category": "mug", "split": "test", "seed": 0, "frames": 40, "rate_hz": 10.0, "width": 640,
            "height": 480, "frame_id": "camera_color_optical_frame", "depth_encoding": "16UC1",
            "rgb_mode": "shaded", "wait_for_ground_truth": True, "wait_timeout_s": 60.0, "loop": False,
            "linger_s": 2.0,
        }
        for name, default in p.items():
            self.declare_parameter(name, default)
        self.p = {name: self.get_parameter(name).value for name in p}
        if self.p["rgb_mode"] not in ("shaded", "nocs") or self.p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ValueError("rgb_mode must be shaded|nocs and depth_encoding 16UC1|32FC1")
        self.frames = render_frames(self.p["category"], self.p["split"], self.p["seed"], self.p["frames"],
                                    self.p["width"], self.p["height"], self.p["rgb_mode"],
                                    log=self.get_logger().info)
        types = (Image, Image, Image, CameraInfo)
        self.pubs = [self.create_publisher(t, name, qos_profile_sensor_data) for t, name in
                     zip(types, INPUTS, strict=True)]
        self.pub_gt = self.create_publisher(String, "ground_truth", QoSProfile(depth=100))
        self.index = 0
        self.started = None
        self.done = False
        self.timer = self.create_timer(1.0 / self.p["rate_hz"], self._tick)
        self.created = time.monotonic()

    def _ready(self) -> bool:
        ok = all(p.get_subscription_count() > 0 for p in self.pubs)
        if self.p["wait_for_ground_truth"]:
            ok = ok and self.pub_gt.get_subscription_count() > 0
        return ok

    def _tick(self) -> None:
        if self.started is None:
            if not self._ready():
                if time.monotonic() - self.created > self.p["wait_timeout_s"]:
                    self.get_logger().error("no subscriber on the camera topics: giving up")
                    self.done = True
                return
            self.started = time.monotonic()
            self.get_logger().info(f"subscribers matched: publishing {len(self.frames)} frames at "
                                   f"{self.p['rate_hz']} Hz")
        if self.index >= len(self.frames):
            if not self.p["loop"]:
                self.done = True
                return
            self.index = 0
        rgb, depth, mask, K, gt = self.frames[self.index]
        stamp = time.time()
        msgs = frame_messages(rgb, depth, mask, K, stamp, self.p["frame_id"], self.p["depth_encoding"])
        header = msgs[0].header
        truth = {"stamp": [header.stamp.sec, header.stamp.nanosec], "frame_index": self.index,
                 "frame_id": self.p["frame_id"], "K": K.tolist(), "instances": gt}
        self.pub_gt.publish(String(data=json.dumps(truth)))
        for pub, msg in zip(self.pubs, msgs, strict=True):
            pub.publish(msg)
        self.index += 1


def main(args: list[str] | None = None) -> int:
    """Entry point: ``python -m cse_pose_dev.synthetic_camera [--ros-args ...]``."""
    quiet_sigint()  # Ctrl-C (also from ros2 launch) ends with 0 and no traceback, as the package's nodes
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = SyntheticCamera()
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.05)
        if node is not None:  # keep serving reliable ground truth to slow readers before the participant leaves
            end = time.monotonic() + float(node.p["linger_s"])
            while rclpy.ok() and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, RuntimeError) as exc:
        if is_shutdown(exc):  # the context went away under the executor (Ctrl-C)
            return 0
        rclpy.logging.get_logger("synthetic_camera").fatal(str(exc))
        return 2
    finally:
        shut_down(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
