#!/usr/bin/env bash
# Create .venv and install everything the project needs. Idempotent: a second run only re-checks.
# Usage: scripts/setup.sh   (called by `make setup`; PYTHON=python3.12 to choose the interpreter;
#        ROS_WHEELS=<folder> for the ROS 2 wheels PyPI lacks, default ../shared/ros-wheels)
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

# ROS 2 Jazzy packages PyPI lacks (launch, launch_ros, the ros2 CLI, message_filters, tf2_ros, vision_msgs, ...),
# as wheels built from their upstream sources, when the folder is there (ROS_WHEELS=... to point elsewhere):
# the compiled ros_*.whl with their dependencies (ros-jazzy-* wheels from PyPI), the pure-Python ones without
# (their declared dependencies use apt names). Without the folder: the pip-only install, whose node uses
# in-package fallbacks (synchroniser, image conversion, no TF / Detection3DArray) and whose launch tests skip.
ROS_WHEELS=${ROS_WHEELS:-../shared/ros-wheels}
shopt -s nullglob
compiled=("$ROS_WHEELS"/ros_*.whl)
pure=()
for whl in "$ROS_WHEELS"/*.whl; do
  case "$(basename "$whl")" in ros_*) ;; *) pure+=("$whl") ;; esac
done
shopt -u nullglob
if [ ${#compiled[@]} -gt 0 ] || [ ${#pure[@]} -gt 0 ]; then
  echo "[setup] ROS 2 wheels from $ROS_WHEELS: ${#compiled[@]} compiled, ${#pure[@]} pure-Python"
  .venv/bin/python -m pip install -q osrf-pycommon lark pyyaml catkin-pkg packaging importlib-metadata argcomplete \
    psutil ros-jazzy-ament-index-python "${compiled[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  if [ ${#pure[@]} -gt 0 ]; then
    .venv/bin/python -m pip install -q --no-deps "${pure[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  fi
  .venv/bin/python -c "import launch, launch_ros.actions, message_filters, tf2_ros, vision_msgs.msg; print('[setup] ok: launch, launch_ros, message_filters, tf2_ros, vision_msgs')"
  # register cse_pose and cse_pose_ros in .venv's ament index (share/, lib/<package>/ as colcon would install
  # them, linked to the sources): AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/ros2 launch cse_pose_ros pose.launch.py
  .venv/bin/python -m cse_pose_dev.ament_prefix .venv
else
  echo "[setup] no ROS 2 wheels in $ROS_WHEELS: pip-only install (no launch/launch_ros/ros2 CLI; see README 'Install paths')"
fi

.venv/bin/python -c "import rclpy, numpy, torch, onnxruntime, cse_pose.core, cse_pose_ros, cse_train, cse_pose_dev; print('[setup] ok: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
touch .venv/.stamp
