#!/usr/bin/env python3
"""Does render-and-compare verification (``cse_pose.verify``) win? The node's pipeline with it off and on.

For each category: the shipped ``<models>/<category>.onnx`` on the held-out synthetic test split of ``make
eval`` (``cse_train.shipped.ensure_test_split``: generated under ``--data`` when missing), evaluated twice
through ``cse_train.evaluate.run_evaluation`` with the default :class:`~cse_pose.pipeline.PipelineParams`,
once with ``verify_categories=()`` and once with ``(category,)``. Prints per category and setting the
frames, 10°5cm, 5°5cm, median rotation error, the share of front/back flips (rotation error > 90°) and the
frames whose pose verification changed (better / worse by more than 1°).

Usage: ``python -m cse_pose_dev.verify_eval [--categories camera laptop mug] [--max-frames 240]``
(about 1 minute per category and setting on a 2-core machine).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def flip_share(frames: Sequence[dict[str, Any]]) -> float:
    """Fraction of evaluated frames (with a pose) whose rotation error exceeds 90 degrees."""
    rot = [f["rotation_deg"] for f in frames if "rotation_deg" in f]
    return float(np.mean(np.asarray(rot) > 90.0)) if rot else float("nan")


def changes(off: Sequence[dict[str, Any]], on: Sequence[dict[str, Any]], tol_deg: float = 1.0) -> tuple[int, int]:
    """(frames better, frames worse) by more than ``tol_deg`` of rotation error, on over off."""
    better = worse = 0
    for a, b in zip(off, on, strict=True):
        if "rotation_deg" in a and "rotation_deg" in b:
            better += b["rotation_deg"] < a["rotation_deg"] - tol_deg
            worse += b["rotation_deg"] > a["rotation_deg"] + tol_deg
    return better, worse


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="verify_eval.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--categories", nargs="+", default=["camera", "laptop", "mug"])
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("data/eval"), help="make eval's test split root")
    ap.add_argument("--max-frames", type=int, default=None, help="frames per category (default: all 240)")
    args = ap.parse_args(argv)

    from cse_pose.pipeline import PipelineParams
    from cse_pose.verify import VERIFIABLE_CATEGORIES
    from cse_train.evaluate import run_evaluation
    from cse_train.shipped import ensure_test_split

    unknown = [c for c in args.categories if c not in VERIFIABLE_CATEGORIES]
    if unknown:
        ap.error(f"nothing to verify for {unknown}; verifiable: {VERIFIABLE_CATEGORIES}")
    splits = {c: ensure_test_split(args.data, c) for c in args.categories}  # before onnxruntime starts threads
    head = f"{'category':<9}{'verify':>7}{'frames':>8}{'10°5cm':>8}{'5°5cm':>8}{'med rot°':>10}{'flips':>8}"
    print(head + f"{'better':>8}{'worse':>7}{'ms/frame':>10}")
    for category in args.categories:
        model = args.models_dir / f"{category}.onnx"
        base = PipelineParams()
        reports = {}
        for label, params in (("off", replace(base, verify_categories=())),
                              ("on", replace(base, verify_categories=(category,)))):
            reports[label] = run_evaluation(model, splits[category], category=category, params=params,
                                            max_frames=args.max_frames, progress=False, print_table=False)[0]
        better, worse = changes(reports["off"].frames, reports["on"].frames)
        for label, r in reports.items():
            s = r.summary
            extra = f"{better:>8}{worse:>7}" if label == "on" else f"{'':>8}{'':>7}"
            print(f"{category:<9}{label:>7}{int(s['frames']):>8}{100 * s['10deg5cm']:>8.1f}{100 * s['5deg5cm']:>8.1f}"
                  f"{s['median_rotation_deg']:>10.2f}{100 * flip_share(r.frames):>7.1f}%{extra}"
                  f"{s['ms_per_frame']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
