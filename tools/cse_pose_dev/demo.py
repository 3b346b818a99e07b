"""``make demo``: synthetic RGB-D camera -> cse_pose_node -> scoring, over real DDS, no camera, no GPU.

    python -m cse_pose_dev.demo [--model-dir models] [--category mug] [--frames 40] [--oracle]

Starts two processes on a private DDS domain (localhost discovery): the pose node
(``python -m cse_pose_ros``) with ``models/<category>.onnx``, then the synthetic camera
(:mod:`cse_pose_dev.synthetic_camera`: RGB, 16UC1 depth, mono8 instance mask, CameraInfo and a
ground-truth side channel). This process subscribes to the node's outputs and the ground truth, and when
the camera has sent its frames it prints, per frame, the pose error against the ground truth and the
end-to-end latency (camera stamp -> pose received), writes one annotated PNG (the node's debug image:
predicted box and axes, plus the ground-truth box in white) and ``summary.json`` under ``--out``, and a
summary table (frames, poses, median errors, latency per stage from the node's diagnostics). Then it stops
both processes.

Exit status: 0 when the node served frames, 1 when it served none (or died), 2 when there is no model.
``--oracle`` runs the plumbing check without a trained model: the camera sends NOCS-coloured images
and the node gets the oracle test model (:mod:`cse_pose_dev.oracle`), so errors should be ~0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ros_io import large_frames_env, ros_env, spin_until, start_node, stop_process

CAMERA_NS = "/synthetic_camera"
NODE = "/cse_pose_node"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="models", help="folder with <category>.onnx (default: models)")
    ap.add_argument("--category", default="", help="category to run (default: mug if its model exists, "
                                                   "else the first model found)")
    ap.add_argument("--frames", type=int, default=40, help="frames the camera sends (default 40)")
    ap.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz (default 10)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0, help="scene seed (test split)")
    ap.add_argument("--backend", default="auto", help="auto|tensorrt|cuda|cpu|torch")
    ap.add_argument("--out", default="out/demo", help="output folder (PNG, summary.json, logs)")
    ap.add_argument("--oracle", action="store_true",
                    help="plumbing check: NOCS-coloured images + the oracle test model (no trained model)")
    ap.add_argument("--timeout", type=float, default=110.0, help="give up after this many seconds")
    return ap.parse_args(argv)


def choose_model(model_dir: Path, category: str) -> tuple[str, Path] | str:
    """(category, model path), or an explanation of why there is none."""
    from cse_pose.inference import find_models  # <category>.onnx files; their .int8 versions are no category

    by_cat = find_models(model_dir) if model_dir.is_dir() else {}
    if category:
        if category in by_cat:
            return category, by_cat[category]
        return f"no model {model_dir / (category + '.onnx')}" + (
            f" (found: {', '.join(by_cat)})" if by_cat else "")
    if not by_cat:
        return f"no model in {model_dir}/ (expected {model_dir}/<category>.onnx, e.g. {model_dir}/mug.onnx)"
    chosen = "mug" if "mug" in by_cat else next(iter(by_cat))
    return chosen, by_cat[chosen]


@dataclass
class Collected:
    """Everything the runner receives, keyed by the frame stamp (sec, nanosec)."""

    truth: dict = field(default_factory=dict)
    poses: dict = field(default_factory=dict)  # stamp -> (PoseStamped, receipt wall time)
    markers: dict = field(default_factory=dict)  # stamp -> MarkerArray
    debug: dict = field(default_factory=dict)  # stamp -> Image
    diag: list = field(default_factory=list)


def _key(stamp) -> tuple[int, int]:
    return int(stamp.sec), int(stamp.nanosec)


def _marker_facts(markers, instance_id: int | None = None) -> dict:
    """Size (from the box marker's points), quality and trust (from the label text) of the first instance."""
    out: dict = {}
    for m in markers.markers:
        if instance_id is not None and m.id != instance_id:
            continue
        if m.ns.endswith("/box") and "size" not in out and m.points:
            pts = np.array([[p.x, p.y, p.z] for p in m.points])
            out["size"] = pts.max(0) - pts.min(0)
        if m.ns.endswith("/label") and "label" not in out:
            out["label"] = m.text.replace("\n", " | ")
    return out


def _score(pose_msg, facts: dict, gt: dict, symmetric: bool) -> dict:
    """Errors of one published pose against the ground-truth instance nearest to it."""
    from cse_pose.core.metrics import iou_3d, rotation_error_deg, symmetric_iou
    from cse_pose.core.rotation import matrix_from_quaternion

    p, q = pose_msg.pose.position, pose_msg.pose.orientation
    t = np.array([p.x, p.y, p.z])
    R = matrix_from_quaternion([q.x, q.y, q.z, q.w])
    inst = min(gt["instances"], key=lambda g: np.linalg.norm(np.asarray(g["t"]) - t))
    R_gt, t_gt, s_gt = (np.asarray(inst[k], np.float64) for k in ("R", "t", "size"))
    out = {"rot_deg": rotation_error_deg(R, R_gt, symmetric), "trans_cm": 100.0 * float(np.linalg.norm(t - t_gt))}
    if "size" in facts:
        iou = symmetric_iou if symmetric else iou_3d
        out["iou"] = float(iou(R, t, facts["size"], R_gt, t_gt, s_gt))
    return out


def _save_png(path: Path, image_msg, gt: dict | None) -> None:
    """Debug image (node's boxes and axes) + the ground-truth box in white, as PNG."""
    import cv2

    from cse_pose.display import draw_pose
    from cse_pose_ros.conversions import image_to_numpy

    rgb = np.ascontiguousarray(image_to_numpy(image_msg, "rgb")).copy()
    if gt is not None:
        K = np.asarray(gt["K"])
        for inst in gt["instances"]:
            draw_pose(rgb, K, inst["R"], inst["t"], inst["size"], (1.0, 1.0, 1.0), "ground truth", thickness=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.oracle:
        from .oracle import write_oracle_model

        category = args.category or "mug"
        model_path = write_oracle_model(out / "oracle_model" / f"{category}.onnx", category, 128, 32)
    else:
        choice = choose_model(Path(args.model_dir), args.category)
        if isinstance(choice, str):
            print(f"demo: {choice}.\n"
                  "demo: no trained model to run. Train and export one (`make train-smoke`, `make export`), "
                  "or pass --model-dir DIR with a <category>.onnx, or run the plumbing check with "
                  "`scripts/demo.sh --oracle`.", file=sys.stderr)
            return 2
        category, model_path = choice
    out.mkdir(parents=True, exist_ok=True)

    from cse_pose.core.categories import is_symmetric

    symmetric = is_symmetric(category)
    domain = int(os.environ.get("ROS_DOMAIN_ID") or 1 + os.getpid() % 100)
    env = ros_env(domain, large_frames_env())
    for k, v in env.items():
        if k.startswith(("RMW_", "ROS_", "FASTRTPS_", "FASTDDS_")):
            os.environ[k] = v
    print(f"demo: category {category}, model {model_path}, {args.frames} frames at {args.rate:g} Hz "
          f"({args.width}x{args.height}), DDS domain {domain} (localhost)")

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from visualization_msgs.msg import MarkerArray

    from cse_pose_ros.diagnostics import level_of

    t_start = time.monotonic()
    node_proc = cam_proc = None
    rclpy.init(args=[])
    runner = rclpy.create_node("cse_pose_demo")
    got = Collected()
    qos = QoSProfile(depth=100)

    def on_pose(msg):
        got.poses[_key(msg.header.stamp)] = (msg, time.time())

    def on_truth(msg):
        truth = json.loads(msg.data)
        got.truth[tuple(truth["stamp"])] = truth

    subs = [
        runner.create_subscription(PoseStamped, f"{NODE}/pose", on_pose, qos),
        runner.create_subscription(MarkerArray, f"{NODE}/markers",
                                   lambda m: got.markers.__setitem__(_key(m.markers[0].header.stamp), m), qos),
        runner.create_subscription(Image, f"{NODE}/debug_image",
                                   lambda m: got.debug.__setitem__(_key(m.header.stamp), m), qos),
    ]
    runner.create_subscription(String, f"{CAMERA_NS}/ground_truth", on_truth, qos)
    runner.create_subscription(DiagnosticArray, "/diagnostics", lambda m: got.diag.extend(
        s for s in m.status if s.name.startswith(f"{NODE}:")), qos)
    status = 1
    try:
        remaps = [arg for name in ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")
                  for arg in ("-r", f"{name}:={CAMERA_NS}/{name}")]
        node_proc = start_node([*remaps, "-p", f"model_dir:={model_path.parent}", "-p", f"category:={category}",
                                "-p", f"backend:={args.backend}", "-p", "publish_debug_image:=true",
                                "-p", "diagnostics_period_s:=0.5"], env, out / "node.log")
        print("demo: starting the pose node (loading the model) ...")
        ready = spin_until(runner, lambda: node_proc.poll() is not None or got.diag
                           and all(s.get_publisher_count() > 0 for s in subs), 60.0)
        if not ready or node_proc.poll() is not None:
            print(f"demo: the pose node did not come up; see {out / 'node.log'}", file=sys.stderr)
            return 1
        if level_of(got.diag[-1]) == 2:
            print(f"demo: the pose node reports: {got.diag[-1].message}", file=sys.stderr)
            return 1
        cam_proc = start_node(["-r", f"__ns:={CAMERA_NS}", "-p", f"category:={category}",
                               "-p", f"frames:={args.frames}", "-p", f"rate_hz:={float(args.rate)}",
                               "-p", f"width:={args.width}", "-p", f"height:={args.height}",
                               "-p", f"seed:={args.seed}", "-p", f"rgb_mode:={'nocs' if args.oracle else 'shaded'}"],
                              env, out / "camera.log", module="cse_pose_dev.synthetic_camera")
        print(f"demo: rendering {args.frames} synthetic frames (scene seed {args.seed}) ...")
        deadline = t_start + args.timeout
        spin_until(runner, lambda: cam_proc.poll() is not None, max(1.0, deadline - time.monotonic()))
        if cam_proc.poll() is None:
            print("demo: timed out waiting for the camera", file=sys.stderr)
        # the last frames: wait for their answers (or give up after a few seconds)
        spin_until(runner, lambda: set(got.truth) <= set(got.markers) | set(got.poses), 5.0)
        n = len(got.diag)
        spin_until(runner, lambda: len(got.diag) > n + 1, 2.0)
        node_alive = node_proc.poll() is None
        status = report(args, out, category, symmetric, got, node_alive, time.monotonic() - t_start)
    finally:
        stop_process(cam_proc)
        stop_process(node_proc)
        runner.destroy_node()
        rclpy.try_shutdown()
    return status


def report(args, out: Path, category: str, symmetric: bool, got: Collected, node_alive: bool,
           elapsed_s: float) -> int:
    """Per-frame lines, the PNG, the summary table and summary.json; returns the exit status."""
    from cse_pose_ros.diagnostics import status_values

    frames = sorted(got.truth.items(), key=lambda kv: kv[1]["frame_index"])
    rows = []
    print(f"\n{'frame':>5}  {'rot err':>8}  {'trans err':>9}  {'IoU':>5}  {'latency':>8}  label")
    for key, truth in frames:
        pose = got.poses.get(key)
        facts = _marker_facts(got.markers[key]) if key in got.markers else {}
        row = {"frame": truth["frame_index"], "pose": pose is not None}
        if pose is not None:
            msg, received = pose
            row.update(_score(msg, facts, truth, symmetric))
            row["latency_ms"] = 1e3 * (received - (key[0] + 1e-9 * key[1]))
        row["label"] = facts.get("label", "processed, no instance" if key in got.markers else "no output")
        rows.append(row)
        print(f"{row['frame']:>5}  {_fmt(row.get('rot_deg'), '7.2f')}°  {_fmt(row.get('trans_cm'), '6.2f')} cm  "
              f"{_fmt(row.get('iou'), '5.2f')}  {_fmt(row.get('latency_ms'), '5.0f')} ms  {row['label']}")

    posed = [r for r in rows if r["pose"]]
    diag = status_values(got.diag[-1]) if got.diag else {}
    med = lambda k: float(np.median([r[k] for r in posed if k in r])) if any(k in r for r in posed) else None  # noqa: E731
    hit = lambda deg, cm: sum(r["rot_deg"] <= deg and r["trans_cm"] <= cm for r in posed) / max(len(rows), 1)  # noqa: E731
    lat = [r["latency_ms"] for r in posed]
    summary = {
        "category": category, "model": "oracle (plumbing check)" if args.oracle else diag.get(f"model.{category}", ""),
        "frames_sent": len(rows), "frames_received": int(diag.get("frames_received", 0)),
        "frames_processed": int(diag.get("frames_processed", 0)),
        "poses_published": len(posed), "untrusted_instances": int(diag.get("instances_untrusted", 0)),
        "median_rotation_deg": med("rot_deg"), "median_translation_cm": med("trans_cm"), "median_iou": med("iou"),
        "5deg5cm": hit(5, 5), "10deg5cm": hit(10, 5),
        "latency_e2e_median_ms": float(np.median(lat)) if lat else None,
        "latency_e2e_p90_ms": float(np.percentile(lat, 90)) if lat else None,
        "node_latency_p50_ms": {k.split(".", 1)[1]: float(v) for k, v in diag.items()
                                if k.startswith("latency_p50_ms.")},
        "skip_reasons": {k.split(".", 1)[1]: int(v) for k, v in diag.items() if k.startswith("skip.")},
        "symmetric_metric": symmetric, "node_alive": node_alive, "elapsed_s": elapsed_s,
    }
    png = None
    if got.debug:
        with_pose = [k for k in sorted(got.debug) if k in got.poses] or sorted(got.debug)
        key = with_pose[len(with_pose) // 2]
        png = out / f"{category}_frame{got.truth.get(key, {}).get('frame_index', 0):03d}.png"
        _save_png(png, got.debug[key], got.truth.get(key))
    summary["png"] = str(png) if png else None
    summary["node_diagnostics"] = diag
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    stages = summary["node_latency_p50_ms"]
    lines = [
        "", "summary",
        f"  category / model        {category} / {summary['model']}",
        f"  frames sent             {summary['frames_sent']}",
        f"  frames synchronised     {summary['frames_received']}   (processed: {summary['frames_processed']})",
        f"  poses published         {summary['poses_published']}   (untrusted instances: "
        f"{summary['untrusted_instances']})",
        f"  median rotation error   {_fmt(summary['median_rotation_deg'])} deg"
        + ("  (y-symmetric: angle between up axes)" if symmetric else ""),
        f"  median translation err  {_fmt(summary['median_translation_cm'])} cm",
        f"  median 3D IoU           {_fmt(summary['median_iou'])}",
        f"  5deg5cm / 10deg5cm      {summary['5deg5cm']:.2f} / {summary['10deg5cm']:.2f}  (of frames sent)",
        f"  end-to-end latency      median {_fmt(summary['latency_e2e_median_ms'], '.1f')} ms, "
        f"p90 {_fmt(summary['latency_e2e_p90_ms'], '.1f')} ms (camera stamp -> pose received)",
        "  node latency p50 (ms)   " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
        "  skip reasons            " + (", ".join(f"{k} {v}" for k, v in summary["skip_reasons"].items()) or "none"),
        f"  annotated image         {png or '- (no debug image received)'}",
        f"  summary file            {out / 'summary.json'}  ({elapsed_s:.0f} s)",
    ]
    lost = summary["frames_sent"] - summary["frames_received"]
    if lost > 0:
        lines.append(f"  note: {lost} frames never reached the node's synchroniser: the node (total p50 "
                     f"{stages.get('total', float('nan')):.0f} ms) was slower than the camera ({args.rate:g} Hz), so "
                     "the subscription queues (sensor-data QoS, depth 5) dropped them; see node.log.")
    if args.oracle:
        lines.append("  note: the oracle model's box has fixed proportions (1.4 : 2.0 : 1.2), not the object's, so its "
                     "size and IoU are not meaningful; rotation and translation are.")
    print("\n".join(lines))
    if not node_alive:
        print("demo: the pose node died; see node.log", file=sys.stderr)
        return 1
    if summary["frames_processed"] == 0:
        print("demo: the node processed no frame", file=sys.stderr)
        return 1
    if not posed:
        print("demo: the node served frames but published no pose (all instances below min_quality or "
              "skipped: see skip reasons); a weak or untrained model does this (see its card in models/)",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
