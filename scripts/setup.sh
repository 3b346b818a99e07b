#!/usr/bin/env bash
# Create .venv and install everything the project needs. Idempotent: a second run only re-checks.
# Usage: scripts/setup.sh   (called by `make setup`; PYTHON=python3.12 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
APT_PACKAGES="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libgl1 libegl1 libgomp1"

missing_apt() {
  local p out=""
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
  done
  echo "$out"
}

need=$(missing_apt)
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  else
    echo "[setup] WARNING: missing system packages:$need (open3d needs them); run: sudo apt-get install$need" >&2
  fi
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), f"Python 3.11 or 3.12 needed (ROS 2 Jazzy wheels), got {sys.version}"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -m pip install -q --no-deps -e ros2_ws/src/cse_pose -e ros2_ws/src/cse_pose_ros -e training -e tools 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -c "import rclpy, numpy, torch, onnxruntime, cse_pose.core, cse_pose_ros, cse_train, cse_pose_dev; print('[setup] ok: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
touch .venv/.stamp
