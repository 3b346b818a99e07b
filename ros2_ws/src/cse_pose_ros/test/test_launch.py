"""Launch arguments → node parameters/remappings (always), and the launch file itself (where launch_ros is)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cse_pose_ros.launch_args import (
    FASTDDS_PROFILE,
    FASTDDS_PROFILE_VARIABLES,
    LAUNCH_ARGUMENTS,
    TOPIC_ARGUMENTS,
    defaults,
    fastdds_profile_env,
    installed_model_dir,
    node_config,
    parse_bool,
    rviz_problem,
    share_directory,
)

PKG = Path(__file__).resolve().parents[1]


def test_every_argument_has_a_description_and_unique_name():
    names = [a.name for a in LAUNCH_ARGUMENTS]
    assert len(names) == len(set(names))
    assert all(a.description.strip() for a in LAUNCH_ARGUMENTS)
    required = {"rgb_topic", "depth_topic", "mask_topic", "camera_info_topic", "model_dir", "backend",
                "namespace", "use_sim_time", "rviz", "params_file"}
    assert required <= set(names)


def test_model_dir_defaults_to_the_installed_models_unless_a_params_file_decides():
    share = "/opt/ws/install/share/cse_pose_ros"
    params, _ = node_config({}, f"{share}/config/pose.yaml", installed_model_dir(share))
    assert params == [f"{share}/config/pose.yaml", {"use_sim_time": False, "model_dir": f"{share}/models"}]
    params, _ = node_config({"model_dir": "/data/models"}, f"{share}/config/pose.yaml", installed_model_dir(share))
    assert params[-1]["model_dir"] == "/data/models"  # an explicit argument wins
    params, _ = node_config({"params_file": "/my.yaml"}, f"{share}/config/pose.yaml", installed_model_dir(share))
    assert params == ["/my.yaml", {"use_sim_time": False}]  # the user's file keeps its own model_dir
    assert installed_model_dir("") == ""


def test_fastdds_profile_for_launched_processes_unless_the_user_chose_one():
    share = "/opt/ws/install/share/cse_pose_ros"
    env = fastdds_profile_env(share, environ={})
    assert set(env) == set(FASTDDS_PROFILE_VARIABLES)
    assert set(env.values()) == {f"{share}/config/{FASTDDS_PROFILE}"}
    for name in FASTDDS_PROFILE_VARIABLES:
        assert fastdds_profile_env(share, environ={name: "/etc/my_profile.xml"}) == {}
    assert fastdds_profile_env(share, environ={name: ""}) == env  # set but empty: not a choice


def test_shipped_fastdds_profile_fits_camera_frames():
    """The XML parses, is the default participant profile, and its shared-memory segment holds several
    640x480 RGB-D frames (Fast DDS's default, 512 KiB, holds not one RGB image)."""
    import xml.etree.ElementTree as ET

    ns = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(PKG / "config" / FASTDDS_PROFILE).getroot()
    descriptors = {d.find("p:transport_id", ns).text: d for d in root.iterfind(".//p:transport_descriptor", ns)}
    kinds = {d.find("p:type", ns).text for d in descriptors.values()}
    assert {"SHM", "UDPv4"} <= kinds  # UDP stays for discovery and other hosts
    (shm,) = [d for d in descriptors.values() if d.find("p:type", ns).text == "SHM"]
    frame_bytes = 640 * 480 * (3 + 2 + 1)  # rgb8 + 16UC1 depth + mono8 mask
    assert int(shm.find("p:segment_size", ns).text) >= 8 * frame_bytes
    participant = root.find(".//p:participant", ns)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//p:userTransports/p:transport_id", ns)]
    assert set(used) == set(descriptors)
    assert participant.find(".//p:useBuiltinTransports", ns).text == "false"


def test_share_directory_falls_back_to_the_source_package(monkeypatch):
    """Without an ament index entry the package's own folder serves as share folder: the same layout."""
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    share = Path(share_directory())
    assert share == PKG
    for rel in ("config/pose.yaml", f"config/{FASTDDS_PROFILE}", "launch/pose.launch.py", "rviz/pose.rviz",
                "package.xml"):
        assert (share / rel).is_file(), rel


def test_rviz_problem_names_the_package_and_what_to_do(monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)  # no index at all: rviz2 cannot be found
    problem = rviz_problem()
    assert "rviz2 is not installed" in problem and "nothing was started" in problem and "\n" not in problem


def test_defaults_map_to_params_file_and_four_remappings():
    params, remaps = node_config({}, default_params_file="/share/config/pose.yaml")
    assert params[0] == "/share/config/pose.yaml"
    assert params[-1] == {"use_sim_time": False}  # no model_dir/backend override: the file's values stand
    d = defaults()
    assert dict(remaps) == {node: d[arg] for arg, node in TOPIC_ARGUMENTS.items()}


def test_explicit_arguments_override_and_map():
    params, remaps = node_config({"rgb_topic": "/cam/rgb", "depth_topic": "/cam/depth", "mask_topic": "/seg",
                                  "camera_info_topic": "/cam/info", "model_dir": "/opt/models",
                                  "backend": "cpu", "use_sim_time": "True", "params_file": "/my.yaml"},
                                 default_params_file="/share/config/pose.yaml")
    assert params == ["/my.yaml", {"use_sim_time": True, "model_dir": "/opt/models", "backend": "cpu"}]
    assert remaps == [("rgb/image", "/cam/rgb"), ("depth/image", "/cam/depth"), ("mask/image", "/seg"),
                      ("rgb/camera_info", "/cam/info")]


def test_topic_equal_to_node_name_is_not_remapped():
    _, remaps = node_config({"rgb_topic": "rgb/image"})
    assert ("rgb/image", "rgb/image") not in remaps
    assert len(remaps) == 3


@pytest.mark.parametrize("args", [{"backend": "gpu"}, {"use_sim_time": "maybe"}, {"rviz": "2"},
                                  {"rgb_topic": " "}, {"no_such_arg": "x"}, {"log_level": "loud"}])
def test_bad_arguments_raise(args):
    with pytest.raises(ValueError):
        node_config(args)


def test_parse_bool():
    assert parse_bool("x", "TRUE") and parse_bool("x", "1") and not parse_bool("x", "off")


def test_launch_file_builds_description():
    """Import launch/pose.launch.py and build its LaunchDescription (needs launch + launch_ros)."""
    missing = [m for m in ("launch_ros", "ament_index_python") if importlib.util.find_spec(m) is None]
    launch_spec = importlib.util.find_spec("launch")
    if launch_spec is None or launch_spec.origin is None:  # a bare 'launch/' folder is a namespace package
        missing.append("launch")
    if missing:
        reason = f"launch file not importable here: missing {', '.join(missing)} (pip-only install)"
        print(reason)
        pytest.skip(reason)
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("pose_launch", PKG / "launch" / "pose.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == {a.name for a in LAUNCH_ARGUMENTS}


def test_launch_file_uses_the_tested_mapping():
    """Without launch installed, at least check that the launch file delegates to launch_args.node_config."""
    text = (PKG / "launch" / "pose.launch.py").read_text()
    assert "node_config(" in text and "LAUNCH_ARGUMENTS" in text
    compile(text, "pose.launch.py", "exec")
