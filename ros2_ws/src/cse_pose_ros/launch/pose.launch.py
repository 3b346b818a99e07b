"""Start cse_pose_node (and optionally RViz).

    ros2 launch cse_pose_ros pose.launch.py rgb_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw mask_topic:=/segmentation/instance_mask \
        camera_info_topic:=/camera/color/camera_info category:=mug rviz:=true

The arguments, their defaults and their mapping to parameters/remappings live in
``cse_pose_ros/launch_args.py`` (pure Python, unit-tested); this file only wires them into launch. Without
``model_dir`` the node loads the models installed with the package (``share/cse_pose_ros/models``). The
processes started get the package's Fast DDS profile for camera-sized messages
(``config/fastdds_large_frames.xml``) unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` is set. ``rviz:=true``
without RViz installed stops the launch before anything starts; closing RViz ends the launch.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cse_pose_ros.launch_args import (
    LAUNCH_ARGUMENTS,
    NODE_NAME,
    PACKAGE,
    fastdds_profile_env,
    installed_model_dir,
    node_config,
    parse_bool,
    rviz_problem,
    share_directory,
)
from launch import LaunchDescription


def _actions(context, *args, **kwargs):
    """Evaluate the launch arguments and build the environment, the pose node (and RViz) from them."""
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    share = share_directory()
    parameters, remappings = node_config(values, os.path.join(share, "config", "pose.yaml"),
                                         installed_model_dir(share))
    rviz = parse_bool("rviz", values["rviz"])
    if rviz and rviz_problem():
        raise RuntimeError(rviz_problem())
    actions: list = [SetEnvironmentVariable(name, value) for name, value in fastdds_profile_env(share).items()]
    actions.append(Node(
        package=PACKAGE,
        executable=NODE_NAME,
        name=NODE_NAME,
        namespace=values["namespace"],
        parameters=parameters,
        remappings=remappings,
        arguments=["--ros-args", "--log-level", values["log_level"]],
        output="screen",
        emulate_tty=True,
    ))
    if rviz:
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "pose.rviz")],
            parameters=[{"use_sim_time": parameters[-1]["use_sim_time"]}],
            output="log",
            on_exit=Shutdown(reason="rviz2 exited"),
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    """Launch arguments of :data:`cse_pose_ros.launch_args.LAUNCH_ARGUMENTS` + the node (+ RViz)."""
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in LAUNCH_ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_actions)])
