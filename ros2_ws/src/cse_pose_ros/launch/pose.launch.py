"""Start cse_pose_node (and optionally RViz).

    ros2 launch cse_pose_ros pose.launch.py rgb_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw mask_topic:=/segmentation/instance_mask \
        camera_info_topic:=/camera/color/camera_info model_dir:=/path/to/models rviz:=true

The arguments, their defaults and their mapping to parameters/remappings live in
``cse_pose_ros/launch_args.py`` (pure Python, unit-tested); this file only wires them into launch.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cse_pose_ros.launch_args import LAUNCH_ARGUMENTS, NODE_NAME, PACKAGE, node_config
from launch import LaunchDescription


def _nodes(context, *args, **kwargs):
    """Evaluate the launch arguments and build the pose node (and RViz) from them."""
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    share = get_package_share_directory(PACKAGE)
    parameters, remappings = node_config(values, os.path.join(share, "config", "pose.yaml"))
    pose_node = Node(
        package=PACKAGE,
        executable=NODE_NAME,
        name=NODE_NAME,
        namespace=values["namespace"],
        parameters=parameters,
        remappings=remappings,
        arguments=["--ros-args", "--log-level", values["log_level"]],
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "rviz", "pose.rviz")],
        parameters=[{"use_sim_time": parameters[-1]["use_sim_time"]}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="log",
    )
    return [pose_node, rviz]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments of :data:`cse_pose_ros.launch_args.LAUNCH_ARGUMENTS` + the node (+ RViz)."""
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in LAUNCH_ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
