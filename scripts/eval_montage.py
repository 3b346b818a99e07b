#!/usr/bin/env python3
"""Failure images for the model cards: best, median and worst frame of ``make eval`` per category.

For each ``out/eval/<category>.json`` (written by ``make eval``), the pipeline frames ranked by rotation error
are re-run through the node's pipeline with ``models/<category>.onnx``; each panel is the frame cropped around
the object with the estimate (category colour when trusted, grey when not) and the ground truth (white) drawn,
captioned with the errors. Writes ``models/eval_<category>.png`` (three panels side by side).

    .venv/bin/python scripts/eval_montage.py [--eval out/eval] [--data data/eval] [--models models]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from cse_pose.display import draw_instances, draw_pose
from cse_pose.inference import load_model
from cse_pose.pipeline import PipelineParams, PosePipeline
from cse_train.data.wild6d import Wild6DDataset
from cse_train.evaluate import wild6d_frames

PANEL_PX = 260


def panel(frame, pipeline: PosePipeline, category: str, record: dict) -> np.ndarray:
    """(PANEL_PX, PANEL_PX, 3) uint8 RGB: the frame around the object, estimate + ground truth, caption."""
    result = pipeline.process(frame.rgb, frame.depth_m, frame.instance_mask, {1: category}, frame.K)
    image = draw_instances(frame.rgb, frame.K, result.instances)
    draw_pose(image, frame.K, frame.R_gt, frame.t_gt, frame.size_gt, (1.0, 1.0, 1.0), "", thickness=1)
    ys, xs = np.nonzero(frame.instance_mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    half = int(max(np.ptp(ys), np.ptp(xs)) * 0.9) + 20
    h, w = image.shape[:2]
    y0, y1 = max(cy - half, 0), min(cy + half, h)
    x0, x1 = max(cx - half, 0), min(cx + half, w)
    crop = cv2.resize(image[y0:y1, x0:x1], (PANEL_PX, PANEL_PX), interpolation=cv2.INTER_AREA)
    text = f"rot {record['rotation_deg']:.1f} deg  t {record['translation_cm']:.1f} cm"
    cv2.rectangle(crop, (0, PANEL_PX - 20), (PANEL_PX, PANEL_PX), (0, 0, 0), -1)
    cv2.putText(crop, text, (4, PANEL_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return crop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default="out/eval")
    ap.add_argument("--data", default="data/eval")
    ap.add_argument("--models", default="models")
    args = ap.parse_args()
    for path in sorted(Path(args.eval).glob("*.json")):
        doc = json.loads(path.read_text())
        category = doc["category"]
        report = next(r for r in doc["reports"] if r["mode"] == "pipeline")
        scored = sorted((f for f in report["frames"] if "rotation_deg" in f), key=lambda f: f["rotation_deg"])
        if not scored:
            continue
        picks = {scored[0]["name"]: scored[0], scored[len(scored) // 2]["name"]: scored[len(scored) // 2],
                 scored[-1]["name"]: scored[-1]}
        pipeline = PosePipeline({category: load_model(Path(args.models) / f"{category}.onnx", "cpu")}, PipelineParams())
        ds = Wild6DDataset(Path(args.data) / category, split="test", category=category, crop_size=128)
        panels = {f.name: panel(f, pipeline, category, picks[f.name]) for f in wild6d_frames(ds) if f.name in picks}
        row = np.concatenate([panels[name] for name in picks if name in panels], axis=1)
        out = Path(args.models) / f"eval_{category}.png"
        cv2.imwrite(str(out), cv2.cvtColor(row, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"{out}: best / median / worst of {len(scored)} frames ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
