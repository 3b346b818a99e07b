"""Camera bring-ups (camera driver + mask source + pose node [+ RViz]) as plain data, tested without ROS.

The launch files ``launch/<camera>.launch.py`` at the repository root are one line each
(:func:`launch_description`); everything they start is decided here, in pure Python:

* :data:`CAMERAS`: per camera, the driver's launch file and arguments, the RGB / registered-depth /
  CameraInfo topics it publishes, and the pose-node parameters recommended for it;
* :func:`bringup_arguments`: the launch arguments of a bring-up, i.e. those of ``pose.launch.py``
  (:data:`cse_pose_ros.launch_args.LAUNCH_ARGUMENTS`, topic defaults emptied: the camera's are used)
  plus the bring-up's own (``mask_source``, ``category``, ``start_camera``, camera-specific ones);
* :func:`make_plan`: evaluated argument values -> a :class:`BringupPlan` (driver includes, processes,
  nodes with parameters and remappings). The pose node's parameters and remappings come from
  :func:`cse_pose_ros.launch_args.node_config`, exactly as in ``pose.launch.py``.

Mask sources: ``tabletop`` (:mod:`cse_pose_ros.tabletop_mask`, from depth alone), ``external`` (your
segmenter publishes instance ids on ``mask_topic``), and for the synthetic camera ``camera`` (its own
ground-truth segmentation of ``category``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from cse_pose.core.categories import CATEGORIES

from .launch_args import (
    LAUNCH_ARGUMENTS,
    NODE_NAME,
    PACKAGE,
    TOPIC_ARGUMENTS,
    LaunchArgument,
    fastdds_profile_env,
    installed_model_dir,
    node_config,
    parse_bool,
    rviz_problem,
    share_directory,
)

TABLETOP_EXECUTABLE = "tabletop_mask_node"
TABLETOP_NODE_NAME = "tabletop_mask_node"
TABLETOP_INPUTS = ("depth/image", "depth/camera_info")
TABLETOP_OUTPUT = "mask/image"
MASK_SOURCES = ("tabletop", "external", "camera")
DEFAULT_MASK_TOPIC = next(a.default for a in LAUNCH_ARGUMENTS if a.name == "mask_topic")
SYNTHETIC_NAMESPACE = "/synthetic_camera"


@dataclass(frozen=True)
class Camera:
    """One supported camera (or source of camera-like topics).

    Attributes:
        name: bring-up name (``launch/<name>.launch.py``).
        title: human name.
        driver_package, driver_launch: the driver's ROS package and launch file (``driver_launch`` may be
            overridden by a launch argument, e.g. the Orbbec model); empty for sources that are not a
            driver launch file (bag replay, the synthetic camera).
        install: how to get the driver.
        arguments: the bring-up's own launch arguments (name, default, description).
        recommended: pose-node parameters recommended for this camera (applied unless ``params_file``
            is given); the tabletop node gets ``min_depth_m`` too.
        notes: what to check on the real device.
    """

    name: str
    title: str
    driver_package: str
    driver_launch: str
    install: str
    arguments: tuple[LaunchArgument, ...] = ()
    recommended: Mapping[str, object] = field(default_factory=dict)
    notes: str = ""


_COMMON_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("mask_source", "tabletop",
                   "Where instance masks come from: tabletop (tabletop_mask_node, depth only) | external "
                   "(your segmenter publishes on mask_topic) | camera (synthetic camera only)."),
    LaunchArgument("start_camera", "true",
                   "Start the camera driver (false: it already runs, e.g. on another machine)."),
)

CAMERAS: dict[str, Camera] = {
    "realsense": Camera(
        "realsense", "Intel RealSense D400 (realsense2_camera, ROS 2 wrapper 4.5x)",
        "realsense2_camera", "rs_launch.py", "apt install ros-$ROS_DISTRO-realsense2-camera",
        arguments=(
            LaunchArgument("camera_namespace", "camera", "realsense2_camera camera_namespace."),
            LaunchArgument("camera_name", "camera", "realsense2_camera camera_name."),
            LaunchArgument("serial_no", "", "Serial number of the device to open (empty: the first)."),
            LaunchArgument("profile", "640x480x30", "Colour and depth profile WIDTHxHEIGHTxFPS."),
        ),
        recommended={"min_depth_m": 0.1, "max_depth_m": 3.0, "sync_slop_s": 0.03},
        notes="align_depth.enable and enable_sync are set, so aligned depth and colour share stamps; "
              "the driver's topics are /<camera_namespace>/<camera_name>/... (older wrappers without "
              "camera_namespace publish /<camera_name>/...: pass camera_namespace:='' or the topics).",
    ),
    "kinect": Camera(
        "kinect", "Microsoft Azure Kinect DK (azure_kinect_ros_driver, ROS 2 branch)",
        "azure_kinect_ros_driver", "driver.launch.py",
        "build microsoft/Azure_Kinect_ROS_Driver (humble branch) from source with the Azure Kinect "
        "Sensor SDK; it is not released as a Jazzy binary",
        arguments=(
            LaunchArgument("color_resolution", "720P", "Colour resolution (720P|1080P|1440P|1536P|2160P)."),
            LaunchArgument("depth_mode", "NFOV_UNBINNED",
                           "Depth mode (NFOV_UNBINNED|NFOV_2X2BINNED|WFOV_...)."),
            LaunchArgument("fps", "15", "Frame rate (5|15|30)."),
        ),
        recommended={"min_depth_m": 0.5, "max_depth_m": 3.8, "sync_slop_s": 0.03},
        notes="depth_to_rgb/image_raw is the depth registered to the colour camera (published when colour "
              "and depth are both enabled); colour is bgra8.",
    ),
    "orbbec": Camera(
        "orbbec", "Orbbec Gemini 330 / Femto (OrbbecSDK_ROS2 v2, orbbec_camera)",
        "orbbec_camera", "gemini_330_series.launch.py",
        "build orbbec/OrbbecSDK_ROS2 (v2-main) in your workspace (or apt install "
        "ros-$ROS_DISTRO-orbbec-camera where released)",
        arguments=(
            LaunchArgument("orbbec_launch", "gemini_330_series.launch.py",
                           "orbbec_camera launch file for your model (e.g. femto_bolt.launch.py)."),
            LaunchArgument("camera_name", "camera", "orbbec_camera camera_name (topic prefix)."),
            LaunchArgument("width", "640", "Colour and depth width."),
            LaunchArgument("height", "480", "Colour and depth height."),
            LaunchArgument("fps", "30", "Colour and depth frame rate."),
        ),
        recommended={"min_depth_m": 0.15, "max_depth_m": 3.0, "sync_slop_s": 0.03},
        notes="depth_registration:=true registers depth to colour (same size and intrinsics as the colour "
              "image); without it the depth topic is NOT aligned and poses are wrong.",
    ),
    "bag": Camera(
        "bag", "rosbag2 replay of a recorded camera", "", "",
        "rosbag2 (part of ros-$ROS_DISTRO-ros-base)",
        arguments=(
            LaunchArgument("bag", "", "Path of the bag (directory or .mcap/.db3); required."),
            LaunchArgument("rate", "1.0", "Replay rate."),
            LaunchArgument("loop", "true", "Replay in a loop: true|false."),
            LaunchArgument("record_camera", "realsense",
                           "Camera whose topic names the bag holds (realsense|kinect|orbbec); or pass the "
                           "four *_topic arguments."),
        ),
        recommended={"sync_slop_s": 0.05},
        notes="played with --clock and use_sim_time:=true; record the RGB, registered depth and CameraInfo "
              "topics (and /tf_static if you use TF): ros2 bag record <rgb> <depth> <camera_info>.",
    ),
    "synthetic": Camera(
        "synthetic", "the synthetic RGB-D camera of `make demo` (cse_pose_dev.synthetic_camera)",
        "", "", "the development tools and training packages (make setup: cse_pose_dev, cse_train); "
        "not in the robot image",
        arguments=(
            LaunchArgument("frames", "40", "Frames rendered at start-up, then replayed."),
            LaunchArgument("rate_hz", "10.0", "Publishing rate."),
            LaunchArgument("seed", "0", "Scene seed."),
            LaunchArgument("split", "test", "Shape split of the scene (train|val|test)."),
        ),
        recommended={},
        notes="renders its frames first (about 0.5 s each at 640x480), then publishes them in a loop; "
              "mask_source is camera (its exact masks of category): the camera waits until every one of "
              "its image topics, the mask included, has a subscriber.",
    ),
}
"""The supported bring-ups, by name."""


def camera_topics(camera: str, values: Mapping[str, str]) -> dict[str, str]:
    """{'rgb', 'depth', 'camera_info'}: absolute topics the camera publishes, given the argument values.

    ``depth`` is always the depth registered to the RGB image; ``camera_info`` is the RGB camera's (which
    is also the registered depth's).
    """
    if camera == "realsense":
        parts = (values["camera_namespace"], values["camera_name"])
        prefix = "/".join(s.strip("/") for s in parts if s.strip("/"))
        base = f"/{prefix}" if prefix else ""
        return {"rgb": f"{base}/color/image_raw", "depth": f"{base}/aligned_depth_to_color/image_raw",
                "camera_info": f"{base}/color/camera_info"}
    if camera == "kinect":
        return {"rgb": "/rgb/image_raw", "depth": "/depth_to_rgb/image_raw",
                "camera_info": "/rgb/camera_info"}
    if camera == "orbbec":
        base = "/" + values["camera_name"].strip("/")
        return {"rgb": f"{base}/color/image_raw", "depth": f"{base}/depth/image_raw",
                "camera_info": f"{base}/color/camera_info"}
    if camera == "bag":
        recorded = values["record_camera"]
        if recorded not in ("realsense", "kinect", "orbbec"):
            raise ValueError(f"record_camera:={recorded!r} is not one of realsense|kinect|orbbec")
        return camera_topics(recorded, defaults(recorded))
    if camera == "synthetic":
        return {"rgb": f"{SYNTHETIC_NAMESPACE}/rgb/image", "depth": f"{SYNTHETIC_NAMESPACE}/depth/image",
                "camera_info": f"{SYNTHETIC_NAMESPACE}/rgb/camera_info"}
    raise ValueError(f"unknown camera {camera!r}; one of {', '.join(CAMERAS)}")


def bringup_arguments(camera: str) -> tuple[LaunchArgument, ...]:
    """Launch arguments of ``launch/<camera>.launch.py`` (unique names, every one with a description).

    ``pose.launch.py``'s arguments come first, with the topic defaults emptied (empty = the camera's topic,
    :func:`camera_topics`; ``mask_topic`` empty = the mask source's topic) and ``use_sim_time`` defaulting
    to true for bag replay; then the common bring-up arguments, then the camera's own.
    """
    cam = _camera(camera)
    out = []
    for a in LAUNCH_ARGUMENTS:
        if a.name in TOPIC_ARGUMENTS:
            a = LaunchArgument(a.name, "", a.description + " Empty: the camera's / mask source's topic.")
        elif a.name == "use_sim_time" and camera == "bag":
            a = LaunchArgument(a.name, "true", a.description)
        elif a.name == "category" and camera == "synthetic":
            a = LaunchArgument(a.name, "mug", "Category of the synthetic scene's target (and of every mask instance).")
        out.append(a)
    common = list(_COMMON_ARGUMENTS)
    if camera == "synthetic":
        common[0] = LaunchArgument("mask_source", "camera", _COMMON_ARGUMENTS[0].description)
    if camera in ("bag", "synthetic"):
        common = [a for a in common if a.name != "start_camera"]
    return (*out, *common, *cam.arguments)


def defaults(camera: str) -> dict[str, str]:
    """{argument: default} of a bring-up."""
    return {a.name: a.default for a in bringup_arguments(camera)}


@dataclass(frozen=True)
class IncludeSpec:
    """A launch file to include: ``<share of package>/launch/<launch_file>`` with string arguments."""

    package: str
    launch_file: str
    arguments: dict[str, str]


@dataclass(frozen=True)
class ProcessSpec:
    """A plain process (launch ``ExecuteProcess``)."""

    name: str
    cmd: tuple[str, ...]


@dataclass(frozen=True)
class NodeSpec:
    """A ROS node (launch_ros ``Node``); ``remappings`` are (node's own topic, actual topic);
    ``ends_launch``: its exit shuts the whole launch down (RViz: closing its window ends the bring-up)."""

    package: str
    executable: str
    name: str
    namespace: str = ""
    parameters: tuple = ()
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    ends_launch: bool = False


@dataclass(frozen=True)
class BringupPlan:
    """Everything one bring-up starts, and the topics that connect them."""

    camera: str
    topics: dict[str, str]
    mask_source: str
    includes: tuple[IncludeSpec, ...]
    processes: tuple[ProcessSpec, ...]
    nodes: tuple[NodeSpec, ...]

    def node(self, name: str) -> NodeSpec:
        """The node called ``name`` (KeyError if absent)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def make_plan(camera: str, args: Mapping[str, str], share_dir: str = "") -> BringupPlan:
    """Evaluate a bring-up: argument values (strings, as launch passes them) -> :class:`BringupPlan`.

    Args:
        camera: a key of :data:`CAMERAS`.
        args: argument name -> value; missing ones take their defaults; unknown names raise ValueError.
        share_dir: the installed share directory of cse_pose_ros (for ``config/pose.yaml``,
            ``rviz/pose.rviz`` and the default ``model_dir``, ``models/``); empty in tests.
    Raises:
        ValueError: unknown argument, bad value, or a required argument missing (``bag``).
    """
    cam = _camera(camera)
    spec = bringup_arguments(camera)
    unknown = sorted(set(args) - {a.name for a in spec})
    if unknown:
        raise ValueError(f"unknown argument(s) for {camera}.launch.py: {', '.join(unknown)}")
    v = {a.name: a.default for a in spec} | {k: str(x).strip() for k, x in args.items()}

    mask_source = v["mask_source"]
    allowed = ("camera",) if camera == "synthetic" else MASK_SOURCES[:2]
    if mask_source not in allowed:
        why = (" (the synthetic camera starts publishing only once its own mask topic has a subscriber)"
               if camera == "synthetic" else "")
        raise ValueError(f"mask_source:={mask_source!r} is not one of {'|'.join(allowed)} for {camera}{why}")
    category = v["category"]
    if category and category not in CATEGORIES:
        raise ValueError(f"category:={category!r} is not one of {', '.join(CATEGORIES)} (or empty)")
    use_sim_time = parse_bool("use_sim_time", v["use_sim_time"])
    start_camera = parse_bool("start_camera", v.get("start_camera", "true"))
    topics = camera_topics(camera, v)
    topics = {k: v[f"{k}_topic"] or t for k, t in topics.items()}  # explicit topic arguments win
    if mask_source == "camera":
        mask_topic = v["mask_topic"] or f"{SYNTHETIC_NAMESPACE}/mask/image"
    else:
        mask_topic = v["mask_topic"] or DEFAULT_MASK_TOPIC
    topics["mask"] = mask_topic

    includes: list[IncludeSpec] = []
    processes: list[ProcessSpec] = []
    nodes: list[NodeSpec] = []
    if camera in ("realsense", "kinect", "orbbec") and start_camera:
        includes.append(_driver_include(camera, v))
    elif camera == "bag":
        if not v["bag"]:
            raise ValueError("bag.launch.py needs bag:=<path of the recorded bag>")
        cmd = ["ros2", "bag", "play", v["bag"], "--clock", "--rate", str(float(v["rate"]))]
        if parse_bool("loop", v["loop"]):
            cmd.append("--loop")
        processes.append(ProcessSpec("bag_play", tuple(cmd)))
    elif camera == "synthetic":
        processes.append(ProcessSpec("synthetic_camera", _synthetic_cmd(v, category or "mug")))

    if mask_source == "tabletop":  # the sensor's near limit; its own max_depth_m keeps far walls out
        tabletop_params: dict[str, object] = {"use_sim_time": use_sim_time}
        if "min_depth_m" in cam.recommended:
            tabletop_params["min_depth_m"] = cam.recommended["min_depth_m"]
        if category:
            tabletop_params["category"] = category
        nodes.append(NodeSpec(
            PACKAGE, TABLETOP_EXECUTABLE, TABLETOP_NODE_NAME, v["namespace"], (tabletop_params,),
            (("depth/image", topics["depth"]), ("depth/camera_info", topics["camera_info"]),
             (TABLETOP_OUTPUT, mask_topic)),
            ("--ros-args", "--log-level", v["log_level"])))

    pose_args = {a.name: v[a.name] for a in LAUNCH_ARGUMENTS}
    pose_args.update(rgb_topic=topics["rgb"], depth_topic=topics["depth"], mask_topic=mask_topic,
                     camera_info_topic=topics["camera_info"])
    default_params = os.path.join(share_dir, "config", "pose.yaml") if share_dir else ""
    parameters, remappings = node_config(pose_args, default_params, installed_model_dir(share_dir))
    if not v["params_file"] and cam.recommended:
        parameters.insert(len(parameters) - 1, dict(cam.recommended))  # after the package defaults
    nodes.append(NodeSpec(PACKAGE, NODE_NAME, NODE_NAME, v["namespace"], tuple(parameters), tuple(remappings),
                          ("--ros-args", "--log-level", v["log_level"])))
    if parse_bool("rviz", v["rviz"]):
        rviz_config = os.path.join(share_dir, "rviz", "pose.rviz") if share_dir else "pose.rviz"
        nodes.append(NodeSpec("rviz2", "rviz2", "rviz2", "", ({"use_sim_time": use_sim_time},), (),
                              ("-d", rviz_config), ends_launch=True))
    return BringupPlan(camera, topics, mask_source, tuple(includes), tuple(processes), tuple(nodes))


def _camera(camera: str) -> Camera:
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; one of {', '.join(CAMERAS)}")
    return CAMERAS[camera]


def _driver_include(camera: str, v: Mapping[str, str]) -> IncludeSpec:
    """The driver's launch file and the arguments that make it publish what :func:`camera_topics` says."""
    cam = CAMERAS[camera]
    if camera == "realsense":
        args = {"camera_namespace": v["camera_namespace"], "camera_name": v["camera_name"],
                "enable_color": "true", "enable_depth": "true", "align_depth.enable": "true",
                "enable_sync": "true", "pointcloud.enable": "false", "enable_infra1": "false",
                "enable_infra2": "false", "rgb_camera.color_profile": v["profile"],
                "depth_module.depth_profile": v["profile"]}
        if v["serial_no"]:
            args["serial_no"] = f"'{v['serial_no']}'"  # quoted: the driver must keep it a string
        return IncludeSpec(cam.driver_package, cam.driver_launch, args)
    if camera == "kinect":
        args = {"color_enabled": "true", "depth_enabled": "true", "color_format": "bgra",
                "color_resolution": v["color_resolution"], "depth_mode": v["depth_mode"], "fps": v["fps"],
                "point_cloud": "false", "rgb_point_cloud": "false", "synchronized_images_only": "true"}
        return IncludeSpec(cam.driver_package, cam.driver_launch, args)
    args = {"camera_name": v["camera_name"], "enable_color": "true", "enable_depth": "true",
            "depth_registration": "true", "color_width": v["width"], "color_height": v["height"],
            "color_fps": v["fps"], "depth_width": v["width"], "depth_height": v["height"],
            "depth_fps": v["fps"], "enable_point_cloud": "false", "enable_colored_point_cloud": "false"}
    return IncludeSpec(cam.driver_package, v["orbbec_launch"] or cam.driver_launch, args)


def _synthetic_cmd(v: Mapping[str, str], category: str) -> tuple[str, ...]:
    """The synthetic camera process: publishes in a loop, without waiting for a scorer."""
    params = {"category": category, "frames": str(int(v["frames"])), "rate_hz": str(float(v["rate_hz"])),
              "seed": str(int(v["seed"])), "split": v["split"], "loop": "true",
              "wait_for_ground_truth": "false"}
    cmd = [sys.executable, "-m", "cse_pose_dev.synthetic_camera", "--ros-args",
           "-r", f"__ns:={SYNTHETIC_NAMESPACE}"]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={value}"]
    return tuple(cmd)


def launch_description(camera: str):
    """The ``LaunchDescription`` of ``launch/<camera>.launch.py`` (needs ``launch`` and ``launch_ros``).

    Declares :func:`bringup_arguments` and, when the launch runs, evaluates :func:`make_plan` and turns it
    into IncludeLaunchDescription / ExecuteProcess / Node actions, after SetEnvironmentVariable actions that
    give every started process the package's Fast DDS profile for camera-sized messages (unless the user set
    a profiles file). ``rviz:=true`` without RViz installed raises before any action is returned: nothing
    starts.
    """
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchDescription

    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in bringup_arguments(camera)]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_actions, args=[camera])])


def _launch_actions(context, camera: str) -> list:
    """OpaqueFunction body: argument values -> plan -> launch actions."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from launch.actions import ExecuteProcess, IncludeLaunchDescription, SetEnvironmentVariable, Shutdown
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in bringup_arguments(camera)}
    own_share = share_directory()
    plan = make_plan(camera, values, own_share)
    if any(n.package == "rviz2" for n in plan.nodes) and rviz_problem():
        raise RuntimeError(f"{camera}.launch.py: {rviz_problem()}")
    actions: list = [SetEnvironmentVariable(name, value) for name, value in fastdds_profile_env(own_share).items()]
    for inc in plan.includes:
        try:
            share = get_package_share_directory(inc.package)
        except PackageNotFoundError as exc:
            raise RuntimeError(f"{camera}.launch.py: camera driver package '{inc.package}' is not installed "
                               f"({CAMERAS[camera].install}); or start the camera yourself and pass "
                               "start_camera:=false") from exc
        actions.append(IncludeLaunchDescription(PythonLaunchDescriptionSource(
            os.path.join(share, "launch", inc.launch_file)), launch_arguments=list(inc.arguments.items())))
    for proc in plan.processes:
        actions.append(ExecuteProcess(cmd=list(proc.cmd), name=proc.name, output="screen"))
    for n in plan.nodes:
        extra = {"on_exit": Shutdown(reason=f"{n.name} exited")} if n.ends_launch else {}
        actions.append(Node(package=n.package, executable=n.executable, name=n.name, namespace=n.namespace,
                            parameters=list(n.parameters), remappings=list(n.remappings),
                            arguments=list(n.arguments), output="screen", emulate_tty=True, **extra))
    return actions
