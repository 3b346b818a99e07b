#!/usr/bin/env bash
# Entry point of the cse_pose image: source ROS 2 and the colcon workspace, then start a bring-up.
#
#   entrypoint.sh [--dry-run] [pose] [NAME:=VALUE ...]     ros2 launch cse_pose_ros pose.launch.py ...
#   entrypoint.sh [--dry-run] CAMERA [NAME:=VALUE ...]     ros2 launch $CSE_LAUNCH_DIR/CAMERA.launch.py ...
#                 CAMERA = realsense | kinect | orbbec | bag | synthetic
#   entrypoint.sh [--dry-run] shell                        an interactive bash with everything sourced
#   entrypoint.sh [--dry-run] COMMAND [ARG ...]            COMMAND with everything sourced (ros2 topic list)
#   entrypoint.sh -h | --help
#
# model_dir:=$CSE_MODEL_DIR is added unless a model_dir:= argument is given; backend:=$CSE_BACKEND too
# when CSE_BACKEND is set. --dry-run (or CSE_DRY_RUN=1) prints the command and runs nothing (no ROS needed).
# Exit status: the command's; 2 for a usage error; 127 for an unknown command.
set -euo pipefail

ROS_DISTRO=${ROS_DISTRO:-jazzy}
CSE_WS=${CSE_WS:-/opt/cse_pose/ros2_ws}
CSE_MODEL_DIR=${CSE_MODEL_DIR:-/opt/cse_pose/models}
CSE_LAUNCH_DIR=${CSE_LAUNCH_DIR:-/opt/cse_pose/launch}
CSE_BACKEND=${CSE_BACKEND:-}
DRY_RUN=${CSE_DRY_RUN:-0}
BRINGUPS=(realsense kinect orbbec bag synthetic)

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "entrypoint: $1" >&2
  echo "run with --help for the usage" >&2
  exit "${2:-2}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done

mode="pose"
if [[ $# -gt 0 ]]; then
  case "$1" in
    pose) shift ;;
    shell) mode="shell"; shift ;;
    *:=*) ;;  # launch arguments of pose.launch.py
    *)
      mode="command"
      for b in "${BRINGUPS[@]}"; do
        if [[ "$1" == "$b" ]]; then mode="$b"; shift; break; fi
      done
      ;;
  esac
fi

cmd=()
if [[ $mode == command ]]; then
  cmd=("$@")
elif [[ $mode == shell ]]; then
  [[ $# -eq 0 ]] || die "shell takes no arguments (got: $*)"
  cmd=(bash -i)
else
  have_model_dir=0
  have_backend=0
  for arg in "$@"; do
    [[ $arg == *:=* && ${arg%%:=*} =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] \
      || die "'$arg' is not a launch argument NAME:=VALUE (for $mode)"
    [[ $arg == model_dir:=* ]] && have_model_dir=1
    [[ $arg == backend:=* ]] && have_backend=1
  done
  if [[ $mode == pose ]]; then
    cmd=(ros2 launch cse_pose_ros pose.launch.py)
  else
    cmd=(ros2 launch "$CSE_LAUNCH_DIR/$mode.launch.py")
  fi
  cmd+=("$@")
  [[ $have_model_dir == 1 ]] || cmd+=("model_dir:=$CSE_MODEL_DIR")
  [[ $have_backend == 1 || -z $CSE_BACKEND ]] || cmd+=("backend:=$CSE_BACKEND")
fi

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi

# The ROS setup scripts read unset variables: source them without -u.
set +u
ros_setup="/opt/ros/$ROS_DISTRO/setup.bash"
[[ -f $ros_setup ]] || die "ROS 2 $ROS_DISTRO not found ($ros_setup)" 1
# shellcheck disable=SC1090
source "$ros_setup"
if [[ -f "$CSE_WS/install/setup.bash" ]]; then
  # shellcheck disable=SC1091
  source "$CSE_WS/install/setup.bash"
else
  echo "entrypoint: warning: $CSE_WS/install/setup.bash not found (workspace not built?)" >&2
fi
set -u

if [[ $mode == command ]] && ! command -v "${cmd[0]}" >/dev/null 2>&1; then
  die "unknown command or bring-up '${cmd[0]}' (bring-ups: pose ${BRINGUPS[*]}; or shell)" 127
fi
exec "${cmd[@]}"
