"""Launch arguments of ``pose.launch.py`` and their mapping to node parameters and remappings.

Pure Python (no ``launch`` import) so that the mapping is tested everywhere; ``launch/pose.launch.py``
declares :data:`LAUNCH_ARGUMENTS` and calls :func:`node_config` on the evaluated values. Also here, for every
launch file of the package: where the installed share folder is (:func:`share_directory`), the Fast DDS
profile for camera-sized messages the launched processes get (:func:`fastdds_profile_env`) and the check that
RViz exists before anything is started (:func:`rviz_problem`).

Topic defaults follow the RealSense ROS 2 wrapper with ``align_depth`` on; the mask topic is whatever
the segmenter publishes (``mono8``/``mono16``/``32SC1`` instance ids, 0 = background).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .params import BACKENDS

NODE_NAME = "cse_pose_node"
PACKAGE = "cse_pose_ros"


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument: name, default (string, as launch passes it) and description."""

    name: str
    default: str
    description: str


TOPIC_ARGUMENTS: dict[str, str] = {
    # launch argument -> the node's (relative, remappable) input topic
    "rgb_topic": "rgb/image",
    "depth_topic": "depth/image",
    "mask_topic": "mask/image",
    "camera_info_topic": "rgb/camera_info",
}

LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("rgb_topic", "/camera/color/image_raw", "RGB image (rgb8/bgr8/rgba8/bgra8/mono8)."),
    LaunchArgument("depth_topic", "/camera/aligned_depth_to_color/image_raw",
                   "Depth registered to the RGB image (16UC1 millimetres or 32FC1 metres)."),
    LaunchArgument("mask_topic", "/segmentation/instance_mask",
                   "Instance mask aligned with the RGB image (mono8/mono16/32SC1, 0 = background)."),
    LaunchArgument("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the RGB image."),
    LaunchArgument("model_dir", "", "Directory of <category>.onnx models; empty: the models installed with the "
                   "package (share/cse_pose_ros/models), or the params file's value when params_file is given."),
    LaunchArgument("category", "", "Category of every instance id of the mask (mug, bottle, ...); empty: the "
                   "params file value."),
    LaunchArgument("backend", "", f"Model runtime ({'|'.join(BACKENDS)}); empty: the params file value."),
    LaunchArgument("namespace", "", "Namespace of the node (its outputs are ~/pose, ~/markers, ...)."),
    LaunchArgument("use_sim_time", "false", "Use /clock (bag replay, simulation): true|false."),
    LaunchArgument("rviz", "false", "Also start RViz with rviz/pose.rviz: true|false."),
    LaunchArgument("params_file", "", "Parameters YAML; empty: the package's config/pose.yaml."),
    LaunchArgument("log_level", "info", "Node log level: debug|info|warn|error."),
)

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def defaults() -> dict[str, str]:
    """{argument name: default string} of every launch argument."""
    return {a.name: a.default for a in LAUNCH_ARGUMENTS}


def parse_bool(name: str, text: str) -> bool:
    """Launch-style boolean ('true'/'false'/'1'/'0'/'yes'/'no'/'on'/'off'); raises ValueError otherwise."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"launch argument {name}:={text!r} is not a boolean (true|false)")


def node_config(args: dict[str, str], default_params_file: str = "",
                default_model_dir: str = "") -> tuple[list[dict | str], list[tuple[str, str]]]:
    """Map launch argument values to the node's ``parameters`` and ``remappings`` (launch_ros ``Node``).

    ``args``: argument name → string value; missing names take their defaults, unknown names raise
    ValueError. ``default_params_file``: used when ``params_file`` is empty (the launch file passes the
    installed ``config/pose.yaml``). ``default_model_dir``: the ``model_dir`` used when both ``model_dir``
    and ``params_file`` are empty (the launch file passes the installed ``models`` folder; the package's
    ``config/pose.yaml`` holds the node's own default, ``models`` relative to the working directory, which
    a launch from anywhere would miss). Returns ``parameters`` = [params file (if any), overrides dict]
    (later entries win, so the explicit ``model_dir``/``backend`` arguments override the file) and
    ``remappings`` = [(node input topic, launch topic)] for the four inputs.
    """
    unknown = sorted(set(args) - {a.name for a in LAUNCH_ARGUMENTS})
    if unknown:
        raise ValueError(f"unknown launch argument(s): {', '.join(unknown)}")
    values = defaults() | {k: str(v) for k, v in args.items()}

    parameters: list[dict | str] = []
    params_file = values["params_file"].strip() or default_params_file
    if params_file:
        parameters.append(params_file)
    overrides: dict[str, object] = {"use_sim_time": parse_bool("use_sim_time", values["use_sim_time"])}
    for name in ("model_dir", "category"):
        if values[name].strip():
            overrides[name] = values[name].strip()
    if "model_dir" not in overrides and not values["params_file"].strip() and default_model_dir:
        overrides["model_dir"] = default_model_dir
    backend = values["backend"].strip()
    if backend:
        if backend not in BACKENDS:
            raise ValueError(f"launch argument backend:={backend!r} is not one of {'|'.join(BACKENDS)}")
        overrides["backend"] = backend
    parameters.append(overrides)

    remappings: list[tuple[str, str]] = []
    for arg_name, node_topic in TOPIC_ARGUMENTS.items():
        topic = values[arg_name].strip()
        if not topic:
            raise ValueError(f"launch argument {arg_name} must not be empty")
        if topic != node_topic:
            remappings.append((node_topic, topic))
    parse_bool("rviz", values["rviz"])
    if values["log_level"].strip().lower() not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level:={values['log_level']!r} is not one of {LOG_LEVELS}")
    return parameters, remappings


# ---------------------------------------------------------------------------------------------------------------
# what every launch file of the package needs besides the arguments
# ---------------------------------------------------------------------------------------------------------------
FASTDDS_PROFILE = "fastdds_large_frames.xml"
"""Fast DDS profile shipped in ``config/`` (16 MiB shared-memory segments: camera images fit)."""
FASTDDS_PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
"""Where Fast DDS 2.x (Jazzy) and 3.x look for a profiles file."""
RVIZ_PACKAGE = "rviz2"


def share_directory() -> str:
    """The installed share folder of cse_pose_ros (ament index); else this source package's folder.

    The source folder has the same layout as the share folder (``config/``, ``launch/``, ``rviz/``,
    ``models/``), so a pip-only install (no ament index entry) still finds the package's files.
    """
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except (ImportError, LookupError, OSError):  # not installed / not in the index / AMENT_PREFIX_PATH unset
        return str(Path(__file__).resolve().parents[1])


def installed_model_dir(share_dir: str) -> str:
    """The models installed with the package: ``<share>/models`` (empty when there is no share folder)."""
    return os.path.join(share_dir, "models") if share_dir else ""


def fastdds_profile_env(share_dir: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment entries that give launched processes the shipped Fast DDS profile.

    Empty when the user already chose a profiles file (either variable set in ``environ``): theirs wins.
    """
    if any(environ.get(name) for name in FASTDDS_PROFILE_VARIABLES):
        return {}
    path = os.path.join(share_dir, "config", FASTDDS_PROFILE)
    return {name: path for name in FASTDDS_PROFILE_VARIABLES}


def rviz_problem() -> str:
    """Empty when RViz can be started (``rviz2`` in the ament index); else one line saying how to get it."""
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix(RVIZ_PACKAGE)
        return ""
    except (ImportError, LookupError, OSError):
        return (f"rviz:=true but {RVIZ_PACKAGE} is not installed (apt install ros-$ROS_DISTRO-rviz2, or run RViz "
                "on another machine on the same ROS_DOMAIN_ID); nothing was started")
