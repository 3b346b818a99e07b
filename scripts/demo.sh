#!/usr/bin/env bash
# `make demo`: a synthetic RGB-D camera and cse_pose_node as separate processes over real DDS (no camera,
# no GPU); prints per-frame pose errors against the scene's ground truth, latencies and a summary, and
# writes an annotated PNG under out/demo/. Stops by itself.
#   scripts/demo.sh [--model-dir DIR] [--category mug] [--frames 40] [--oracle] [--help]
# Exit status: 0 ok, 1 the node served nothing / died, 2 no model (models/<category>.onnx).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m cse_pose_dev.demo "$@"
