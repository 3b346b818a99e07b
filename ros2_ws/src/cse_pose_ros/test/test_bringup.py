"""Camera bring-ups: the tables of cse_pose_ros.bringup (always) and the repo-root launch files (where
launch/launch_ros are installed; skipped with the reason otherwise)."""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import fields
from pathlib import Path

import pytest

from cse_pose_ros.bringup import (
    CAMERAS,
    DEFAULT_MASK_TOPIC,
    SYNTHETIC_NAMESPACE,
    TABLETOP_EXECUTABLE,
    TABLETOP_INPUTS,
    TABLETOP_NODE_NAME,
    TABLETOP_OUTPUT,
    bringup_arguments,
    camera_topics,
    defaults,
    make_plan,
)
from cse_pose_ros.launch_args import LAUNCH_ARGUMENTS, NODE_NAME, TOPIC_ARGUMENTS
from cse_pose_ros.params import PARAM_NAMES, NodeParams, validate
from cse_pose_ros.tabletop_mask import NODE_PARAM_HELP, TabletopParams

PKG = Path(__file__).resolve().parents[1]
REPO = PKG.parents[2]
LAUNCH_DIR = REPO / "launch"
SHARE = "/opt/ros_ws/install/share/cse_pose_ros"
POSE_INPUTS = set(TOPIC_ARGUMENTS.values())  # rgb/image, depth/image, mask/image, rgb/camera_info


def plan(camera: str, **args):
    if camera == "bag":
        args.setdefault("bag", "/data/table_bag")
    return make_plan(camera, args, SHARE)


def merged(parameters) -> dict:
    """The parameter dicts of a node in order (later ones win), files skipped."""
    out: dict = {}
    for entry in parameters:
        if isinstance(entry, dict):
            out.update(entry)
    return out


def pose_remaps(p) -> dict[str, str]:
    return dict(p.node(NODE_NAME).remappings)


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
def test_pose_node_inputs_match_the_node():
    """The node's own subscription names are the launch_args mapping targets (so remaps can land)."""
    node = pytest.importorskip("cse_pose_ros.node", reason="node.py needs rclpy")
    assert set(node.INPUTS) == POSE_INPUTS


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_every_camera_has_rgb_depth_and_info_topics(camera):
    topics = camera_topics(camera, defaults(camera))
    assert set(topics) == {"rgb", "depth", "camera_info"}
    assert all(t.startswith("/") and " " not in t for t in topics.values()), topics
    assert len(set(topics.values())) == 3
    cam = CAMERAS[camera]
    assert cam.title and cam.install and cam.notes
    assert bool(cam.driver_package) == bool(cam.driver_launch) == (camera not in ("bag", "synthetic"))


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_arguments_reuse_pose_launch_and_are_documented(camera):
    args = bringup_arguments(camera)
    names = [a.name for a in args]
    assert len(names) == len(set(names)), names
    assert all(a.description.strip() for a in args)
    assert [a.name for a in LAUNCH_ARGUMENTS] == names[: len(LAUNCH_ARGUMENTS)]  # pose.launch.py's, first
    assert {"mask_source", "category"} <= set(names)
    assert all(defaults(camera)[t] == "" for t in TOPIC_ARGUMENTS)  # empty = the camera's topic


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_every_remap_lands_on_a_subscribed_topic_and_the_graph_connects(camera):
    p = plan(camera)
    pose = p.node(NODE_NAME)
    remaps = dict(pose.remappings)
    assert set(remaps) <= POSE_INPUTS  # every remap renames a topic the pose node subscribes to
    assert remaps == {"rgb/image": p.topics["rgb"], "depth/image": p.topics["depth"],
                      "mask/image": p.topics["mask"], "rgb/camera_info": p.topics["camera_info"]}
    names = [n.name for n in p.nodes]
    assert len(names) == len(set(names))
    if p.mask_source == "tabletop":
        tt = p.node(TABLETOP_NODE_NAME)
        tt_remaps = dict(tt.remappings)
        assert set(tt_remaps) == {*TABLETOP_INPUTS, TABLETOP_OUTPUT}
        assert tt_remaps["depth/image"] == remaps["depth/image"]  # the same registered depth
        assert tt_remaps["depth/camera_info"] == remaps["rgb/camera_info"]
        assert tt_remaps[TABLETOP_OUTPUT] == remaps["mask/image"]  # its output is the pose node's mask
        assert tt.executable == TABLETOP_EXECUTABLE
    if camera == "synthetic":
        assert remaps["mask/image"] == f"{SYNTHETIC_NAMESPACE}/mask/image"
        assert TABLETOP_NODE_NAME not in names


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_recommended_parameters_are_valid_node_parameters(camera):
    rec = dict(CAMERAS[camera].recommended)
    assert set(rec) <= set(PARAM_NAMES)
    assert validate(NodeParams.defaults().replace(rec)) == []
    p = plan(camera, category="mug")
    params = list(p.node(NODE_NAME).parameters)
    assert params[0] == f"{SHARE}/config/pose.yaml"  # the package defaults first, as pose.launch.py
    if rec:
        assert params[1] == rec  # then the camera's recommendations, then the launch overrides
    assert params[-1]["category"] == "mug"
    # with an explicit params file the recommendations are not applied (the user's file decides)
    own = plan(camera, params_file="/my/pose.yaml").node(NODE_NAME).parameters
    assert own[0] == "/my/pose.yaml" and all(not isinstance(x, dict) or not set(rec) & set(x) for x in own)


@pytest.mark.parametrize("camera", ["realsense", "kinect", "orbbec", "bag"])
def test_tabletop_node_parameters_exist(camera):
    tt = plan(camera, category="bowl").node(TABLETOP_NODE_NAME)
    known = {f.name for f in fields(TabletopParams)} | set(NODE_PARAM_HELP) | {"use_sim_time"}
    (params,) = tt.parameters
    assert set(params) <= known and params["category"] == "bowl"
    TabletopParams(**{k: v for k, v in params.items() if k in {f.name for f in fields(TabletopParams)}})


def test_realsense_driver_aligns_depth_and_topics_follow_the_names():
    p = plan("realsense", camera_namespace="", camera_name="cam1", serial_no="031422250097")
    (inc,) = p.includes
    assert (inc.package, inc.launch_file) == ("realsense2_camera", "rs_launch.py")
    assert inc.arguments["align_depth.enable"] == "true" and inc.arguments["enable_sync"] == "true"
    assert inc.arguments["serial_no"] == "'031422250097'"  # quoted: stays a string parameter
    assert p.topics["depth"] == "/cam1/aligned_depth_to_color/image_raw"
    assert plan("realsense").topics["rgb"] == "/camera/camera/color/image_raw"  # wrapper 4.5x default


def test_orbbec_registers_depth_and_kinect_uses_depth_to_rgb():
    (inc,) = plan("orbbec", orbbec_launch="femto_bolt.launch.py").includes
    assert inc.launch_file == "femto_bolt.launch.py" and inc.arguments["depth_registration"] == "true"
    k = plan("kinect")
    assert k.topics["depth"] == "/depth_to_rgb/image_raw"
    assert k.includes[0].arguments["color_enabled"] == "true"


def test_bag_replay_uses_sim_time_and_needs_a_bag():
    p = plan("bag", rate="0.5", loop="false", record_camera="kinect")
    (proc,) = p.processes
    assert proc.cmd[:4] == ("ros2", "bag", "play", "/data/table_bag")
    assert "--clock" in proc.cmd and "--loop" not in proc.cmd and "0.5" in proc.cmd
    assert p.topics["rgb"] == "/rgb/image_raw"
    for name in (NODE_NAME, TABLETOP_NODE_NAME):
        assert merged(p.node(name).parameters)["use_sim_time"] is True, name
    with pytest.raises(ValueError, match="bag:="):
        make_plan("bag", {})
    with pytest.raises(ValueError):
        plan("bag", record_camera="zed")


def test_synthetic_camera_process_and_parameters():
    p = plan("synthetic", category="bottle", frames="12")
    (proc,) = p.processes
    assert proc.cmd[1:3] == ("-m", "cse_pose_dev.synthetic_camera")
    assert f"__ns:={SYNTHETIC_NAMESPACE}" in proc.cmd
    assert "category:=bottle" in proc.cmd and "frames:=12" in proc.cmd and "loop:=true" in proc.cmd
    assert "wait_for_ground_truth:=false" in proc.cmd  # nobody scores in a bring-up
    assert p.node(NODE_NAME).parameters[-1]["category"] == "bottle"
    # every parameter passed exists in the synthetic camera node
    text = (REPO / "tools" / "cse_pose_dev" / "synthetic_camera.py").read_text()
    for arg in proc.cmd:
        m = re.fullmatch(r"(\w+):=.*", arg)
        if m and not arg.startswith("__"):
            assert f'"{m.group(1)}"' in text, m.group(1)
    with pytest.raises(ValueError, match="mask_source"):
        plan("synthetic", mask_source="tabletop")


def test_options_and_errors():
    p = plan("realsense", mask_source="external", start_camera="false", rviz="true", namespace="robot1",
             rgb_topic="/my/rgb")
    assert p.includes == () and TABLETOP_NODE_NAME not in [n.name for n in p.nodes]
    assert pose_remaps(p)["mask/image"] == DEFAULT_MASK_TOPIC and pose_remaps(p)["rgb/image"] == "/my/rgb"
    assert p.node(NODE_NAME).namespace == "robot1"
    rviz = p.node("rviz2")
    assert rviz.arguments == ("-d", f"{SHARE}/rviz/pose.rviz")
    assert pose_remaps(plan("realsense", mask_topic="/seg/ids"))["mask/image"] == "/seg/ids"
    assert dict(plan("realsense", mask_topic="/seg/ids").node(TABLETOP_NODE_NAME).remappings)[
        TABLETOP_OUTPUT] == "/seg/ids"
    for bad in ({"no_such": "1"}, {"mask_source": "sam"}, {"backend": "gpu"}, {"rviz": "maybe"},
                {"start_camera": "2"}, {"category": "chair"}):
        with pytest.raises(ValueError):
            plan("realsense", **bad)
    with pytest.raises(ValueError):
        make_plan("zed", {})


def test_executables_are_installed_by_setup_py():
    """The launch files start cse_pose_node and tabletop_mask_node by their console_scripts names; the entry
    points are runner's, which make Ctrl-C quiet before the node module is imported."""
    text = (PKG / "setup.py").read_text()
    scripts = dict(re.findall(r'"(\w+)\s*=\s*([\w.]+:\w+)"', text))
    assert scripts.get(NODE_NAME) == "cse_pose_ros.runner:pose_node_main"
    assert scripts.get(TABLETOP_EXECUTABLE) == "cse_pose_ros.runner:tabletop_mask_main"
    from cse_pose_ros import runner

    assert callable(runner.pose_node_main) and callable(runner.tabletop_mask_main)


def test_setup_py_installs_launch_config_rviz_and_the_models():
    """What colcon installs into share/cse_pose_ros, read from setup.py itself: every launch file, the params
    file and the Fast DDS profile, the RViz config, and every model of models/ with its card (through the
    package's models link, so the default model_dir of the launch files holds them)."""
    from cse_pose_dev.ament_prefix import setup_arguments

    data = {dest: {Path(f).name for f in files} for dest, files in setup_arguments(PKG)["data_files"]}
    share = "share/cse_pose_ros"
    assert data[f"{share}/launch"] == {p.name for p in (PKG / "launch").glob("*.py")}
    assert {"pose.yaml", "fastdds_large_frames.xml"} <= data[f"{share}/config"]
    assert data[f"{share}/rviz"] == {"pose.rviz"}
    models = REPO / "models"
    assert (PKG / "models").is_symlink() and (PKG / "models").resolve() == models.resolve()
    onnx = {p.name for p in models.glob("*.onnx")}
    assert onnx, "no model in models/"
    assert onnx | {p.name for p in models.glob("*.md")} == data[f"{share}/models"]
    cards = {f"{Path(n).stem}.md" for n in onnx if "." not in Path(n).stem}  # <category>.int8.onnx: no own card
    assert cards and cards <= data[f"{share}/models"]  # every model with its card
    assert data["share/ament_index/resource_index/packages"] == {"cse_pose_ros"}


# ---------------------------------------------------------------------------------------------------
# the launch files
# ---------------------------------------------------------------------------------------------------
def test_one_thin_launch_file_per_camera():
    files = sorted(LAUNCH_DIR.glob("*.launch.py"))
    assert {f.name.removesuffix(".launch.py") for f in files} == set(CAMERAS)
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
                 "launch_description"]
        assert len(calls) == 1 and calls[0].args[0].value == f.name.removesuffix(".launch.py"), f.name
        assert ast.get_docstring(tree), f.name
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert funcs == ["generate_launch_description"], f.name


def _launch_missing() -> list[str]:
    missing = [m for m in ("launch_ros", "ament_index_python") if importlib.util.find_spec(m) is None]
    spec = importlib.util.find_spec("launch")
    if spec is None or spec.origin is None:  # the repo's launch/ folder alone is a namespace package
        missing.append("launch")
    return missing


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_launch_file_builds_its_description(camera):
    missing = _launch_missing()
    if missing:
        reason = f"launch files not importable here: missing {', '.join(missing)} (pip-only install)"
        print(reason)
        pytest.skip(reason)
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location(f"{camera}_launch", LAUNCH_DIR / f"{camera}.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == {a.name for a in bringup_arguments(camera)}


def test_launch_actions_against_stub_launch_modules(monkeypatch):
    """Where launch/launch_ros are missing, run bringup.launch_description through recording stand-ins of
    the few launch APIs it calls (names and keyword arguments of the real ones): every plan element must
    become the right action. Not a substitute for the real import above; it catches wiring mistakes."""
    import sys
    import types

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Recorder):
        def perform(self, context):
            return context[self.args[0]]

    class PackageNotFoundError(KeyError):
        pass

    def share(package):
        if package == "realsense2_camera" or package == "cse_pose_ros":
            return f"/share/{package}"
        raise PackageNotFoundError(package)

    kinds = ("LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription",
             "ExecuteProcess", "SetEnvironmentVariable", "Shutdown", "PythonLaunchDescriptionSource", "Node")
    made = {k: type(k, (Recorder,), {}) for k in kinds}
    modules = {
        "launch": {"LaunchDescription": made["LaunchDescription"]},
        "launch.actions": {k: made[k] for k in ("DeclareLaunchArgument", "OpaqueFunction",
                                                "IncludeLaunchDescription", "ExecuteProcess",
                                                "SetEnvironmentVariable", "Shutdown")},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch.launch_description_sources": {"PythonLaunchDescriptionSource":
                                              made["PythonLaunchDescriptionSource"]},
        "launch_ros": {},
        "launch_ros.actions": {"Node": made["Node"]},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": share,
                                        "get_package_prefix": lambda package: f"/prefix/{package}",
                                        "PackageNotFoundError": PackageNotFoundError},
    }
    for name in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    from cse_pose_ros.bringup import launch_description

    description = launch_description("realsense")
    (entities,) = description.args
    declared = [e for e in entities if isinstance(e, made["DeclareLaunchArgument"])]
    assert [d.args[0] for d in declared] == [a.name for a in bringup_arguments("realsense")]
    (opaque,) = [e for e in entities if isinstance(e, made["OpaqueFunction"])]
    context = defaults("realsense") | {"category": "mug"}
    actions = opaque.kwargs["function"](context, *opaque.kwargs["args"])
    env_a, env_b, include, tabletop, pose = actions  # the Fast DDS profile first: before anything starts
    assert {env_a.args, env_b.args} == {
        (name, "/share/cse_pose_ros/config/fastdds_large_frames.xml")
        for name in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")}
    assert include.args[0].args[0] == "/share/realsense2_camera/launch/rs_launch.py"
    assert ("align_depth.enable", "true") in include.kwargs["launch_arguments"]
    assert (tabletop.kwargs["executable"], pose.kwargs["executable"]) == (TABLETOP_EXECUTABLE, NODE_NAME)
    assert pose.kwargs["parameters"][0] == "/share/cse_pose_ros/config/pose.yaml"
    assert pose.kwargs["parameters"][-1]["model_dir"] == "/share/cse_pose_ros/models"  # the installed models
    assert pose.kwargs["remappings"] == list(plan("realsense").node(NODE_NAME).remappings)
    # a missing driver package: a clear error that names the package and start_camera:=false
    context = defaults("orbbec")
    actions_fn = launch_description("orbbec").args[0][-1].kwargs
    with pytest.raises(RuntimeError, match="orbbec_camera.*start_camera:=false"):
        actions_fn["function"](context, *actions_fn["args"])
    context["start_camera"] = "false"
    started = actions_fn["function"](context, *actions_fn["args"])
    assert [a.kwargs["executable"] for a in started if isinstance(a, made["Node"])] == [
        TABLETOP_EXECUTABLE, NODE_NAME]
    # rviz:=true: RViz ends the launch when it exits; without rviz2 in the index nothing is returned at all
    context["rviz"] = "true"
    rviz = [a for a in actions_fn["function"](context, *actions_fn["args"])
            if isinstance(a, made["Node"]) and a.kwargs["package"] == "rviz2"]
    assert len(rviz) == 1 and isinstance(rviz[0].kwargs["on_exit"], made["Shutdown"])

    def no_rviz(package):
        raise PackageNotFoundError(package)

    monkeypatch.setitem(sys.modules["ament_index_python.packages"].__dict__, "get_package_prefix", no_rviz)
    with pytest.raises(RuntimeError, match="rviz2 is not installed.*nothing was started"):
        actions_fn["function"](context, *actions_fn["args"])
